"""The file hashes A1111 and Civitai use to name resources in image parameters.

- checkpoint: SHA-256 of the whole file; A1111's `Model hash` is its first 10 hex digits
  (`sd_models.CheckpointInfo.shorthash`).
- LoRA: the file's `sshs_model_hash` metadata when present, else the "addnet" hash of a
  .safetensors (SHA-256 of the bytes after the JSON header, so editing metadata keeps it) or
  the SHA-256 of any other file; A1111's `Lora hashes` use the first 12 hex digits.
- textual-inversion embedding: SHA-256 of the whole file, first 12 hex digits (`TI hashes`).

Hashing a 2 GB checkpoint takes seconds, so results are cached per (path, size, mtime).
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

_CACHE: dict[tuple, str] = {}
_BLOCK = 1 << 20


def _key(path: Path, kind: str) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, kind)


def _digest(path: Path, skip_header: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_header:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            f.seek(8 + n)
        for chunk in iter(lambda: f.read(_BLOCK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (64 hex digits) of the whole file."""
    path = Path(path)
    key = _key(path, "sha256")
    if key not in _CACHE:
        _CACHE[key] = _digest(path, skip_header=False)
    return _CACHE[key]


def addnet_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a .safetensors file's tensor bytes (after the header), as kohya's sshs_model_hash."""
    path = Path(path)
    key = _key(path, "addnet")
    if key not in _CACHE:
        _CACHE[key] = _digest(path, skip_header=True)
    return _CACHE[key]


def model_short_hash(path: str | os.PathLike) -> str:
    """A1111's `Model hash`: first 10 hex digits of the file's SHA-256."""
    return sha256_file(path)[:10]


def lora_short_hash(path: str | os.PathLike, metadata: dict | None = None) -> str:
    """A1111's `Lora hashes` entry: sshs_model_hash, else the addnet hash (.safetensors) or SHA-256, 12 digits."""
    path = Path(path)
    meta_hash = str((metadata or {}).get("sshs_model_hash") or "")
    if meta_hash:
        return meta_hash[:12]
    if path.suffix.lower() == ".safetensors":
        return addnet_hash(path)[:12]
    return sha256_file(path)[:12]


def embedding_short_hash(path: str | os.PathLike) -> str:
    """A1111's `TI hashes` entry: first 12 hex digits of the file's SHA-256."""
    return sha256_file(path)[:12]


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-digit `Model hash` (before 2023): SHA-256 of 64 KiB at offset 1 MiB."""
    path = Path(path)
    key = _key(path, "legacy")
    if key not in _CACHE:
        with open(path, "rb") as f:
            f.seek(0x100000)
            _CACHE[key] = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    return _CACHE[key]
