"""fp16/bf16 LoRA chains on worker threads (nodes/lora/chain_threads.py): the same weights as the
one-thread loop, the blocks really spread over threads, torch's thread count put back, and an
error leaves no weight half-applied."""
from __future__ import annotations

import threading

import pytest
import torch
from conftest import make_handle
from lora_factory import kohya, unet_layers

from lora_lab.nodes.lora import adapters, chain_threads, patcher
from lora_lab.nodes.lora.patcher import LoraPatch
from lora_lab.nodes.lora.lora_formats import parse_state_dict


def _tasks(dtype, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for k in range(n):
        rows, cols, rank = 48 + 16 * k, 64 + 8 * (k % 3), 4 + k % 2
        w = (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)
        stack = []
        for s in (0.8, -0.5)[: 1 + k % 2]:
            a = adapters.Adapter("lora", {"up": torch.randn(rows, rank, generator=g) * 0.1,
                                          "down": torch.randn(rank, cols, generator=g) * 0.1}, alpha=2.0)
            stack.append((a, s))
        tasks.append((w, stack, None))
    return tasks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_threads_give_the_one_thread_weights(monkeypatch, dtype):
    """Blocks of 5 rows, 3 workers: every weight equals plain_lora_chain's, bit for bit."""
    monkeypatch.setattr(chain_threads, "MIN_THREADED_ELEMENTS", 0)
    monkeypatch.setitem(adapters.CHAIN_BLOCK_BYTES, "cpu", 5 * 4 * 64)
    tasks = _tasks(dtype)
    want = [adapters.plain_lora_chain(w, loras) for w, loras, _ in tasks]
    got = chain_threads.plain_lora_chains(tasks, workers=3)
    assert len(got) == len(want)
    for g_, w_, (w0, _, _) in zip(got, want, tasks):
        assert g_.dtype == dtype and torch.equal(g_, w_) and not torch.equal(g_, w0)


def test_blocks_run_on_worker_threads_and_thread_count_is_restored(monkeypatch):
    monkeypatch.setattr(chain_threads, "MIN_THREADED_ELEMENTS", 0)
    monkeypatch.setitem(adapters.CHAIN_BLOCK_BYTES, "cpu", 4 * 4 * 64)
    seen, counts, real = set(), set(), chain_threads.chain_block
    gate = threading.Barrier(2, timeout=10)  # both workers must be inside a block at once

    def spy(job, i, j, scratch):
        name = threading.current_thread().name
        if name not in seen:
            seen.add(name)
            gate.wait()
        counts.add(torch.get_num_threads())
        real(job, i, j, scratch)

    monkeypatch.setattr(chain_threads, "chain_block", spy)
    before = torch.get_num_threads()
    chain_threads.plain_lora_chains(_tasks(torch.float16), workers=2)
    assert seen == {threading.current_thread().name, "lora-lab-apply-0"}  # the caller is a worker too
    assert counts == {1}  # one torch thread per worker
    assert torch.get_num_threads() == before


def test_one_worker_fp32_or_small_work_stays_on_the_calling_thread(monkeypatch):
    names, real = set(), chain_threads.chain_block
    monkeypatch.setattr(chain_threads, "chain_block",
                        lambda *a: (names.add(threading.current_thread().name), real(*a)))
    monkeypatch.setitem(adapters.CHAIN_BLOCK_BYTES, "cpu", 4 * 4 * 64)  # many blocks
    tasks = _tasks(torch.float16)
    chain_threads.plain_lora_chains(tasks, workers=4)  # below MIN_THREADED_ELEMENTS
    monkeypatch.setattr(chain_threads, "MIN_THREADED_ELEMENTS", 0)
    chain_threads.plain_lora_chains(tasks, workers=1)
    chain_threads.plain_lora_chains(_tasks(torch.float32), workers=4)  # fp32: one addmm, no blocks
    assert names == {threading.current_thread().name}
    chain_threads.plain_lora_chains(tasks, workers=2)
    assert len(names) > 1  # and the same tasks do go to workers once the size allows


def test_a_failing_block_leaves_every_weight_at_its_original(monkeypatch):
    """An error in a worker reaches the caller; the weights of that activate stay the originals
    (none half-written) and the patcher holds nothing for them; the thread count is put back."""
    h = make_handle("sd1", seed=31)
    h.unet.to(torch.float16)
    suffixes = ("attn1.to_q", "attn2.to_v", "proj_in")
    layers = dict(unet_layers(h, suffixes))
    w0 = {n: m.weight.detach().clone() for n, m in layers.items()}
    ptr0 = {n: m.weight.data_ptr() for n, m in layers.items()}
    raw = parse_state_dict(kohya(h, rank=4, seed=2, with_te=False, unet_suffixes=suffixes), name="x")
    p = h.with_patches((LoraPatch("x", raw, 0.9, 1.0),))
    monkeypatch.setitem(adapters.CHAIN_BLOCK_BYTES, "cpu", 2 * 4 * 32)
    calls, real = [], chain_threads.chain_block

    def flaky(*a):
        calls.append(1)
        if len(calls) == 7:
            raise MemoryError("out of memory in block 7")
        real(*a)

    monkeypatch.setattr(chain_threads, "chain_block", flaky)
    monkeypatch.setattr(chain_threads, "default_workers", lambda: 2)  # threaded even on one core
    monkeypatch.setattr(chain_threads, "MIN_THREADED_ELEMENTS", 0)
    before = torch.get_num_threads()
    with pytest.raises(MemoryError, match="block 7"):
        patcher.activate(p)
    assert all(m.weight.data_ptr() == ptr0[n] and torch.equal(m.weight, w0[n]) for n, m in layers.items())
    st = patcher.state_for(h)
    assert st.originals == {} and st.applied == {}
    assert torch.get_num_threads() == before
    monkeypatch.setattr(chain_threads, "chain_block", real)
    patcher.activate(p)  # and the next activate applies it whole
    assert all(not torch.equal(m.weight, w0[n]) for n, m in layers.items())
