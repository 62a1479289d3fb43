"""Benchmark: `lora-lab run --ray` against the local runner on the demo sweep.

Side by side in one run, on one local Ray cluster (ray.init with --cpus CPUs):
  local     - the local runner (`lora-lab run`), torch held to --threads threads (each Ray
              worker gets --threads CPUs, and Ray sets its OMP_NUM_THREADS to them: like with like);
  ray x1    - `--ray --ray-workers 1`: the same runs through one actor;
  ray x2    - `--ray --ray-workers 2`: two actors.
Each configuration runs the demo graph (workflows/demo_txt2img.json) swept over --runs seeds,
--repeats times, alternating configurations. Reported:
  wall      - the whole invocation, Ray's actor start-up (a fresh process importing torch) and
              each worker's checkpoint load included;
  per run   - the steady state: the median time between two consecutive results of one worker
              (what each further combination costs once the checkpoint is loaded);
  Ray's cost per run - the same for --dispatch-runs validate-only runs (no sampling: what is left
              is the runner, plus for Ray the call, the pickled record and the result's way
              back), Ray minus local, as a share of a full local run (goal: <= 5 %). On a loaded
              2-core machine the full runs swing by tens of percent between repeats; this
              difference does not.

Run:  python bench/scale_out.py [--runs 8] [--steps 4] [--repeats 2] [--cpus 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_invocation(kind: str, workers: int, threads: int, validate_only: bool, plan, registry,
                   names) -> tuple[float, list[float]]:
    """(wall seconds, steady-state seconds between consecutive results of one worker)."""
    from lora_lab.nodes.cli import main as cli_main
    from lora_lab.nodes.cli import ray_runner

    args = Namespace(ray="", ray_workers=workers, ray_cpus_per_worker=threads, ray_fetch_files=False, cache_runs=1,
                     validate_only=validate_only, fail_fast=False, quiet=True)
    done: dict = {}

    def report(rec):
        assert rec.status in ("ok", "valid"), rec.error
        done.setdefault(rec.worker, []).append(time.perf_counter())

    t0 = time.perf_counter()
    with cli_main._quiet_node_bars(True):  # as `lora-lab run --quiet`
        if kind == "local":
            cli_main._run_local(plan, args, registry, names, report)
        else:
            ray_runner.run_on_ray(plan, args, registry, names, report)
    wall = time.perf_counter() - t0
    steps = [b - a for ts in done.values() for a, b in itertools.pairwise(ts)]
    return wall, steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="sweep combinations (seeds)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dispatch-runs", type=int, default=30, help="validate-only runs that time Ray's own cost")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the local runner")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import os

    import ray
    import torch
    from lora_lab.nodes.cli.run_plan import Sweep, expand
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS as REGISTRY
    from lora_lab.nodes.defs.runner_registry import (
        RUNNER_DISPLAY_NAME_MAPPINGS as NAMES,
    )
    from lora_lab.nodes.demo.demo import ensure_demo_checkpoint
    from lora_lab.nodes.graph.workflow import parse_assignment
    from lora_lab.nodes.io import paths

    torch.set_num_threads(args.threads)
    graph = ROOT / "workflows" / "demo_txt2img.json"
    sets = [parse_assignment(f"LoraLabSampler.steps={args.steps}")]
    seeds = Sweep(parse_assignment("LoraLabSampler.seed=0"), [str(i) for i in range(args.runs)])
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    dispatch = Sweep(parse_assignment("LoraLabSampler.seed=0"), [str(i) for i in range(args.dispatch_runs)])
    configs = [("local", "local", 0, seeds), ("ray x1", "ray", 1, seeds), ("ray x2", "ray", 2, seeds),
               ("local, validate only", "local", 0, dispatch), ("ray x1, validate only", "ray", 1, dispatch)]
    results: dict = {c[0]: ([], []) for c in configs}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with paths.standalone_dirs(Path(tmp) / "models", Path(tmp) / "out"):
                ensure_demo_checkpoint()
            for rep in range(args.repeats):
                for name, kind, workers, sweep in configs:
                    out = Path(tmp) / f"out-{rep}-{name.replace(' ', '').replace(',', '')}"
                    with paths.standalone_dirs(Path(tmp) / "models", out):
                        wall, steps = one_invocation(kind, workers, args.threads, "validate" in name,
                                                     expand([graph], sets, [sweep]), REGISTRY, NAMES)
                    results[name][0].append(wall)
                    results[name][1].extend(steps)
    finally:
        ray.shutdown()
    load = os.getloadavg()[0]
    print(f"demo graph, {args.runs} seeds x {args.steps} steps, {args.repeats} repeats, Ray cluster of "
          f"{args.cpus} CPUs, local runner on {args.threads} torch thread(s); load average {load:.1f}")
    print("| configuration | wall (median) | per run, steady state (median) | runs/s steady |")
    print("|---|---|---|---|")
    per_run = {}
    for name, _, workers, sweep in configs:
        walls, steps = results[name]
        per_run[name] = statistics.median(steps)
        rate = max(1, workers) / per_run[name]
        print(f"| {name} ({len(sweep.values)} runs) | {statistics.median(walls):.2f} s | "
              f"{per_run[name] * 1e3:.1f} ms | {rate:.2f} |")
    x1, x2 = results["ray x1"][0], results["ray x2"][0]
    cost = per_run["ray x1, validate only"] - per_run["local, validate only"]
    print(f"\nRay's cost per run (validate-only runs, Ray minus local): {cost * 1e3:.1f} ms = "
          f"{cost / per_run['local'] * 100:+.1f}% of a local demo run (goal <= 5%)")
    print(f"Ray x1 against the local runner, steady state of full runs: "
          f"{(per_run['ray x1'] / per_run['local'] - 1) * 100:+.1f}% (load-sensitive)")
    print(f"2 workers against 1: wall {statistics.median(x1) / statistics.median(x2):.2f}x faster, steady-state "
          f"throughput {2 * per_run['ray x1'] / per_run['ray x2']:.2f}x")


if __name__ == "__main__":
    main()
