"""Benchmark: applying, switching and restoring a LoRA on a full-size SD 1.5 UNet.

Side by side in one run, on the same weights:
  - LoRA Lab's patcher (activate / switch / restore),
  - diffusers' load_lora_weights + fuse_lora, and unfuse_lora (+ unload),
  - with COMFYUI_DIR set (run in ComfyUI's Python): ComfyUI's ModelPatcher (comfy.lora.load_lora
    patches, add_patches, patch_model / unpatch_model: its backups and restore),
  - the memory-traffic floor: bytes of the touched weights read and written once, divided by
    the copy bandwidth measured here (dst.copy_(src) on a large fp32 tensor).

Two cases: a rank-32 kohya LoRA on every attention layer (to_q/k/v/out of attn1 and attn2,
128 layers), and the same plus the feed-forward layers. The UNet has the real SD 1.5
configuration and random fp32 weights built in memory (nothing is downloaded).

Run:  python bench/lora_apply.py [--repeats 3] [--cases attn,attn_ff] [--dtype float16] [--device cuda]
      COMFYUI_DIR=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python bench/lora_apply.py ...  (+ ComfyUI rows)

--dtype float16/bfloat16 stores the UNet in half precision (the patcher's math stays fp32, so
the floor halves while the compute does not); --device cuda runs everything on the GPU.

Columns: "compute floor" is ΔW = up @ down (2·rank FLOPs per weight) at the measured fp32
matmul rate. "apply / (memory + compute)" compares with doing the two one after the other,
which is what torch's CPU kernels (MKL's addmm) amount to: they do not overlap the rank-r
product with the memory traffic. "ours apply, no worker threads" is the same apply with the
fp16/bf16 row blocks run on the calling thread (nodes/lora/chain_threads.py off), interleaved
with the other repeats: what the worker threads gain (fp32 takes the same path either way).
"""
from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8,
)
ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
FF = ("ff.net.0.proj", "ff.net.2")


DEVICE = torch.device("cpu")


