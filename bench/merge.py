"""Benchmark: Merge to Checkpoint on a full-size SD 1.5 fp16 checkpoint, against plain file I/O.

One run:
  1. writes a full-size SD 1.5 fp16 single-file checkpoint with random weights to a temp
     folder (the keys and shapes of shared/reference/sd15_checkpoint_keys.json when present,
     else those of the SD 1.5 configuration built on the meta device), and a rank-32 kohya LoRA
     (fp16) on every transformer-block layer of the UNet and every text-encoder layer;
  2. baseline: a plain read + write of the same checkpoint (16 MiB chunks, fsync at the end),
     in a fresh Python process; for reference also the kernel's own copy (copy_file_range,
     Linux), which the merge uses for the tensors the LoRA leaves unchanged;
  3. merge: `lora-lab merge CKPT --lora LORA -o OUT` in a fresh Python process (it reads the
     header, plans the LoRA, then streams the file tensor by tensor; the model is never loaded);
  4. a spot check that two merged tensors equal W0 + scale · up @ down rounded to fp16.
Each child reports its own wall time and CPU time (imports excluded; the merge child's
import time is printed apart) and peak RSS (VmHWM) minus its RSS right after `import torch`
(the "Python + torch" baseline). The page cache is warm for
both (the checkpoint was just written); both write and fsync a full file. Timed runs
alternate baseline / merge and the best of --repeats is reported.

Goal (issue 5): merge ≤ 1.5× the read + write time; peak RSS ≤ 0.3× the checkpoint size above
the Python + torch baseline.

Run:  python bench/merge.py [--repeats 2] [--rank 32] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "sd15_checkpoint_keys.json"
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
)


# --------------------------------------------------------------------------------- children
def _status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since this process started; unlike ru_maxrss it is not
    inherited from the parent across fork + exec) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(argv: list[str]) -> None:
    """Runs in a fresh interpreter: prints one JSON line with seconds and peak RSS above torch."""
    import torch  # noqa: F401  (the baseline includes torch)

    base_kib = _status_kib("VmRSS")
    what = argv[0]
    t_imports = time.perf_counter()
    if what == "merge":  # what `lora-lab merge` imports, timed apart: a fixed cost, not per byte
        import diffusers  # noqa: F401
        import transformers  # noqa: F401

        from lora_lab.nodes.cli import main as cli  # noqa: F401
        from lora_lab.nodes.merge import merge
    imports = time.perf_counter() - t_imports
    t0, c0 = time.perf_counter(), os.times()
    if what == "kcopy":  # the OS's own copy (what the merge uses for unchanged tensors)
        size = os.path.getsize(argv[1])
        with open(argv[1], "rb", buffering=0) as fi, open(argv[2], "wb", buffering=0) as fo:
            done = 0
            while done < size:
                done += os.copy_file_range(fi.fileno(), fo.fileno(), size - done, done)
            os.fsync(fo.fileno())
        code = 0
    elif what == "copy":
        src, dst = argv[1], argv[2]
        buf = bytearray(16 << 20)
        view = memoryview(buf)
        with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(view[:n])
            os.fsync(fo.fileno())
        code = 0
    else:
        code = cli.main(["merge", argv[1], "--lora", argv[2], "-o", argv[3], "-q", "--overwrite"])
    seconds = time.perf_counter() - t0
    c1 = os.times()
    peak_kib = _status_kib("VmHWM")
    print(json.dumps({"code": code, "seconds": seconds, "imports": imports,
                      "cpu": c1.user - c0.user + c1.system - c0.system,
                      "peak_above_torch": (peak_kib - base_kib) * 1024, "torch_baseline": base_kib * 1024}))


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"child {args[0]} failed:\n{out.stdout}\n{out.stderr}")
    res = json.loads(lines[-1])
    if res["code"] != 0:
        raise SystemExit(f"child {args[0]} returned {res['code']}:\n{out.stderr}")
    return res


# ------------------------------------------------------------------------------- fixtures
def checkpoint_shapes() -> dict:
    """{key: (shape, dtype name)} of a full-size SD 1.5 single file."""
    if REFERENCE.exists():
        return {k: (tuple(v[0]), v[1]) for k, v in json.loads(REFERENCE.read_text()).items()}
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_lab.nodes.model.checkpoint_save import ldm_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4)
        te = CLIPTextModel(CLIPTextConfig())
    sd = ldm_state_dict("sd1", unet, vae, (te,))
    return {k: (tuple(v.shape), "I64" if v.dtype == torch.int64 else "F16") for k, v in sd.items()}


def write_checkpoint(path: Path, shapes: dict) -> int:
    import torch

    from lora_lab.nodes.io.safetensors_stream import Item, write_stream

    g = torch.Generator().manual_seed(0)

    def make(shape, dtype):
        if dtype == torch.int64:
            return torch.arange(math.prod(shape), dtype=dtype).reshape(shape)
        return (torch.randn(shape, generator=g) * 0.02).to(dtype)

    items = []
    for k, (shape, dt) in shapes.items():
        dtype = torch.int64 if dt == "I64" else torch.float16
        items.append(Item(k, dtype, shape, lambda s=shape, d=dtype: make(s, d)))
    write_stream(path, items, {"modelspec.title": "random SD 1.5 (bench)"})
    return path.stat().st_size


def write_lora(ckpt: Path, path: Path, rank: int) -> tuple[int, int]:
    import torch
    from safetensors.torch import save_file

    from lora_lab.nodes.merge.merge import skeleton_handle

    h = skeleton_handle(ckpt)
    g = torch.Generator().manual_seed(1)
    sd = {}
    layers = [("lora_unet_", n, m) for n, m in h.unet.named_modules()
              if ".attentions." in n and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    layers += [("lora_te_", "text_model." + n.removeprefix("text_model."), m)
               for n, m in h.text_encoders[0].named_modules()
               if isinstance(m, torch.nn.Linear) and (".self_attn." in n or ".mlp." in n)]
    for prefix, name, mod in layers:
        base = prefix + name.replace(".", "_")
        w = mod.weight
        tail = (1, 1) if w.ndim == 4 else ()
        sd[base + ".lora_down.weight"] = (torch.randn(rank, w.shape[1], *tail, generator=g) * 0.02).half()
        sd[base + ".lora_up.weight"] = (torch.randn(w.shape[0], rank, *tail, generator=g) * 0.02).half()
        sd[base + ".alpha"] = torch.tensor(rank / 2.0)
    save_file(sd, path, metadata={"ss_network_dim": str(rank)})
    return path.stat().st_size, len(layers)


def spot_check(ckpt: Path, lora: Path, merged: Path) -> float:
    """Largest |merged - fp16(W0 + scale · up @ down)| over two patched tensors (expect 0)."""
    from safetensors import safe_open

    keys = [("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"),
            ("cond_stage_model.transformer.text_model.encoder.layers.5.mlp.fc1.weight",
             "lora_te_text_model_encoder_layers_5_mlp_fc1")]
    worst = 0.0
    with safe_open(str(ckpt), "pt") as a, safe_open(str(lora), "pt") as lo, safe_open(str(merged), "pt") as m:
        for ck, ln in keys:
            down, up = lo.get_tensor(ln + ".lora_down.weight").float(), lo.get_tensor(ln + ".lora_up.weight").float()
            scale = float(lo.get_tensor(ln + ".alpha")) / down.shape[0]
            want = (a.get_tensor(ck).float() + scale * (up @ down)).half()
            worst = max(worst, float((m.get_tensor(ck).float() - want.float()).abs().max()))
    return worst


# ----------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--keep", help="use this folder (and keep the files) instead of a temp folder")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lora-lab-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        ckpt, lora = root / "sd15-random-fp16.safetensors", root / "lora.safetensors"
        t = time.perf_counter()
        size = write_checkpoint(ckpt, checkpoint_shapes())
        lora_size, n_layers = write_lora(ckpt, lora, args.rank)
        print(f"checkpoint {size / 1e9:.2f} GB, LoRA rank {args.rank} on {n_layers} layers ({lora_size / 1e6:.0f} MB);"
              f" written in {time.perf_counter() - t:.1f} s")
        copies, kcopies, merges = [], [], []
        load = os.getloadavg()[0]
        for _ in range(args.repeats):
            copies.append(run_child("copy", str(ckpt), str(root / "copy.safetensors")))
            (root / "copy.safetensors").unlink()
            if hasattr(os, "copy_file_range"):
                kcopies.append(run_child("kcopy", str(ckpt), str(root / "copy.safetensors")))
                (root / "copy.safetensors").unlink()
            (root / "merged.safetensors").unlink(missing_ok=True)  # no old file to replace (unlinking 2 GB takes time)
            merges.append(run_child("merge", str(ckpt), str(lora), str(root / "merged.safetensors")))
        copy = min(copies, key=lambda r: r["seconds"])
        best = min(merges, key=lambda r: r["seconds"])
        peak = max(r["peak_above_torch"] for r in merges)
        err = spot_check(ckpt, lora, root / "merged.safetensors")
        mb = 1e6
        print()
        print("| step | wall time (s) | vs read + write | CPU time (s) | peak RSS above Python + torch (MB) "
              "| vs checkpoint size |")
        print("| --- | --- | --- | --- | --- | --- |")
        rows = [("plain read + write of the checkpoint", copy)]
        if kcopies:
            rows.append(("kernel copy (copy_file_range) of the checkpoint", min(kcopies, key=lambda r: r["seconds"])))
        rows.append(("lora-lab merge (streamed)", dict(best, peak_above_torch=peak)))
        for label, r in rows:
            print(f"| {label} | {r['seconds']:.2f} | {r['seconds'] / copy['seconds']:.2f}x | {r['cpu']:.2f} | "
                  f"{r['peak_above_torch'] / mb:.0f} | {r['peak_above_torch'] / size:.3f}x |")
        print()
        print(f"all runs (s): read + write {[round(r['seconds'], 2) for r in copies]}, "
              f"merge {[round(r['seconds'], 2) for r in merges]}; importing diffusers + transformers + lora_lab "
              f"before the merge: {best['imports']:.1f} s (not in the merge time; its memory is in the peak)")
        print(f"Python + torch baseline {best['torch_baseline'] / mb:.0f} MB; spot check max |error| = {err:g}; "
              f"load average (1 min) before / after: {load:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        ok_t, ok_m = best["seconds"] <= 1.5 * copy["seconds"], peak <= 0.3 * size
        print(f"goal: time <= 1.5x read + write: {'met' if ok_t else 'NOT met'}; "
              f"peak RSS <= 0.3x checkpoint: {'met' if ok_m else 'NOT met'}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
