"""Reading and writing tensor files safely.

- safetensors headers are checked before use (truncated, corrupt or oversized files get a
  CheckpointError naming the file and the problem);
- pickled files (.ckpt/.pt/.pth/.bin) are read only with `torch.load(weights_only=True)`;
- writes are atomic: a temp file in the target folder, fsync, then rename.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from .errors import CheckpointError

SAFETENSORS_EXTS = (".safetensors",)
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors {name: {"dtype", "shape", "data_offsets"}}, metadata) of a safetensors file.

    Checks what a loader needs to trust: the header length, its JSON, and that every tensor's
    byte range lies inside the file and matches its dtype and shape.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{path.name}: corrupt or truncated safetensors file (header length {n}, file size {size})"
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path.name}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            want = count * _DTYPE_SIZES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: corrupt safetensors entry for {name!r}: {info!r}") from None
        if end > data_len:
            raise CheckpointError(
                f"{path.name}: truncated file: tensor {name!r} ends at byte {end} of a {data_len}-byte data section"
            )
        if end - start != want:
            raise CheckpointError(f"{path.name}: corrupt entry {name!r}: {end - start} bytes for {want} expected")
    return header, metadata


def header_shapes(header: dict) -> dict:
    return {k: tuple(v["shape"]) for k, v in header.items()}


def load_pickle_state_dict(path: str | os.PathLike) -> dict:
    """A .ckpt/.pt state dict through torch.load(weights_only=True) only."""
    path = Path(path)
    import zipfile

    try:  # mmap needs the zip format; a legacy (pre-1.6) torch.save file is read whole, still weights_only
        zipped = zipfile.is_zipfile(path)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:  # UnpicklingError, RuntimeError from zip reader, ...
        raise CheckpointError(
            f"{path.name}: refused: this pickled file cannot be loaded safely "
            f"(weights_only=True rejected it: {str(e).splitlines()[0][:200]}). "
            "Convert it to .safetensors with a tool you trust."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name}: not a state dict of tensors")
    return obj


class TensorSource:
    """Lazy access to the tensors of one file: safetensors (memory-mapped) or a safe pickle."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        self._pickled = None
        if ext in SAFETENSORS_EXTS:
            self.header, self.metadata = read_header(self.path)
            self.shapes = header_shapes(self.header)
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise CheckpointError(f"{self.path.name}: corrupt safetensors file ({e})") from None
        elif ext in PICKLE_EXTS:
            self._pickled = load_pickle_state_dict(self.path)
            self.metadata = {}
            self.shapes = {k: tuple(v.shape) for k, v in self._pickled.items()}
        else:
            raise CheckpointError(f"{self.path.name}: unsupported file type {ext!r} (use .safetensors)")

    def keys(self):
        return list(self.shapes)

    @property
    def memory_mapped(self) -> bool:
        """True when get() returns views of the file's memory map (safetensors), not owned copies."""
        return self._pickled is None

    def get(self, key: str) -> torch.Tensor:
        if self._pickled is not None:
            return self._pickled[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{self.path.name}: cannot read tensor {key!r} ({e})") from None
