"""bench/sample.py's machinery (not its timings): the per-process memory probe sees an
allocation made after load, one side run in a fresh process returns its per-step times and
memory, and the ComfyUI row is left out with a reason when COMFYUI_DIR can't be used."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import sample
        import sample_sides

        yield sample, sample_sides
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_memory_probe_sees_an_allocation_after_load(bench):
    import torch

    mem = bench[1].Memory(torch.device("cpu"))
    mem.loaded()
    block = bytearray(96 * 2**20)  # zero-filled by the allocator: resident once touched
    block[:: 4096] = b"\1" * len(block[:: 4096])
    r = mem.report()
    del block
    assert r["rss_loaded"] > 0 and r["rss_load_peak"] >= r["rss_loaded"]
    assert r["rss_increment"] >= 90 * 2**20, r
    assert r["rss_peak"] == r["rss_loaded"] + r["rss_increment"]


def test_one_side_in_a_fresh_process(bench, tmp_path):
    from lora_lab.nodes.demo.demo import ensure_demo_checkpoint

    sample = bench[0]
    ckpt = str(ensure_demo_checkpoint(tmp_path))
    a = argparse.Namespace(repeats=1, short=1, long=2, size=64, batch=1, cfg=7.0, device="cpu")
    r = sample._child(a, "ours", ckpt)
    assert r["family"] == "sd1" and len(r["per_step"]) == 1
    m = r["mem"]
    assert m["rss_loaded"] > 50 * 2**20 and m["rss_peak"] >= m["rss_loaded"]
    assert m["rss_increment"] == m["rss_peak"] - m["rss_loaded"]
    assert "cuda_peak" not in m


def test_comfyui_row_needs_a_checkout(bench, tmp_path):
    why = bench[1].comfy_importable
    assert why(None) == "COMFYUI_DIR is not set"
    assert "no nodes.py" in why(str(tmp_path))
