"""Benchmark: the headless runner's overhead on the demo text-to-image graph.

Side by side in one run, alternating, with the checkpoint already loaded on both sides:
  direct  - the core functions the graph's nodes call: load_checkpoint (cached),
            txt2img.generate, image_io.save_images;
  runner  - workflows/demo_txt2img.json through the Executor (load, UI->API conversion,
            validation, signatures, hidden inputs, PNG metadata), the same work inside.
Reports the median of each and the overhead ratio. Goal: <= 3%.

Run:  python bench/runner_overhead.py [--repeats 7] [--steps 20]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import torch

    from lora_lab.nodes.io import paths
    from lora_lab.nodes.model.checkpoint import load_checkpoint
    from lora_lab.nodes.demo.demo import DEMO_NAME, ensure_demo_checkpoint
    from lora_lab.nodes.graph.executor import Executor
    from lora_lab.nodes.io.image_io import save_images
    from lora_lab.nodes.io.progress import Progress
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate
    from lora_lab.nodes.graph.workflow import load_workflow
    from lora_lab.nodes.defs.node_defs import NODE_CLASS_MAPPINGS as REGISTRY, NODE_DISPLAY_NAME_MAPPINGS as NAMES

    with tempfile.TemporaryDirectory() as tmp, paths.standalone_dirs(Path(tmp) / "models", Path(tmp) / "out"):
        ensure_demo_checkpoint()
        wf = load_workflow(ROOT / "workflows" / "demo_txt2img.json", REGISTRY, NAMES)
        sampler = next(n for n in wf.prompt.values() if n["class_type"] == "LoraLabSampler")
        sampler["inputs"]["steps"] = args.steps
        inp = sampler["inputs"]
        settings = SampleSettings(inp["prompt"], inp["negative_prompt"], inp["seed"], inp["steps"], inp["cfg"],
                                  inp["sampler_name"], inp["scheduler"], inp["width"], inp["height"],
                                  inp["batch_size"], inp.get("clip_skip", 0))
        executor = Executor(REGISTRY, quiet=True)

        @torch.inference_mode()  # as the runner (and ComfyUI) run nodes
        def direct(seed):
            handle = load_checkpoint(paths.resolve("checkpoints", DEMO_NAME))
            with Progress(settings.steps, desc="sample") as bar:  # as the node does
                images = generate(handle, dataclasses.replace(settings, seed=seed), progress=bar)
            save_images(images, "bench/direct")

        def runner(seed):
            inp["seed"] = seed  # a new seed each run, so the Sample node really runs (no cache hit)
            result = executor.run(wf.prompt, extra_pnginfo=wf.extra_pnginfo)
            assert result.ok, result.error

        direct(0)  # warm both: the checkpoint load is cached on both sides
        runner(0)
        t_direct, t_runner = [], []
        for i in range(1, args.repeats + 1):
            for fn, out in ((direct, t_direct), (runner, t_runner)):
                t = time.perf_counter()
                fn(i)
                out.append(time.perf_counter() - t)
        d, r = statistics.median(t_direct), statistics.median(t_runner)
        print(f"demo graph, {args.steps} steps, {settings.width}x{settings.height}, {args.repeats} repeats each")
        print("| path | median | min | max |")
        print("|---|---|---|---|")
        for name, ts in (("direct core calls", t_direct), ("headless runner", t_runner)):
            print(f"| {name} | {statistics.median(ts) * 1e3:.1f} ms | {min(ts) * 1e3:.1f} ms | {max(ts) * 1e3:.1f} ms |")
        print(f"\nrunner overhead: {(r / d - 1) * 100:+.1f}% on the medians, "
              f"{(min(t_runner) / min(t_direct) - 1) * 100:+.1f}% on the best runs (goal <= 3%)")


if __name__ == "__main__":
    main()
