"""The embedded demo model: a tiny SD 1.5-layout checkpoint trained on coloured shapes.

The weights ship in assets/ (fp16, ~20 MB, made by train_base.py from its seeds); on first use
they are copied into the checkpoints folder, where any single-file loader reads them. The
asset's SHA-256 is checked before the copy and the copy's after it, so a damaged or stale file
is never used under the demo's name. It draws 64x64 pictures of its training captions: "a red
circle on a blue background" (circle, square, triangle, cross; red, green, blue, yellow,
white, black); the demo LoRAs (demo_lora.py) add stripes and a star.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from ..io import paths
from ..io.errors import CheckpointError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_NAME = "lora-lab-demo-sd15.safetensors"
DEMO_TITLE = "LoRA Lab demo (tiny SD 1.5 layout trained on coloured shapes)"
DEMO_SHA256 = "9be3aee300d8f44847e77fd6b860025943b4404597bfaf378493e3d3fd70b3b7"
DEMO_SIZE = 64  # the pictures it was trained on: 64x64 (8x8 latents)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime)."""
    st = os.stat(path)
    return _hash_of(str(path), st.st_size, st.st_mtime_ns)


def verified_asset(name: str, sha256: str) -> Path:
    """The shipped asset `name`, after checking its SHA-256 (CheckpointError if it differs)."""
    src = ASSETS / name
    if not src.is_file():
        raise CheckpointError(f"the demo asset {src} is missing: reinstall LoRA Lab")
    got = file_sha256(src)
    if got != sha256:
        raise CheckpointError(f"the demo asset {src} has SHA-256 {got}, expected {sha256}: reinstall LoRA Lab")
    return src


def install_asset(name: str, sha256: str, target: Path) -> Path:
    """Copy the verified asset to `target` atomically, unless `target` already holds it. A
    different file under the demo's name (an older random-weights demo) is replaced."""
    if target.is_file():
        if file_sha256(target) == sha256:
            return target
        log.warning("%s is not this version's demo file (SHA-256 differs): replacing it", target)
    src = verified_asset(name, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            for block in iter(lambda: fi.read(1 << 20), b""):
                fo.write(block)
        if sha256_file(tmp) != sha256:
            raise CheckpointError(f"copying {src} to {target} gave a file with another SHA-256")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def ensure_demo_checkpoint(folder: Path | None = None) -> Path:
    """Path of the demo checkpoint in `folder` (default: the first checkpoints folder),
    copied there from the package's assets if it is not there yet (checksums checked)."""
    folder = Path(folder) if folder is not None else paths.folders("checkpoints")[0]
    return install_asset(DEMO_NAME, DEMO_SHA256, folder / DEMO_NAME)
