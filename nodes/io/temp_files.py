"""Temp files and folders of atomic writes: a recognisable name, the user's umask, and stale
ones removed by the next write into the same folder.

A write in progress is `.<target name>.<host>-<pid>.<random>.lora-lab-tmp` beside its target.
A process killed mid-write (SIGKILL, power loss, OOM killer) leaves its temp file behind; the
next write into that folder removes every one of ours whose writer is gone: same host and the
pid no longer runs, or older than STALE_AFTER_S (another host's, or a reused pid). Files of
other programs are never touched (the suffix and the name pattern are ours alone).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".lora-lab-tmp"
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})  # disk/quota/media
STALE_AFTER_S = 24 * 3600  # a temp file untouched this long has no live writer (a merge writes steadily)
_NAME = re.compile(r"^\..*\.([0-9a-f]{8})-(\d+)\.[^.]+" + re.escape(TEMP_SUFFIX) + "$")
_umask_lock = threading.Lock()


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')) & 0xFFFFFFFF:08x}"


def current_umask() -> int:
    """The process umask (read by setting it and back; under a lock against other threads)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's) or we cannot tell: keep the file
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """True for one of our temp files/folders whose writer is gone (see the module doc)."""
    m = _NAME.match(path.name)
    if m is None:
        return False
    try:
        age = (now if now is not None else time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_S:
        return True
    return m.group(1) == _host_tag() and not _pid_alive(int(m.group(2)))


def remove_stale(folder: Path) -> list[Path]:
    """Remove our stale temp files/folders in `folder` (not below it); returns what went."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for p in entries:
        if not (p.name.endswith(TEMP_SUFFIX) and is_stale(p)):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue  # another writer cleaned it first
        except OSError as e:
            log.warning("could not remove the stale temp file %s (%s)", p, e)
            continue
        removed.append(p)
    if removed:
        log.info("removed %d stale temp file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def new_temp(parent: Path, target_name: str, is_dir: bool = False) -> Path:
    """A new empty temp file (or folder) in `parent` for `target_name`, created with the
    user's umask (as open() would; mkstemp's 0600 would stay on the committed file)."""
    parent = Path(parent)
    remove_stale(parent)
    prefix = f".{target_name[:120]}.{_host_tag()}-{os.getpid()}."
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=parent))
        mode = 0o777
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=parent)
        os.close(fd)
        tmp, mode = Path(name), 0o666
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode & ~current_umask())
    return tmp


def apply_umask(path: Path, is_dir: bool = False) -> None:
    """Give a finished temp file/folder the mode open()/mkdir() would have: 0666 / 0777 less
    the umask (whatever wrote into it: safetensors' own writer, say, makes 0600 files)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


def write_failed(target, e: OSError):
    """The OutputWriteError for an OSError `e` raised while writing towards `target`."""
    from .errors import OutputWriteError

    return OutputWriteError(e.errno, f"{target}: cannot write it ({e.strerror or e}); nothing was written there")
