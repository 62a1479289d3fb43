"""Benchmark: LoRA apply on fp32, fp16 and bf16 copies of one SD 1.5 UNet, interleaved.

bench/lora_apply.py measures each storage dtype in its own stretch of the run; on a shared
machine the load changes between them by more than the difference asked about ("is fp16 ever
slower than fp32?"). Here the three UNets (the same random weights, cast) are held at once and
every repeat applies the same stack to each of them in turn, so each ratio compares runs made
side by side. Stacks of n rank-32 kohya LoRAs on the 128 attention layers; our patcher only.

Run:  python bench/lora_apply_dtypes.py [--stacks 1,2,4] [--repeats 9] [--small]
Columns: each dtype's median apply, its ratio to fp32's, and its ratio to the larger of the
memory floor (that dtype's touched bytes read and written once at the copy bandwidth) and the
compute floor (2·32·n FLOPs per weight at the fp32 matmul rate).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora_apply as LA  # noqa: E402  (the UNet, LoRA files, floors and timer of the main bench)

DTYPES = ("float32", "float16", "bfloat16")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--small", action="store_true", help="fifth-width UNet: a smoke run, not a measurement")
    args = ap.parse_args(argv)
    stacks = [int(n) for n in args.stacks.split(",") if n.strip()]
    logging.basicConfig(level=logging.ERROR)
    from safetensors.torch import save_file

    from lora_lab.nodes.lora import patcher
    from lora_lab.nodes.lora.lora_formats import read_lora
    from lora_lab.nodes.model.handle import ModelHandle

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    bw, flops = LA.copy_bandwidth(), LA.matmul_flops()
    print(f"copy bandwidth: {bw / 1e9:.2f} GB/s; fp32 matmul: {flops / 1e9:.0f} GFLOP/s")
    unet32 = LA.build_unet(torch.float32, small=args.small)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k in range(max(stacks)):
            f = Path(tmp) / f"l{k}.safetensors"
            save_file(LA.kohya_lora(unet32, LA.ATTN, seed=20 + k), f)
            files.append(read_lora(f))
        for name in DTYPES:
            unet = unet32 if name == "float32" else LA.build_unet(getattr(torch, name), small=args.small)
            base = ModelHandle("sd1", "epsilon", unet, None, (LA._tiny_te(),), (None,), source=name)
            handles = {n: base.with_patches(tuple(patcher.LoraPatch(f"l{k}", files[k], 1.0, 1.0) for k in range(n)))
                       for n in stacks}
            for h in handles.values():  # warm-up: key matching, buffers
                patcher.activate(h)
                patcher.restore(base)
            models[name] = (base, handles)
    times: dict = {}
    for _ in range(args.repeats):
        for n in stacks:
            for name, (base, handles) in models.items():
                times.setdefault((n, name), []).append(LA.timed(lambda h=handles[n]: patcher.activate(h)))
                patcher.restore(base)
    elements = LA.touched_elements(unet32, LA.ATTN)
    print()
    print("| stack | compute floor | " + " | ".join(f"{d} apply | {d} / fp32 | {d} / max(floors)" for d in DTYPES) + " |")
    print("|---|---|" + "---|---|---|" * len(DTYPES))
    for n in stacks:
        cfloor = 2 * 32 * n * elements / flops
        ref = statistics.median(times[(n, "float32")])
        cells = []
        for d in DTYPES:
            t = statistics.median(times[(n, d)])
            floor = elements * getattr(torch, d).itemsize / bw
            cells.append(f"{t * 1e3:.1f} ms | {t / ref:.2f}x | {t / max(floor, cfloor):.2f}x")
        print(f"| {n} | {cfloor * 1e3:.1f} ms | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
