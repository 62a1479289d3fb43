"""Many fp16/bf16 LoRA chains at once, their row blocks spread over worker threads (CPU).

Why: on a CPU, applying a LoRA to an fp16/bf16 weight is, per row block, a widen (DRAM-bound:
read the half-precision rows into an fp32 scratch), a rank-r GEMM (compute-bound, in cache) and
a narrow (DRAM-bound: write the rows back). torch runs each of these ops on all its threads, so
while one runs the others' resources sit idle: the time is the sum of the three. Here each
worker thread runs whole blocks on one torch thread and takes the next block of any weight when
done; the workers drift out of step, so one's GEMM runs while another's rows stream to or from
memory. Measured on SD 1.5's 128 attention weights (fp16, rank 32, 2 cores): median 56-60 ms
against 66-75 ms for the one-thread-pool loop (bench/lora_apply.py; notes in the issue-18 note).

The arithmetic of every block is chain_block's, and the block boundaries chain_blocks' (as in
adapters.plain_lora_chain), so the weights are the ones that function gives.

Small jobs (under MIN_THREADED_ELEMENTS) stay on the calling thread. Otherwise the calling
thread is one of the workers, beside n - 1 started threads. While the workers run, torch's thread
count is 1 in each of them; MKL's count is process-wide, so the calling thread's count is put
back when they finish (also on an error).
"""
from __future__ import annotations

import threading

import torch

from .adapters import chain_block, chain_blocks, chain_setup

# Below this many weight elements in all (a small model, a LoRA on a few layers) the threads'
# start-up and torch's thread-count switch cost more than the overlap gains: one thread pool then.
# Measured: SD 1.5's attention (93 M elements) gains 6 ms; a fifth-width UNet's (4 M) loses 2.7 ms.
MIN_THREADED_ELEMENTS = 16 << 20


def plain_lora_chains(tasks, workers: int | None = None) -> list[torch.Tensor]:
    """[plain_lora_chain(w0, loras, out) for (w0, loras, out) in tasks], the fp16/bf16 CPU
    ones computed together on `workers` threads (default: torch's thread count)."""
    results, jobs = [], []
    for w0, loras, out in tasks:
        res, job = chain_setup(w0, loras, out)
        results.append(res)
        if job is not None:
            need, blocks = chain_blocks(job[0])
            jobs.extend((job, i, j, need) for i, j in blocks)
    if not jobs:
        return results
    n = default_workers() if workers is None else workers
    size = sum((j - i) * job[0].shape[1] for job, i, j, _ in jobs)
    threaded = (n > 1 and len(jobs) > 1 and size >= MIN_THREADED_ELEMENTS
                and all(job[0].device.type == "cpu" for job, _, _, _ in jobs))
    if not threaded:
        _run(jobs, iter(range(len(jobs))), threading.Lock())
        return results
    _run_threads(jobs, min(n, len(jobs)))
    return results


def default_workers() -> int:
    """Worker threads for a CPU apply: torch's intra-op thread count (the cores torch may use)."""
    return torch.get_num_threads()


def _run(jobs, order, lock, errors=None) -> None:
    """Take job indices from the shared `order` until it is empty (or another worker failed)."""
    scratch = None  # one fp32 block buffer per worker, grown when a block needs more
    try:
        while not errors:
            with lock:
                k = next(order, None)
            if k is None:
                return
            job, i, j, need = jobs[k]
            device = job[0].device
            if scratch is None or scratch.numel() < need or scratch.device != device:
                scratch = torch.empty(need, dtype=torch.float32, device=device)
            chain_block(job, i, j, scratch)
    except BaseException as e:  # handed to the calling thread
        if errors is None:
            raise
        errors.append(e)


def _run_threads(jobs, n: int) -> None:
    before = torch.get_num_threads()
    order, lock, errors = iter(range(len(jobs))), threading.Lock(), []

    def worker():
        torch.set_num_threads(1)
        _run(jobs, order, lock, errors)

    # n - 1 threads; the calling thread is the n-th worker (its first block starts at once)
    threads = [threading.Thread(target=worker, name=f"lora-lab-apply-{k}", daemon=True) for k in range(n - 1)]
    try:
        for t in threads:
            t.start()
        worker()
    finally:
        for t in threads:
            if t.ident is not None:  # started
                t.join()
        torch.set_num_threads(before)
    if errors:
        raise errors[0]
