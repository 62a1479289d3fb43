"""Benchmark: seconds per sampling step of our Sample against diffusers' StableDiffusionPipeline
(and ComfyUI's KSampler when COMFYUI_DIR is set), with each side's peak memory.

Side by side in one run, on the same checkpoint, the same Euler sampler with a normal/linspace
schedule, size, batch and CFG scale:
  ours        - txt2img.generate (cond and uncond in one UNet call per step),
  ours 2-call - the same with batch_cfg=False (cond and uncond as two calls: the old path),
  diffusers   - StableDiffusionPipeline(..., num_inference_steps=n, guidance_scale=cfg) on our
                loaded UNet, VAE and text encoder,
  comfyui     - ComfyUI's nodes.common_ksampler (its KSampler node) on its own load of the
                same file (comfy.sd.load_checkpoint_guess_config); only with COMFYUI_DIR.
Per-step time is (t(long) - t(short)) / (long - short) steps, so prompt encoding, VAE decode
and set-up cancel out (medians of --repeats, after one warm-up).

Each side runs in its own fresh process (this script with --side NAME), so peaks don't mix:
"RSS loaded" is the process's RSS right after imports + model load, "load peak" its peak RSS
(VmHWM) up to then, "peak" its peak RSS while sampling (VmHWM, reset after load through
/proc/self/clear_refs), "+" the increment of that peak over the loaded RSS; on CUDA also
torch.cuda.max_memory_allocated and its increment. (Not getrusage's ru_maxrss: Linux carries
it over an exec from the forked parent.)
Sides run one after the other (not interleaved): the load average is printed before and after.

The model is the demo checkpoint (the SD 1.5 block layout at tiny widths) unless --checkpoint
names a real one. With COMFYUI_DIR (and an interpreter ComfyUI imports in, e.g.
/work/comfy/.venv/bin/python) a full-size random-weight SD 1.5 single file is written once
(--full-size-cache, ~2 GB fp16) and used by every side, since ComfyUI's model detection does
not know the demo's tiny widths.

Run:  python bench/sample.py [--repeats 3] [--short 1] [--long 3] [--size 256] [--batch 1]
                             [--checkpoint PATH] [--device cpu|cuda]
      COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python bench/sample.py   (--size 64 by default)
Goal: ours / diffusers <= 1.0 (and ours / comfyui).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT, NEGATIVE = "a watercolor fox in the snow", "blurry"
log = logging.getLogger("bench.sample")
SIDES = ("ours", "ours 2-call", "diffusers", "comfyui")


def _timer(a, device):
    """timed(run): one warm-up, then --repeats of run(short) and run(long); per-step seconds."""
    import torch

    def timed(run):
        run(a.short)  # warm-up: allocator, kernels, caches
        per_step = []
        for _ in range(a.repeats):
            times = {}
            for n in (a.short, a.long):
                t = time.perf_counter()
                run(n)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[n] = time.perf_counter() - t
            per_step.append((times[a.long] - times[a.short]) / (a.long - a.short))
        return per_step

    return timed


def run_side(a) -> dict:
    """One side in this (fresh) process: load, time, measure; the result as a dict."""
    import torch
    from sample_sides import Memory, comfy_side

    device = torch.device(a.device)
    timed = _timer(a, device)
    if a.side == "comfyui":
        per_step, mem = comfy_side(a, a.checkpoint, device, timed)
        return {"per_step": per_step, "mem": mem, "family": "sd1", "threads": torch.get_num_threads()}
    from lora_lab.nodes.model.checkpoint import load_checkpoint
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

    h = load_checkpoint(a.checkpoint, device=device)
    if h.family == "sdxl":
        raise SystemExit("bench/sample.py compares with StableDiffusionPipeline: use an SD 1.x / 2.x checkpoint")
    if a.side == "diffusers":
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        # ComfyUI's "normal" schedule over the model's sigma range = diffusers' Euler with linspace spacing
        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, timestep_spacing="linspace",
                                       steps_offset=1, prediction_type=h.prediction_type)
        pipe = StableDiffusionPipeline(vae=h.vae, text_encoder=h.text_encoders[0], tokenizer=h.tokenizers[0],
                                       unet=h.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def run(steps):
            g = torch.Generator("cpu").manual_seed(1)
            return pipe(a.prompt, negative_prompt=a.negative, num_inference_steps=steps, guidance_scale=a.cfg,
                        width=a.size, height=a.size, num_images_per_prompt=a.batch, generator=g, output_type="pt")
    else:
        def run(steps):
            s = SampleSettings(a.prompt, a.negative, seed=1, steps=steps, cfg=a.cfg, sampler_name="euler",
                               scheduler="normal", width=a.size, height=a.size, batch_size=a.batch,
                               batch_cfg=a.side == "ours")
            return generate(h, s)
    mem = Memory(device)
    mem.loaded()
    with torch.inference_mode():
        per_step = timed(run)
    return {"per_step": per_step, "mem": mem.report(), "family": h.family, "threads": torch.get_num_threads()}


def _child(a, side: str, checkpoint: str) -> dict:
    """Run one side in a fresh interpreter (the same one); its JSON result."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    bench = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bench, env.get("PYTHONPATH", "")) if p)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--checkpoint", checkpoint,
           "--result", out, "--repeats", str(a.repeats), "--short", str(a.short), "--long", str(a.long),
           "--size", str(a.size), "--batch", str(a.batch), "--cfg", str(a.cfg), "--device", a.device]
    try:
        subprocess.run(cmd, env=env, check=True)
        return json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)


