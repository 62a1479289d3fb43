"""Where merged files go: `Destination` commits a finished temp file (or folder) atomically,
onto an explicit path (refused if it exists, unless overwrite), or onto the first free
ComfyUI-style counter name `<stem>_00001_<ext>` (never overwriting; a name taken meanwhile
moves to the next). `split_prefix` keeps node file prefixes inside the output folder.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from .errors import LoraLabError, NodeInputError
from .paths import check_path_text
from .temp_files import WRITE_ERRNOS, apply_umask, new_temp, write_failed


def split_prefix(prefix: str, root: Path, node: str, input_name: str = "filename_prefix") -> tuple[Path, str]:
    """'sub/dir/name' -> (root/sub/dir, 'name'), refusing anything that leaves `root`."""
    text = (prefix or "").replace("\\", "/").strip()
    try:
        check_path_text(text, "the prefix")
    except LoraLabError as e:
        raise NodeInputError(node, input_name, prefix, str(e)) from None
    parts = text.split("/")
    if not text or text.endswith("/") or parts[-1] in (".", ".."):
        raise NodeInputError(node, input_name, prefix, "needs a file name part")
    if text.startswith("/") or ".." in parts or (len(text) > 1 and text[1] == ":"):
        raise NodeInputError(node, input_name, prefix, "must stay inside the output folder")
    folder = root.joinpath(*parts[:-1]).resolve()
    try:
        folder.relative_to(root.resolve())
    except ValueError:
        raise NodeInputError(node, input_name, prefix, "must stay inside the output folder") from None
    return folder, parts[-1]


def next_counter(folder: Path, stem: str, ext: str) -> int:
    """1 + the highest counter used by `<stem>_NNNNN_<ext>` in `folder` (ComfyUI's rule)."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})_" + re.escape(ext) + "$")
    best = 0
    if folder.is_dir():
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


class Destination:
    """Where a finished file or folder goes: `path` (explicit) or `folder` + `stem` (counter)."""

    def __init__(self, path: str | os.PathLike | None = None, *, folder: str | os.PathLike | None = None,
                 stem: str | None = None, overwrite: bool = False):
        if (path is None) == (folder is None or stem is None):
            raise ValueError("give either path, or folder and stem")
        for value, what in ((path, "output path"), (folder, "output folder"), (stem, "output name")):
            if value is not None:
                check_path_text(value, what)
        self.target = Path(path) if path is not None else None
        self.folder, self.stem, self.overwrite = (Path(folder) if folder else None), stem, overwrite
        self.path: Path | None = None  # set once committed

    def check(self) -> None:
        """Refuse an existing explicit target now, before any work is done."""
        if self.target is not None and self.target.exists() and not self.overwrite:
            raise FileExistsError(f"{self.target} exists; refusing to overwrite it (use overwrite)")

    @contextlib.contextmanager
    def writing(self, ext: str = ".safetensors", is_dir: bool = False):
        """Yield a temp path (a file, or an empty folder) next to the target; commit on success.

        On any error the temp file/folder is removed and nothing appears at the target.
        """
        self.check()
        parent = self.target.parent if self.target is not None else self.folder
        parent.mkdir(parents=True, exist_ok=True)
        name = self.target.name if self.target is not None else self.stem
        tmp = new_temp(parent, name, is_dir)  # also removes stale temp files of killed writes here
        try:
            yield tmp
            self.path = self._commit(tmp, ext, is_dir)
        except OSError as e:
            if isinstance(e, FileExistsError) or e.errno not in WRITE_ERRNOS:
                raise
            raise write_failed(self.target or self.folder / self.stem, e) from e
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _commit(self, tmp: Path, ext: str, is_dir: bool) -> Path:
        apply_umask(tmp, is_dir)
        if not is_dir:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if self.target is not None:
            if not is_dir:
                if self.overwrite:
                    os.replace(tmp, self.target)
                else:
                    os.link(tmp, self.target)  # fails if the target appeared meanwhile
                return self.target
            if self.target.exists():
                if not self.overwrite:
                    raise FileExistsError(f"{self.target} exists; refusing to overwrite it")
                old = new_temp(self.target.parent, self.target.name + ".old", is_dir=True)
                old.rmdir()  # a fresh unused name for the folder being replaced (stale if we are killed)
                os.rename(self.target, old)
                os.rename(tmp, self.target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, self.target)
            return self.target
        counter = next_counter(self.folder, self.stem, ext if not is_dir else "")
        while True:
            candidate = self.folder / f"{self.stem}_{counter:05}_{ext if not is_dir else ''}"
            try:
                if is_dir:
                    if candidate.exists():
                        raise FileExistsError(candidate)
                    os.rename(tmp, candidate)  # a folder that appeared meanwhile makes this fail
                else:
                    os.link(tmp, candidate)  # fails if the name is taken: never overwrites
                return candidate
            except FileExistsError:
                counter += 1
            except OSError:
                if not (is_dir and candidate.exists()):
                    raise
                counter += 1
