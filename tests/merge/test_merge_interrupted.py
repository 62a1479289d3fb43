"""Interrupted writes: a merge killed with SIGKILL mid-write leaves no target and only a
recognisable temp file, which the next merge into that folder removes; a live writer's temp
file and other programs' files are kept; files are created with the user's umask."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lora_factory import kohya
from safetensors.torch import load_file, save_file

from lora_lab.nodes.cli import main as cli
from lora_lab.nodes.io import temp_files
from lora_lab.nodes.model.checkpoint import load_single_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Runs `lora-lab merge` and stops for good (sleeps) after a few tensors were written to the
# temp file, once it has said so in READY: the parent then kills it with SIGKILL.
_CHILD = r"""
import sys, time
from pathlib import Path
from lora_lab.nodes.merge import merge
ready, argv = Path(sys.argv[1]), sys.argv[2:]
real = merge.write_stream
def write_stream(path, items, meta, on_item=None, depth=1):
    seen = []
    def hook(it):
        seen.append(it)
        if on_item is not None:
            on_item(it)
        if len(seen) == 40:
            ready.write_text(str(path))
            time.sleep(600)
    return real(path, items, meta, on_item=hook, depth=depth)
merge.write_stream = write_stream
from lora_lab.nodes.cli import main as cli
sys.exit(cli.main(argv))
"""


def _umask() -> int:
    return temp_files.current_umask()


def test_sigkill_mid_merge_then_the_next_merge_cleans_up(tiny_checkpoints, tmp_path, capsys):
    h = load_single_file(tiny_checkpoints["sd1"])
    models, out = tmp_path / "models", tmp_path / "out"
    (models / "loras").mkdir(parents=True)
    out.mkdir()
    save_file(kohya(h, rank=4, seed=1), models / "loras" / "a.safetensors")
    (out / ".notes.tmp").write_text("another program's temp file")  # not ours: kept
    target = out / "m.safetensors"
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", "a:0.8", "-o", str(target), "--models-dir",
            str(models), "-q"]
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(ready), *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the child merge never got going"
            time.sleep(0.05)
        tmp = Path(ready.read_text())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    # killed: no target, one partial temp file with our recognisable name and the user's umask
    assert not target.exists()
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([".notes.tmp", tmp.name]) and tmp.name.endswith(temp_files.TEMP_SUFFIX)
    assert tmp.name.startswith(".m.safetensors.") and tmp.stat().st_size > 0
    assert temp_files.is_stale(tmp)  # its writer is gone

    # the next merge into that folder removes it, and writes the target with the user's umask
    assert cli.main(argv) == 0 and capsys.readouterr().out.strip() == str(target)
    assert sorted(p.name for p in out.iterdir()) == [".notes.tmp", "m.safetensors"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert load_file(target)  # complete and readable


def test_a_live_writers_temp_file_is_kept_and_old_ones_go(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = temp_files._host_tag()
        live = tmp_path / f".a.safetensors.{host}-{sleeper.pid}.abcdefgh{temp_files.TEMP_SUFFIX}"
        mine = tmp_path / f".b.safetensors.{host}-{os.getpid()}.abcdefgh{temp_files.TEMP_SUFFIX}"
        other_host = tmp_path / f".c.safetensors.00000000-1.abcdefgh{temp_files.TEMP_SUFFIX}"
        old_other_host = tmp_path / f".d.safetensors.00000000-1.abcdefgh{temp_files.TEMP_SUFFIX}"
        folder = tmp_path / f".e.{host}-999999999.abcdefgh{temp_files.TEMP_SUFFIX}"
        for p in (live, mine, other_host, old_other_host):
            p.write_bytes(b"partial")
        folder.mkdir()
        (folder / "lora_state.safetensors").write_bytes(b"partial")
        week = time.time() - 7 * 24 * 3600
        os.utime(old_other_host, (week, week))
        removed = temp_files.remove_stale(tmp_path)
        assert sorted(p.name for p in removed) == sorted([old_other_host.name, folder.name])
        assert live.exists() and mine.exists() and other_host.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [p.name for p in temp_files.remove_stale(tmp_path)] == [live.name]  # its writer is gone now


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    from lora_lab.nodes.io.destination import Destination
    from lora_lab.nodes.io.safetensors_write import save_safetensors

    import torch

    before = os.umask(mask)
    try:
        p = save_safetensors({"x": torch.zeros(2)}, tmp_path / "a.safetensors")
        d = Destination(folder=tmp_path, stem="b")
        with d.writing(".safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
        with Destination(tmp_path / "dir").writing(is_dir=True) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(before)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
    assert d.path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "dir").stat().st_mode & 0o777 == 0o777 & ~mask
