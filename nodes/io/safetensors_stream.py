"""Streaming safetensors I/O for merged files: tensor by tensor, in bounded memory.

- `RawReader` reads one tensor of a safetensors file with plain positioned reads into a
  small ring of reusable buffers (no memory map: mapped pages count as resident memory, and
  a whole checkpoint read through a map ends up resident).
- `write_stream` writes a safetensors file whose header is computed up front from names,
  dtypes and shapes; each tensor is produced, written and dropped in turn (large ones in
  chunks), so memory holds a few buffers; a writer thread writes while the next tensor is
  computed, and the kernel is asked to write back as it goes. The layout is the one
  safetensors itself writes (tensors ordered by dtype, widest first, then by name; header
  padded to 8 bytes), so every tensor is aligned.
Where a finished file goes (atomically, never overwriting unless asked): merge_dest.
"""
from __future__ import annotations

import errno
import functools
import json
import math
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .safetensors_io import read_header

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
# safetensors' own order (its Dtype enum, written widest first): keeps every tensor aligned.
_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]


@dataclass(frozen=True)
class Item:
    """One tensor to write: `produce()` returns it (this dtype and shape) when its turn comes,
    or an iterable of 1-D chunks holding its values in order."""

    name: str
    dtype: torch.dtype
    shape: tuple
    produce: Callable[[], object]

    @property
    def nbytes(self) -> int:
        return math.prod(int(d) for d in self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class RawRange:
    """Bytes copied unchanged from another open file: the kernel copies them
    (os.copy_file_range), so they never pass through this process's memory."""

    fd: int
    offset: int
    nbytes: int


# copy_file_range is Linux-only; elsewhere unchanged tensors go through read buffers.
CAN_COPY_RANGE = hasattr(os, "copy_file_range")


def _cast_cpu(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to("cpu", dtype)


def state_dict_items(sd: dict, dtype: torch.dtype | None) -> list[Item]:
    """Items for a state dict; floating tensors cast to `dtype` (None: kept) when written."""
    out = []
    for k, v in sd.items():
        d = dtype if (dtype is not None and v.is_floating_point()) else v.dtype
        out.append(Item(k, d, tuple(v.shape), functools.partial(_cast_cpu, v, d)))
    return out


def file_order(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda it: (-_ORDER.index(ST_NAMES[it.dtype]), it.name))


def build_header(items: list[Item], metadata: dict | None) -> bytes:
    """The 8-byte length + JSON header for `items` (already in file order), padded to 8 bytes."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for it in items:
        header[it.name] = {"dtype": ST_NAMES[it.dtype], "shape": [int(d) for d in it.shape],
                           "data_offsets": [offset, offset + it.nbytes]}
        offset += it.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor (no copy when it is contiguous)."""
    t = t.detach().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _pieces(it: Item):
    """The tensor(s) to write for `it`: produce() returns the tensor, an iterable of 1-D
    chunks of it in order (large tensors copied through a small buffer), or a RawRange."""
    got = it.produce()
    if isinstance(got, RawRange):
        if got.nbytes != it.nbytes:
            raise ValueError(f"tensor {it.name!r}: a {got.nbytes}-byte range for {it.nbytes} bytes")
        yield got
        return
    if isinstance(got, torch.Tensor):
        if got.dtype != it.dtype or tuple(got.shape) != tuple(it.shape):
            raise ValueError(f"tensor {it.name!r}: produced {got.dtype} {tuple(got.shape)}, "
                             f"announced {it.dtype} {tuple(it.shape)}")
        yield got.cpu()
        return
    count = 0
    for chunk in got:
        if chunk.dtype != it.dtype:
            raise ValueError(f"tensor {it.name!r}: a chunk of {chunk.dtype}, announced {it.dtype}")
        count += chunk.numel()
        yield chunk.cpu()
    if count != math.prod(it.shape):
        raise ValueError(f"tensor {it.name!r}: chunks hold {count} values, announced {tuple(it.shape)}")


class _Sink:
    """Writes tensor bytes and raw ranges at the end of an unbuffered file; every STEP bytes
    it asks the kernel to start writing back (posix_fadvise DONTNEED queues the dirty pages
    and drops pages already written), so the final fsync has little left to wait for and
    the output does not flood the page cache."""

    STEP = 64 << 20

    def __init__(self, f):
        self.f, self.fd = f, f.fileno()
        self.pos = self.mark = f.tell()
        self.kernel_copy = CAN_COPY_RANGE

    def write(self, piece) -> None:
        if isinstance(piece, RawRange):
            self._copy(piece)
        else:
            data = tensor_bytes(piece)
            while data.nbytes:
                n = self.f.write(data)
                data = data[n:]
                self.pos += n
        if self.pos - self.mark >= self.STEP and hasattr(os, "posix_fadvise"):
            start = max(0, self.mark - self.STEP)  # this step, and the one before (now written)
            os.posix_fadvise(self.fd, start, self.pos - start, os.POSIX_FADV_DONTNEED)
            self.mark = self.pos

    def _copy(self, r: RawRange) -> None:
        done = 0
        while done < r.nbytes:
            if self.kernel_copy:
                try:  # bytes go to the file position, which moves on
                    n = os.copy_file_range(r.fd, self.fd, r.nbytes - done, r.offset + done)
                except OSError as e:  # e.g. another file system on an old kernel: copy by hand
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                        raise
                    self.kernel_copy = False
                    continue
            else:
                data = os.pread(r.fd, min(r.nbytes - done, 16 << 20), r.offset + done)
                n = len(data)
                if n:
                    self.f.write(data)  # FileIO writes regular files whole
            if n == 0:
                raise OSError(f"unexpected end of the source file at byte {r.offset + done}")
            done += n
            self.pos += n


def write_stream(path: str | os.PathLike, items: list[Item], metadata: dict | None = None,
                 on_item: Callable[[Item], None] | None = None, depth: int = 0) -> None:
    """Write `items` to `path` as a safetensors file, a few tensors in memory at a time.

    depth > 0: a writer thread writes while the next tensors are produced (file writes and
    torch kernels release the GIL, so I/O and compute overlap). At most `depth` produced
    tensors (or chunks) wait for the writer, so one returned by produce() must stay valid
    until depth + 1 further ones have been produced (RawReader's ring of depth + 2 buffers).
    """
    ordered = file_order(items)
    names = [it.name for it in ordered]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    with open(path, "wb", buffering=0) as f:
        header = build_header(ordered, metadata)
        while header:
            header = header[f.write(header):]
        sink = _Sink(f)
        if depth <= 0:
            for it in ordered:
                for piece in _pieces(it):
                    sink.write(piece)
                if on_item is not None:
                    on_item(it)
        else:
            _pipelined(sink, ordered, depth, on_item)
        os.fsync(f.fileno())


def _pipelined(sink: _Sink, ordered: list[Item], depth: int, on_item) -> None:
    q: queue.Queue = queue.Queue(maxsize=depth)
    failed: list = []

    def writer():
        try:
            while (t := q.get()) is not None:
                sink.write(t)
        except BaseException as e:  # handed to the producing thread, which raises it
            failed.append(e)
            while q.get() is not None:  # keep taking, so the producer never blocks
                pass

    thread = threading.Thread(target=writer, name="lora-lab-writer", daemon=True)
    thread.start()
    try:
        for it in ordered:
            for piece in _pieces(it):
                if failed:
                    break
                q.put(piece)
            if failed:
                break
            if on_item is not None:
                on_item(it)
    finally:
        q.put(None)
        thread.join()
    if failed:
        raise failed[0]


class RawReader:
    """Positioned reads from a safetensors file into a ring of reusable buffers of
    `slot_bytes` each (default: the largest tensor): a tensor returned by read(), or a chunk
    yielded by chunks(), stays valid for `ring - 1` further reads."""

    def __init__(self, path: str | os.PathLike, ring: int = 1, slot_bytes: int | None = None):
        self.path = Path(path)
        self.header, self.metadata = read_header(self.path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        self._base = 8 + n
        self._f = open(self.path, "rb", buffering=0)
        self._fd = self._f.fileno()
        sizes = [info["data_offsets"][1] - info["data_offsets"][0] for info in self.header.values()]
        self.ring = max(1, ring)
        self.slot_bytes = max(sizes, default=0) if slot_bytes is None else int(slot_bytes)
        self._bufs: list = []  # allocated on first use
        self._next = 0

    @property
    def shapes(self) -> dict:
        return {k: tuple(v["shape"]) for k, v in self.header.items()}

    def dtype(self, key: str) -> torch.dtype:
        name = self.header[key]["dtype"]
        if name not in ST_DTYPES:
            raise ValueError(f"{self.path.name}: tensor {key!r} has unsupported dtype {name}")
        return ST_DTYPES[name]

    def nbytes(self, key: str) -> int:
        start, end = self.header[key]["data_offsets"]
        return end - start

    def _fill(self, offset: int, nbytes: int) -> torch.Tensor:
        """Read `nbytes` at data offset `offset` into the next ring buffer; returns its uint8 view."""
        if nbytes > self.slot_bytes:
            raise ValueError(f"{nbytes} bytes do not fit a {self.slot_bytes}-byte read buffer")
        if not self._bufs:
            self._bufs = [torch.empty(self.slot_bytes, dtype=torch.uint8) for _ in range(self.ring)]
        buf = self._bufs[self._next]
        self._next = (self._next + 1) % len(self._bufs)
        view = memoryview(buf.numpy())[:nbytes]
        got = 0
        while got < nbytes:
            pos = self._base + offset + got
            if hasattr(os, "preadv"):  # one call, no shared file position
                n = os.preadv(self._fd, [view[got:]], pos)
            else:
                self._f.seek(pos)
                n = self._f.readinto(view[got:])
            if not n:
                raise OSError(f"{self.path.name}: unexpected end of file at data offset {offset + got}")
            got += n
        return buf[:nbytes]

    def read(self, key: str) -> torch.Tensor:
        """The whole tensor, as a view of the next ring buffer (copy it to keep it longer)."""
        info = self.header[key]
        return self._fill(info["data_offsets"][0], self.nbytes(key)).view(self.dtype(key)).reshape(info["shape"])

    def raw_range(self, key: str) -> RawRange:
        """The tensor's bytes in the file, for a kernel-side copy (valid until close())."""
        start, end = self.header[key]["data_offsets"]
        return RawRange(self._fd, self._base + start, end - start)

    def chunks(self, key: str):
        """The tensor's values in order, as 1-D views of ring buffers (at most slot_bytes each)."""
        dtype = self.dtype(key)
        item = dtype.itemsize
        step = max(item, self.slot_bytes - self.slot_bytes % item)
        start, end = self.header[key]["data_offsets"]
        for off in range(start, end, step):
            yield self._fill(off, min(step, end - off)).view(dtype)

    def close(self) -> None:
        self._f.close()
        self._bufs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
