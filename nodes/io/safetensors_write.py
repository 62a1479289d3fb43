"""Writing safetensors files: atomically (temp file, fsync, link or replace) and
deterministically (sorted metadata, safetensors' own tensor layout), through the streamed
writer of safetensors_stream."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .safetensors_stream import state_dict_items, write_stream
from .temp_files import WRITE_ERRNOS, apply_umask, new_temp, write_failed


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, overwrite: bool = False):
    """Yield a temp path next to `target`; on success it is renamed onto `target`.

    On any error the temp file is removed and `target` is untouched. Without `overwrite`, an
    existing target is refused before anything is written.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(new_temp(target.parent, target.name))  # also removes stale temp files of killed writes here
    try:
        yield Path(tmp)
        apply_umask(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target appeared meanwhile: never clobber a file we did not check
            os.link(tmp, target)
            os.unlink(tmp)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS and not isinstance(e, FileExistsError):
            raise write_failed(target, e) from e
        raise


def write_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """Write a safetensors file deterministically: same tensors and metadata, same bytes.

    (safetensors' own writer emits the metadata map in a random order.) The layout is the
    one safetensors writes — tensors by dtype, widest first, then by name — so hashes of the
    data section (kohya's sshs_model_hash) are the same either way.
    """
    meta = {str(k): str(v) for k, v in sorted((metadata or {}).items())}
    write_stream(path, state_dict_items(tensors, None), meta or None)


def save_safetensors(tensors: dict, target, metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write `tensors` atomically and deterministically (see write_safetensors)."""
    with atomic_write(target, overwrite=overwrite) as tmp:
        write_safetensors(tensors, tmp, metadata)
    return Path(target)