def _checkpoint(a, with_comfy: bool) -> str:
    if a.checkpoint is not None:
        return a.checkpoint
    if with_comfy:
        from sample_sides import write_full_size_sd15

        path = Path(a.full_size_cache)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            write_full_size_sd15(path)
            log.warning("wrote %s in %.0f s", path, time.perf_counter() - t)
        return str(path)
    from lora_lab.nodes.demo.demo import ensure_demo_checkpoint

    return str(ensure_demo_checkpoint(Path(a.full_size_cache).parent))  # copied once, checksum checked


def _mb(n) -> str:
    return f"{n / 2**20:.0f}"


def report(a, path: str, results: dict, loads) -> None:
    any_r = next(iter(results.values()))
    print(f"{path} ({any_r['family']}), {a.size}x{a.size}, batch {a.batch}, cfg {a.cfg}, euler/normal, "
          f"steps {a.short} vs {a.long}, {a.repeats} repeats per side (each side a fresh process, in turn), "
          f"{a.device}, torch threads {any_r['threads']}, {sys.executable}, "
          f"load average before {loads[0]:.2f}, after {loads[1]:.2f}")
    cuda = a.device.startswith("cuda")
    ref = {k: statistics.median(results[k]["per_step"]) for k in ("diffusers", "comfyui") if k in results}
    head = f"{'':12}{'s/step med':>11}{'best':>8}{'/diffusers':>11}"
    head += f"{'/comfyui':>9}" if "comfyui" in ref else ""
    head += f"{'RSS loaded MB':>14}{'peak MB':>9}{'+ MB':>7}{'load peak MB':>13}"
    head += f"{'cuda peak MB':>13}{'+ MB':>7}" if cuda else ""
    print(head)
    for name, r in results.items():
        med, m = statistics.median(r["per_step"]), r["mem"]
        row = f"{name:12}{med:11.4f}{min(r['per_step']):8.4f}{med / ref['diffusers']:10.2f}x"
        row += f"{med / ref['comfyui']:8.2f}x" if "comfyui" in ref else ""
        row += f"{_mb(m['rss_loaded']):>14}{_mb(m['rss_peak']):>9}{_mb(m['rss_increment']):>7}"
        row += f"{_mb(m['rss_load_peak']):>13}"
        row += f"{_mb(m['cuda_peak']):>13}{_mb(m['cuda_increment']):>7}" if cuda else ""
        print(row)
    if not all(r["mem"]["hwm_reset"] for r in results.values()):
        print("note: /proc/self/clear_refs was not writable: 'peak' includes the load's own peak")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", type=int, default=1)
    ap.add_argument("--long", type=int, default=3)
    ap.add_argument("--size", type=int, default=None,
                    help="pixels (default 256; 64 on the full-size model written for the ComfyUI row)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-size-cache", default=os.path.join(tempfile.gettempdir(), "lora-lab-bench",
                                                              "sd15-random-fp16.safetensors"),
                    help="where the full-size random SD 1.5 for the ComfyUI row is written once and reused "
                         "(the demo checkpoint is copied beside it)")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: one side in this process
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.prompt, a.negative = PROMPT, NEGATIVE
    if a.long <= a.short:
        ap.error("--long must be more than --short")
    logging.basicConfig(level=logging.WARNING if a.side is None else logging.ERROR)
    if a.side is not None:
        Path(a.result).write_text(json.dumps(run_side(a)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sample_sides import comfy_importable

    why = comfy_importable(os.environ.get("COMFYUI_DIR"))
    if why is not None and os.environ.get("COMFYUI_DIR"):
        log.warning("no ComfyUI row: %s", why)
    if a.size is None:
        a.size = 64 if why is None and a.checkpoint is None else 256
    path = _checkpoint(a, why is None)
    loads = [os.getloadavg()[0]]
    sides = SIDES if why is None else SIDES[:3]
    results = {side: _child(a, side, path) for side in sides}
    loads.append(os.getloadavg()[0])
    report(a, path, results, loads)


if __name__ == "__main__":
    main()
