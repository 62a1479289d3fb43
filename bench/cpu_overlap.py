"""Benchmark: how much a CPU's cores slow each other on the two halves of an fp16 LoRA apply.

An fp16/bf16 apply is, per row block, a rank-32 GEMM in cache (compute) and the widen / narrow
conversions that stream the rows from and to memory (DRAM). nodes/lora/chain_threads.py runs
blocks on one worker per core so one core's GEMM overlaps another's streaming; this measures,
in one run, each half alone on one core and the same half while another core runs the other
half, so the bound that overlap can reach on this machine is a measured number, not a guess.

Run:  python bench/cpu_overlap.py [--seconds 0.5]
Rows: the GEMM's rate (GFLOP/s) and the conversions' rate (M elements widened + narrowed per
second), each alone and beside the other, and the ratio; with the single-core rates, the
per-core sum for SD 1.5's 128 attention weights (93.5 M elements, rank 32) over the cores.
Then the apply's own sequence on one core (per block: widen, GEMM, narrow), each part timed:
on a 2-core Zen 4 VM the conversions there ran at 0.76-0.84x their rate alone (the widen after
a GEMM is the slow one; with an in-cache copy in the GEMM's place it is not), so the per-core
bound of the attention apply was 47-51 ms there, not 45 (1.4-1.6x the compute floor of
bench/lora_apply.py, 31-34 ms).
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import torch

SD15_ATTN_ELEMENTS = 93_511_680  # the 128 attention weights of an SD 1.5 UNet (bench/lora_apply.py)


def _gemm_setup():
    return torch.randn(800, 1280), torch.randn(800, 32), torch.randn(32, 1280)


def _gemm_step(state) -> int:
    acc, up, down = state
    acc.addmm_(up, down, alpha=0.5)
    return 2 * 32 * 800 * 1280  # FLOPs


def _stream_setup():
    rows = torch.randn(48, 1 << 20).half()  # 96 MiB: beyond the caches
    return [rows, torch.empty(1 << 20), torch.empty_like(rows), 0]


def _stream_step(state) -> int:
    rows, scratch, out, i = state
    scratch.copy_(rows[i])  # widen: DRAM -> fp32 scratch
    out[i].copy_(scratch)  # narrow: scratch -> DRAM
    state[3] = (i + 1) % rows.shape[0]
    return 1 << 20  # elements


HALVES = {"GEMM": (_gemm_setup, _gemm_step), "conversions": (_stream_setup, _stream_step)}


def rate(name: str, beside: str | None, seconds: float) -> float:
    """The named half's rate on one thread (one torch thread), alone or while `beside` runs on another."""
    go, stop = threading.Barrier(2 if beside is None else 3), threading.Event()
    done = [0]

    def run(half, count):
        torch.set_num_threads(1)
        setup, step = HALVES[half]
        state = setup()
        go.wait()
        n = 0
        while not stop.is_set():
            n += step(state)
        if count:
            done[0] = n

    threads = [threading.Thread(target=run, args=(name, True))]
    if beside is not None:
        threads.append(threading.Thread(target=run, args=(beside, False)))
    before = torch.get_num_threads()
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    threads[0].join()
    elapsed = time.perf_counter() - t0
    for t in threads[1:]:
        t.join()
    torch.set_num_threads(before)
    return done[0] / elapsed


def in_sequence(seconds: float) -> tuple[float, float]:
    """(GEMM FLOP/s, conversion elements/s) on one torch thread running the apply's own block
    sequence: widen a block of rows from memory, add the rank-32 product, narrow it back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = torch.randn(60_000, 1280).half()  # 146 MiB: beyond the caches, like a UNet's weights
        out, up, down = torch.empty_like(rows), torch.randn(60_000, 32), torch.randn(32, 1280)
        acc, step = torch.empty(800, 1280), 800
        conv = gemm = 0.0
        n_conv = n_gemm = 0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            for i in range(0, rows.shape[0] - step + 1, step):
                t0 = time.perf_counter()
                acc.copy_(rows[i:i + step])
                t1 = time.perf_counter()
                acc.addmm_(up[i:i + step], down, alpha=0.5)
                t2 = time.perf_counter()
                out[i:i + step].copy_(acc)
                t3 = time.perf_counter()
                conv += (t1 - t0) + (t3 - t2)
                gemm += t2 - t1
                n_conv += acc.numel()
                n_gemm += 2 * 32 * acc.numel()
        return n_gemm / gemm, n_conv / conv
    finally:
        torch.set_num_threads(before)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    n = torch.get_num_threads()  # the apply's workers
    print(f"torch {torch.__version__}, {n} threads, load average {os.getloadavg()[0]:.2f}")
    rows = {}
    for _ in range(args.repeats):  # interleaved: alone, beside, alone, beside ...
        for name, other in (("GEMM", "conversions"), ("conversions", "GEMM")):
            rows.setdefault((name, "alone"), []).append(rate(name, None, args.seconds))
            rows.setdefault((name, "beside"), []).append(rate(name, other, args.seconds))
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    print()
    print("| half | alone, one core | beside the other half on another core | beside / alone |")
    print("|---|---|---|---|")
    for name, unit, scale in (("GEMM", "GFLOP/s", 1e9), ("conversions", "M elements/s", 1e6)):
        a, b = med[(name, "alone")], med[(name, "beside")]
        print(f"| {name} | {a / scale:.1f} {unit} | {b / scale:.1f} {unit} | {b / a:.2f}x |")
    gemm_s = 2 * 32 * SD15_ATTN_ELEMENTS / med[("GEMM", "alone")]
    conv_s = SD15_ATTN_ELEMENTS / med[("conversions", "alone")]
    print(f"\nSD 1.5 attention, rank 32: GEMM {gemm_s * 1e3:.0f} core-ms + conversions {conv_s * 1e3:.0f} core-ms "
          f"-> at best {(gemm_s + conv_s) / n * 1e3:.0f} ms on {n} cores with no slow-down beside each other")
    seq = [in_sequence(args.seconds) for _ in range(args.repeats)]
    g_rate = sorted(g for g, _ in seq)[len(seq) // 2]
    c_rate = sorted(c for _, c in seq)[len(seq) // 2]
    gemm_q = 2 * 32 * SD15_ATTN_ELEMENTS / g_rate
    conv_q = SD15_ATTN_ELEMENTS / c_rate
    print(f"in the apply's sequence on one core (widen, GEMM, narrow per block): GEMM {g_rate / 1e9:.1f} GFLOP/s, "
          f"conversions {c_rate / 1e6:.0f} M elements/s ({c_rate / med[('conversions', 'alone')]:.2f}x alone) "
          f"-> GEMM {gemm_q * 1e3:.0f} + conversions {conv_q * 1e3:.0f} core-ms, at best {(gemm_q + conv_q) / n * 1e3:.0f} ms "
          f"on {n} cores")


if __name__ == "__main__":
    main()