def build_unet(dtype=torch.float32, device="cpu", small=False):
    from diffusers import UNet2DConditionModel

    cfg = dict(SD15_UNET)
    if small:
        cfg.update(block_out_channels=[c // 5 for c in cfg["block_out_channels"]], cross_attention_dim=192)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    unet = unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=g)
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def kohya_lora(unet, suffixes, rank=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in unet.named_modules():
        if name.endswith(suffixes):
            base = "lora_unet_" + name.replace(".", "_")
            sd[base + ".lora_down.weight"] = torch.randn(rank, mod.weight.shape[1], generator=g) * 0.01
            sd[base + ".lora_up.weight"] = torch.randn(mod.weight.shape[0], rank, generator=g) * 0.01
            sd[base + ".alpha"] = torch.tensor(16.0)
    return sd


def touched_bytes(unet, suffixes):
    return sum(m.weight.numel() * m.weight.element_size() for n, m in unet.named_modules() if n.endswith(suffixes))


def touched_elements(unet, suffixes):
    return sum(m.weight.numel() for n, m in unet.named_modules() if n.endswith(suffixes))


def copy_bandwidth(n_bytes=1 << 30, repeats=5):
    """Bytes copied per second by dst.copy_(src) (each byte read once and written once)."""
    src = torch.randn(n_bytes // 4, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return n_bytes / min(times)


def matmul_flops(n=2048, repeats=5):
    """fp32 FLOP/s of a large square matmul here: the compute ceiling for ΔW = up @ down."""
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def bench_ours(unet, files, repeats):
    from lora_lab.nodes.lora import patcher
    from lora_lab.nodes.model.handle import ModelHandle
    from lora_lab.nodes.lora.lora_formats import read_lora

    te = _tiny_te()
    base = ModelHandle("sd1", "epsilon", unet, None, (te,), (None,), source="bench")
    t_index = timed(lambda: patcher.state_for(base))
    raws = [read_lora(f) for f in files]
    a = base.with_patches((patcher.LoraPatch("a", raws[0], 1.0, 1.0),))
    b = base.with_patches((patcher.LoraPatch("b", raws[1], 1.0, 1.0),))
    patcher.activate(a)  # warm-up: key matching is cached per file
    patcher.activate(b)
    patcher.restore(base)
    st = patcher.state_for(base)
    apply_t, apply_1, switch_t, restore_t, extra = [], [], [], [], 0
    for _ in range(repeats):
        apply_t.append(timed(lambda: patcher.activate(a)))
        extra = max(extra, sum(v.numel() * v.element_size() for v in st.originals.values()))
        switch_t.append(timed(lambda: patcher.activate(b)))
        restore_t.append(timed(lambda: patcher.restore(base)))
        apply_1.append(_one_worker(lambda: timed(lambda: patcher.activate(a))))  # interleaved: same conditions
        patcher.restore(base)
    return dict(index=t_index, apply=statistics.median(apply_t), switch=statistics.median(switch_t),
                restore=statistics.median(restore_t), extra_bytes=extra, apply_1=statistics.median(apply_1))


def _one_worker(fn):
    """fn() with the fp16/bf16 CPU blocks on the calling thread (chain_threads' workers off)."""
    from lora_lab.nodes.lora import chain_threads

    real = chain_threads.default_workers
    chain_threads.default_workers = lambda: 1
    try:
        return fn()
    finally:
        chain_threads.default_workers = real


def _tiny_te():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=1))


def bench_diffusers(unet, sds, repeats):
    """load_lora_weights + fuse_lora; switch = unfuse + unload + load + fuse; restore = unfuse + unload."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from lora_lab.nodes.sampling.prompt import load_tokenizer

    tok = load_tokenizer("clip_l")
    assert isinstance(tok, CLIPTokenizer)
    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=_tiny_te(), tokenizer=tok, unet=unet,
                                   scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)

    def load_fuse(sd):
        pipe.load_lora_weights(copy.copy(sd), adapter_name="x")
        pipe.fuse_lora(components=["unet"], lora_scale=1.0)

    def unfuse_unload():
        pipe.unfuse_lora(components=["unet"])
        pipe.unload_lora_weights()

    apply_t, switch_t, restore_t = [], [], []
    for _ in range(repeats):
        apply_t.append(timed(lambda: load_fuse(sds[0])))
        switch_t.append(timed(lambda: (unfuse_unload(), load_fuse(sds[1]))))
        restore_t.append(timed(unfuse_unload))
    return dict(apply=statistics.median(apply_t), switch=statistics.median(switch_t),
                restore=statistics.median(restore_t))


def bench_stack_ours(unet, files, repeats):
    """Apply time of the whole stack (every file at strength 1) on the untouched base."""
    from lora_lab.nodes.lora import patcher
    from lora_lab.nodes.lora.lora_formats import read_lora
    from lora_lab.nodes.model.handle import ModelHandle

    base = ModelHandle("sd1", "epsilon", unet, None, (_tiny_te(),), (None,), source="bench")
    stack = base.with_patches(tuple(patcher.LoraPatch(f"l{i}", read_lora(f), 1.0, 1.0) for i, f in enumerate(files)))
    patcher.activate(stack)  # warm-up (key matching, buffers)
    patcher.restore(base)
    times = []
    for _ in range(repeats):
        times.append(timed(lambda: patcher.activate(stack)))
        patcher.restore(base)
    patcher.release(base)
    return statistics.median(times)


def bench_stack_diffusers(unet, sds, repeats):
    """n adapters loaded, set_adapters (weights 1), fuse_lora; then unfuse + unload (not timed)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline

    from lora_lab.nodes.sampling.prompt import load_tokenizer

    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=_tiny_te(), tokenizer=load_tokenizer("clip_l"), unet=unet,
                                   scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    names = [f"x{i}" for i in range(len(sds))]

    def load_fuse():
        for n, sd in zip(names, sds):
            pipe.load_lora_weights(copy.copy(sd), adapter_name=n)
        pipe.set_adapters(names, [1.0] * len(names))
        pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=names)

    times = []
    for _ in range(repeats):
        times.append(timed(load_fuse))
        pipe.unfuse_lora(components=["unet"])
        pipe.unload_lora_weights()
    return statistics.median(times)


def have_peft() -> bool:
    """diffusers' LoRA loading needs peft (ComfyUI's venv may lack it: then no diffusers columns)."""
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def comfy_modules():
    """(comfy.model_patcher, comfy.lora) when COMFYUI_DIR names a ComfyUI that imports here, else None."""
    import importlib
    import sys

    root = os.environ.get("COMFYUI_DIR")
    if not root:
        return None
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        if "comfy.model_management" not in sys.modules:
            importlib.import_module("comfy.cli_args").args.cpu = DEVICE.type == "cpu"
        return importlib.import_module("comfy.model_patcher"), importlib.import_module("comfy.lora")
    except (ImportError, RuntimeError, OSError, AttributeError) as e:
        raise SystemExit(f"COMFYUI_DIR={root!r} does not import in this Python: {e!r}") from None


def bench_comfy(unet, sds, repeats, comfy):
    """ComfyUI's patching of the same UNet: apply = patch_model with the first LoRA's patches,
    switch = unpatch + patch_model with the second's (a fresh clone, as a new LoraLoader gives),
    restore = unpatch_model. sds: one LoRA each, or (for a stack) all added to one patcher."""
    model_patcher, lora = comfy
    holder = torch.nn.Module()  # ModelPatcher sets .device on its model; the UNet's is a property
    holder.diffusion_model = unet
    key_map = {"lora_unet_" + n.replace(".", "_"): f"diffusion_model.{n}.weight" for n, _ in unet.named_modules()}
    base = model_patcher.ModelPatcher(holder, load_device=DEVICE, offload_device=DEVICE)

    def with_patches(group):
        mp = base.clone()
        for sd in group:
            mp.add_patches(lora.load_lora(sd, {k: v for k, v in key_map.items() if k + ".alpha" in sd}), 1.0)
        return mp

    a, b = with_patches(sds[:1]), with_patches(sds[1:2] or sds[:1])
    apply_t, switch_t, restore_t = [], [], []
    for _ in range(repeats):
        apply_t.append(timed(a.patch_model))
        switch_t.append(timed(lambda: (a.unpatch_model(), b.patch_model())))
        restore_t.append(timed(b.unpatch_model))
    return dict(apply=statistics.median(apply_t), switch=statistics.median(switch_t),
                restore=statistics.median(restore_t))


def bench_stack_comfy(unet, sds, repeats, comfy):
    """patch_model with every LoRA of the stack added to one patcher (strength 1), then unpatch."""
    model_patcher, lora = comfy
    holder = torch.nn.Module()
    holder.diffusion_model = unet
    key_map = {"lora_unet_" + n.replace(".", "_"): f"diffusion_model.{n}.weight" for n, _ in unet.named_modules()}
    mp = model_patcher.ModelPatcher(holder, load_device=DEVICE, offload_device=DEVICE)
    for sd in sds:
        mp.add_patches(lora.load_lora(sd, {k: v for k, v in key_map.items() if k + ".alpha" in sd}), 1.0)
    times = []
    for _ in range(repeats):
        times.append(timed(mp.patch_model))
        mp.unpatch_model()
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="attn,attn_ff")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--dtype", default="float32",
                    help="the UNet's storage dtype(s), comma-separated: float32, float16, bfloat16 (the math stays fp32)")
    ap.add_argument("--stacks", default="", help="stack sizes for the stack rows, e.g. 1,2,4,8 (empty: none)")
    ap.add_argument("--small", action="store_true", help="fifth-width UNet: a smoke run, not a measurement")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU run")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    dtypes = args.dtype.split(",")
    bad = [d for d in dtypes if d not in ("float32", "float16", "bfloat16")]
    if bad:
        raise SystemExit(f"--dtype: unknown {bad}; use float32, float16 or bfloat16")
    stacks = [int(n) for n in args.stacks.split(",") if n.strip()]
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    comfy = comfy_modules()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
          + (f"; ComfyUI at {os.environ['COMFYUI_DIR']}" if comfy else "; no ComfyUI rows (COMFYUI_DIR unset)"))
    bw = copy_bandwidth()
    flops = matmul_flops()
    print(f"copy bandwidth: {bw / 1e9:.2f} GB/s (bytes copied per second); "
          f"fp32 matmul: {flops / 1e9:.0f} GFLOP/s")
    rows, stack_rows = [], []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        t = time.perf_counter()
        unet = build_unet(dtype, DEVICE, small=args.small)
        print(f"SD 1.5 UNet built in memory ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M params, "
              f"{dtype_name}, {DEVICE}) in {time.perf_counter() - t:.1f}s")
        _case_rows(unet, args, dtype_name, bw, flops, rows, comfy)
        if stacks:
            _stack_rows(unet, stacks, args.repeats, dtype_name, bw, flops, stack_rows, comfy)
        del unet
        gc.collect()
    print()
    print("| case | touched | memory floor | compute floor | ours apply | ours switch | ours restore | "
          "diffusers load+fuse | diffusers switch | diffusers unfuse+unload | apply / memory floor | "
          "apply / max(floors) | apply / (memory + compute) | diffusers / ours (apply) | extra memory / touched | "
          "ComfyUI apply / switch / restore | ComfyUI / ours (apply / switch / restore) | "
          "ours apply, no worker threads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, touched, floor, cfloor, o, d, c in rows:
        cc = "– | –" if c is None else (
            f"{c['apply'] * 1e3:.0f} / {c['switch'] * 1e3:.0f} / {c['restore'] * 1e3:.1f} ms | "
            f"{c['apply'] / o['apply']:.1f}x / {c['switch'] / o['switch']:.1f}x / {c['restore'] / o['restore']:.1f}x")
        print(f"| {case} | {touched / 2**20:.0f} MiB | {floor * 1e3:.1f} ms | {cfloor * 1e3:.1f} ms | "
              f"{o['apply'] * 1e3:.1f} ms | {o['switch'] * 1e3:.1f} ms | {o['restore'] * 1e3:.2f} ms | "
              + ("– | – | – | " if d is None else
                 f"{d['apply'] * 1e3:.0f} ms | {d['switch'] * 1e3:.0f} ms | {d['restore'] * 1e3:.0f} ms | ")
              + f"{o['apply'] / floor:.2f}x | {o['apply'] / max(floor, cfloor):.2f}x | {o['apply'] / (floor + cfloor):.2f}x | "
              + ("– | " if d is None else f"{d['apply'] / o['apply']:.1f}x | ")
              + f"{o['extra_bytes'] / touched:.2f} | {cc} | "
              + f"{o['apply_1'] * 1e3:.1f} ms ({o['apply_1'] / max(floor, cfloor):.2f}x) |")
    if stack_rows:
        print()
        print("| dtype | stack | memory floor | compute floor | ours apply | diffusers load+fuse | "
              "apply / memory floor | apply / max(floors) | diffusers / ours | ComfyUI patch_model | ComfyUI / ours |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for dtype_name, n, floor, cfloor, ours, theirs, c in stack_rows:
            cc = "– | –" if c is None else f"{c * 1e3:.0f} ms | {c / ours:.1f}x"
            dd = ("–", "–") if theirs is None else (f"{theirs * 1e3:.0f} ms", f"{theirs / ours:.1f}x")
            print(f"| {dtype_name} | {n} | {floor * 1e3:.1f} ms | {cfloor * 1e3:.1f} ms | {ours * 1e3:.1f} ms | "
                  f"{dd[0]} | {ours / floor:.2f}x | {ours / max(floor, cfloor):.2f}x | {dd[1]} | {cc} |")
    if rows:
        print(f"\n(one-time key index for the model: {rows[0][4]['index'] * 1e3:.0f} ms)")


def _case_rows(unet, args, dtype_name, bw, flops, rows, comfy=None):
    from safetensors.torch import save_file

    cases = {"attn": ATTN, "attn_ff": ATTN + FF}
    with tempfile.TemporaryDirectory() as tmp:
        for case in [c for c in args.cases.split(",") if c]:
            suffixes = cases[case]
            sds = [kohya_lora(unet, suffixes, seed=s) for s in (1, 2)]
            files = []
            for i, sd in enumerate(sds):
                f = Path(tmp) / f"{case}_{i}.safetensors"
                save_file(sd, f)
                files.append(f)
            touched = touched_bytes(unet, suffixes)
            floor = touched / bw  # read + write each touched byte once == one copy of them
            # ΔW = up @ down costs 2·rank FLOPs per weight element (rank 32)
            compute_floor = 2 * 32 * touched_elements(unet, suffixes) / flops
            ours = bench_ours(unet, files, args.repeats)
            gc.collect()
            theirs = bench_diffusers(unet, sds, args.repeats) if have_peft() else None
            gc.collect()
            c = None if comfy is None else bench_comfy(unet, sds, args.repeats, comfy)
            gc.collect()
            rows.append((f"{case} {dtype_name}", touched, floor, compute_floor, ours, theirs, c))


def _stack_rows(unet, stacks, repeats, dtype_name, bw, flops, out, comfy=None):
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        sds = [kohya_lora(unet, ATTN, seed=10 + i) for i in range(max(stacks))]
        files = []
        for i, sd in enumerate(sds):
            f = Path(tmp) / f"stack_{i}.safetensors"
            save_file(sd, f)
            files.append(f)
        floor = touched_bytes(unet, ATTN) / bw
        for n in stacks:
            compute_floor = 2 * 32 * n * touched_elements(unet, ATTN) / flops  # one rank-32n product
            ours = bench_stack_ours(unet, files[:n], repeats)
            gc.collect()
            theirs = bench_stack_diffusers(unet, sds[:n], repeats) if have_peft() else None
            gc.collect()
            c = None if comfy is None else bench_stack_comfy(unet, sds[:n], repeats, comfy)
            gc.collect()
            out.append((dtype_name, n, floor, compute_floor, ours, theirs, c))


if __name__ == "__main__":
    main()
