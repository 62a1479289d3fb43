"""Benchmark: seconds per sampling step of our Sample against diffusers' StableDiffusionPipeline.

Side by side in one run, interleaved, on the same modules (one UNet, VAE and text encoder
shared by both sides), the same Euler sampler with a normal/linspace schedule, size, batch
and CFG scale:
  ours        - txt2img.generate (cond and uncond in one UNet call per step),
  ours 2-call - the same with batch_cfg=False (cond and uncond as two calls: the old path),
  diffusers   - StableDiffusionPipeline(..., num_inference_steps=n, guidance_scale=cfg).
Per-step time is (t(long) - t(short)) / (long - short) steps, so prompt encoding, VAE decode
and set-up cancel out. Peak memory: the largest resident-set growth over the run's start,
sampled every 5 ms (CPU), or torch.cuda.max_memory_allocated (GPU).

The model is the demo checkpoint (the SD 1.5 block layout at tiny widths) unless --checkpoint
names a real one. Full-size models belong on a GPU (--device cuda).

Run:  python bench/sample.py [--repeats 5] [--short 2] [--long 8] [--size 256] [--batch 1]
                             [--checkpoint PATH] [--device cpu|cuda]
Goal: ours / diffusers <= 1.0.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time


def _rss() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory growth during a `with` block (CPU RSS polled, or CUDA allocator peak)."""

    def __init__(self, device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = _rss()
        self._stop = threading.Event()
        self._max = self._base

        def poll():
            while not self._stop.wait(0.005):
                self._max = max(self._max, _rss())

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss()) - self._base
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--long", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from lora_lab.nodes.model.checkpoint import load_checkpoint
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

    device = torch.device(args.device)
    if args.checkpoint is None:
        import tempfile

        from lora_lab.nodes.demo.demo import ensure_demo_checkpoint

        path = ensure_demo_checkpoint(tempfile.mkdtemp(prefix="lora-lab-bench-"))
    else:
        path = args.checkpoint
    h = load_checkpoint(path, device=device)
    if h.family == "sdxl":
        raise SystemExit("bench/sample.py compares with StableDiffusionPipeline: use an SD 1.x / 2.x checkpoint")
    # ComfyUI's "normal" schedule over the model's sigma range = diffusers' Euler with linspace spacing
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, timestep_spacing="linspace",
                                   steps_offset=1, prediction_type=h.prediction_type)
    pipe = StableDiffusionPipeline(vae=h.vae, text_encoder=h.text_encoders[0], tokenizer=h.tokenizers[0], unet=h.unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = "a watercolor fox in the snow", "blurry"

    def ours(steps, batch_cfg=True):
        s = SampleSettings(prompt, negative, seed=1, steps=steps, cfg=args.cfg, sampler_name="euler",
                           scheduler="normal", width=args.size, height=args.size, batch_size=args.batch,
                           batch_cfg=batch_cfg)
        return lambda: generate(h, s)

    def theirs(steps):
        g = torch.Generator("cpu").manual_seed(1)
        return lambda: pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=args.cfg,
                            width=args.size, height=args.size, num_images_per_prompt=args.batch, generator=g,
                            output_type="pt")

    sides = {"ours": lambda n: ours(n), "ours 2-call": lambda n: ours(n, False), "diffusers": theirs}
    with torch.inference_mode():
        for make in sides.values():  # warm-up: allocator, kernels, caches
            make(args.short)()
        per_step = {k: [] for k in sides}
        peak = {k: [] for k in sides}
        for _ in range(args.repeats):
            for name, make in sides.items():
                times = {}
                for n in (args.short, args.long):
                    fn = make(n)
                    with PeakMemory(device) as pm:
                        t = time.perf_counter()
                        fn()
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        times[n] = time.perf_counter() - t
                    if n == args.long:
                        peak[name].append(pm.peak)
                per_step[name].append((times[args.long] - times[args.short]) / (args.long - args.short))

    import os

    print(f"{path} ({h.family}), {args.size}x{args.size}, batch {args.batch}, cfg {args.cfg}, euler/normal, "
          f"steps {args.short} vs {args.long}, {args.repeats} interleaved repeats, {device}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    ref = statistics.median(per_step["diffusers"])
    print(f"{'':14}{'s/step (median)':>16}{'best':>10}{'vs diffusers':>14}{'peak MB (median)':>18}")
    for name in sides:
        med = statistics.median(per_step[name])
        print(f"{name:14}{med:16.4f}{min(per_step[name]):10.4f}{med / ref:13.2f}x"
              f"{statistics.median(peak[name]) / 2**20:18.1f}")


if __name__ == "__main__":
    main()
