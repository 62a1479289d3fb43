"""Benchmark: LoRA Lab's trainer against the diffusers + PEFT recipe of diffusers'
examples/text_to_image/train_text_to_image_lora.py, in one run, on the same UNet.

Both sides train a LoRA on the UNet attention layers (to_q, to_k, to_v, to_out.0 of attn1 and
attn2; the example's target_modules) with the same rank (alpha = rank), batch size,
resolution, AdamW (lr 1e-4, betas (0.9, 0.999), weight decay 1e-2), gradient clipping at 1.0
and mixed precision, on the same images and captions:

  ours              lora_lab.nodes.train.train_loop.train_lora (latents and text embeddings cached
                    before the loop, LoRA as forward hooks on the frozen layers)
  diffusers+peft    the example's loop: unet.add_adapter(LoraConfig(r, lora_alpha=r,
                    init_lora_weights="gaussian", ...)), VAE encode + text encoder every step,
                    DDPMScheduler.add_noise, MSE, accelerate's prepare/accumulate/backward/clip
  diffusers+peft (UNet only)   the same with latents and text embeddings computed once before
                    the loop: the UNet step alone, what our loop does per step

Each side runs in its own process (peak memory is per process): steps/s over the timed steps
after the warm-up steps, and peak memory (CUDA: max_memory_allocated over the whole run; CPU:
the process's peak RSS, and its rise over the RSS once the models are built).

Models are built in memory with random weights (nothing is downloaded):
  --preset sd15   the real SD 1.5 UNet, VAE and CLIP-L configs (a GPU run), 512 px
  --preset cpu    the SD 1.5 block layout at reduced widths (UNet 64/128/256/256, cross-attention
                  768, CLIP-L 4 layers, a small VAE), 256 px: runnable on a laptop CPU

Run:  python bench/train.py [--preset cpu|sd15] [--rank 16] [--batch 1] [--steps 8] [--warmup 2]
                            [--threads N] [--repeats R]   (R > 1: sides interleaved, best speed kept)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {
    "sd15": dict(unet=[320, 640, 1280, 1280], heads=8, te_layers=12, vae=[128, 256, 512, 512], resolution=512),
    "cpu": dict(unet=[64, 128, 256, 256], heads=8, te_layers=4, vae=[32, 64, 64, 64], resolution=256),
}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(preset: str, device, dtype):
    """(unet, vae, text_encoder) with random weights, frozen, on `device` in `dtype`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    p = PRESETS[preset]
    unet_cfg = dict(sample_size=p["resolution"] // 8, in_channels=4, out_channels=4,
                    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=p["unet"],
                    layers_per_block=2, cross_attention_dim=768, attention_head_dim=p["heads"])
    vae_cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=p["vae"], layers_per_block=2,
                   latent_channels=4, sample_size=p["resolution"])
    te_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=p["te_layers"],
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    g = torch.Generator().manual_seed(0)
    out = []
    for make in (lambda: UNet2DConditionModel(**unet_cfg), lambda: AutoencoderKL(**vae_cfg), lambda: CLIPTextModel(te_cfg)):
        with torch.device("meta"):
            m = make()
        m = m.to_empty(device="cpu")
        with torch.no_grad():
            for name, t in list(m.named_parameters()) + list(m.named_buffers()):
                if "position_ids" in name:
                    t.copy_(torch.arange(t.shape[-1]).expand_as(t))
                elif t.is_floating_point():
                    t.normal_(0, 0.02, generator=g) if t.ndim > 1 else t.fill_(1.0 if "norm" in name else 0.0)
        out.append(m.to(device, dtype).eval().requires_grad_(False))
    return out


def make_images(folder: Path, n: int, resolution: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        arr = (rng.random((resolution, resolution, 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a photo of sks, sample {i}")


class _Clock:
    def __init__(self):
        self.times = []

    def update(self, n=1):
        self.times.append(time.perf_counter())


def run_ours(args, device, dtype, data: Path) -> dict:
    from lora_lab.nodes.model.checkpoint import tokenizers_for
    from lora_lab.nodes.model.handle import ModelHandle
    from lora_lab.nodes.io.paths import standalone_dirs
    from lora_lab.nodes.train.train_config import TrainConfig
    from lora_lab.nodes.train.train_loop import train_lora

    unet, vae, te = build(args.preset, device, dtype)
    handle = ModelHandle("sd1", "epsilon", unet, vae, (te,), tokenizers_for("sd1"), source="bench")
    base_rss = _rss_mib()
    cfg = TrainConfig(str(data), "bench", steps=args.warmup + args.steps, rank=args.rank, alpha=float(args.rank),
                      learning_rate=1e-4, batch_size=args.batch, resolution=args.resolution, target="attention",
                      mixed_precision=args.mixed_precision, max_grad_norm=1.0, save_dtype="fp32")
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp, standalone_dirs(Path(tmp) / "models", Path(tmp) / "out"):
        train_lora(handle, cfg, progress=clock)
    return _result(clock.times, args, device, base_rss)


def run_diffusers(args, device, dtype, data: Path, unet_only: bool) -> dict:
    import numpy as np
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from PIL import Image

    from lora_lab.nodes.model.checkpoint import tokenizers_for

    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=device.type == "cpu")
    unet, vae, te = build(args.preset, device, dtype)
    base_rss = _rss_mib()
    tok = tokenizers_for("sd1")[0]
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    for p in unet.parameters():  # the example's cast_training_params: LoRA weights in fp32
        if p.requires_grad:
            p.data = p.data.float()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    files = sorted(data.glob("*.png"))
    pixels = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
              for f in files]
    ids = [tok(f.with_suffix(".txt").read_text(), padding="max_length", max_length=77, truncation=True,
               return_tensors="pt").input_ids[0] for f in files]
    cached = None
    if unet_only:
        with torch.no_grad():
            cached = [(vae.encode(px[None].to(device, dtype)).latent_dist.sample() * 0.18215,
                       te(i[None].to(device), return_dict=False)[0]) for px, i in zip(pixels, ids)]
    unet, opt = accelerator.prepare(unet, opt)  # as the example: autocast, scaler, device placement
    times = []
    unet.train()
    for step in range(args.warmup + args.steps):
        pick = [(step * args.batch + k) % len(files) for k in range(args.batch)]
        with accelerator.accumulate(unet):
            if cached is None:
                with torch.no_grad():
                    latents = vae.encode(torch.stack([pixels[i] for i in pick]).to(device, dtype)).latent_dist.sample()
                    latents = latents * 0.18215
                    ehs = te(torch.stack([ids[i] for i in pick]).to(device), return_dict=False)[0]
            else:
                latents = torch.cat([cached[i][0] for i in pick])
                ehs = torch.cat([cached[i][1] for i in pick])
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (latents.shape[0],), device=device).long()
            noisy = sched.add_noise(latents, noise, t)
            pred = unet(noisy, t, ehs, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return _result(times, args, device, base_rss)


def _result(times, args, device, base_rss) -> dict:
    timed = times[args.warmup - 1:]  # from the end of the last warm-up step
    sps = (len(timed) - 1) / (timed[-1] - timed[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"steps_per_s": sps, "peak_rss_mib": peak, "rss_rise_mib": peak - base_rss}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="sd15" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=0, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="",
                    help="default: bf16 on CUDA, no on the CPU")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=1, help="run the sides this many times, interleaved; best speed")
    ap.add_argument("--side", choices=("ours", "diffusers", "diffusers_unet"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.warmup = max(1, args.warmup)
    args.resolution = args.resolution or PRESETS[args.preset]["resolution"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.mixed_precision = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    dtype = torch.float32 if args.mixed_precision == "no" else (torch.bfloat16 if args.mixed_precision == "bf16" else torch.float16)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side:  # one side, in this process
        torch.manual_seed(0)
        data = Path(args.data)
        res = run_ours(args, device, dtype, data) if args.side == "ours" else \
            run_diffusers(args, device, dtype, data, unet_only=args.side == "diffusers_unet")
        print("RESULT " + json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), args.images, args.resolution)
        rows: dict = {}
        for _ in range(max(1, args.repeats)):
            for side in ("ours", "diffusers", "diffusers_unet"):
                cmd = [sys.executable, __file__, "--side", side, "--data", tmp] + sys.argv[1:]
                out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
                line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
                if out.returncode or not line:
                    raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
                r = json.loads(line[-1][7:])
                if side not in rows or r["steps_per_s"] > rows[side]["steps_per_s"]:
                    rows[side] = r
    print(f"preset {args.preset}, {device.type}, {args.threads or torch.get_num_threads()} threads, rank {args.rank}, batch {args.batch}, "
          f"{args.resolution} px, mixed precision {args.mixed_precision}, {args.steps} timed steps after {args.warmup}")
    names = {"ours": "LoRA Lab trainer", "diffusers": "diffusers+PEFT recipe",
             "diffusers_unet": "diffusers+PEFT (UNet step only)"}
    mem = "cuda_peak_mib" if device.type == "cuda" else "peak_rss_mib"
    print(f"{'':34} {'steps/s':>9} {'peak MiB':>10} {'rise MiB':>10}")
    for side, r in rows.items():
        print(f"{names[side]:34} {r['steps_per_s']:9.3f} {r[mem]:10.0f} {r['rss_rise_mib']:10.0f}")
    o, d, u = rows["ours"], rows["diffusers"], rows["diffusers_unet"]
    print(f"ours / recipe: {o['steps_per_s'] / d['steps_per_s']:.2f}x speed, {o[mem] / d[mem]:.2f}x memory; "
          f"ours / UNet-only recipe: {o['steps_per_s'] / u['steps_per_s']:.2f}x speed, {o[mem] / u[mem]:.2f}x memory")


if __name__ == "__main__":
    main()
