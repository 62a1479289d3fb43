"""Benchmark: start-up of `lora-lab run` (the demo graph), and where its import time goes.

For each of --repeats rounds, interleaved:
  run       - `python -m lora_lab.nodes.cli run workflows/demo_txt2img.json --quiet`, wall seconds,
  validate  - the same with --validate-only (parses, lists node inputs, checks; runs nothing),
  importtime- the run under `python -X importtime`: the summed top-level cumulative import
              time and its share of that run's wall time, and the largest top-level imports.
Medians are printed; state the machine's load average beside them (printed too).

Run:  python bench/startup.py [--repeats 3] [--workflow workflows/demo_txt2img.json]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _cmd(workflow: str, tmp: str, *extra: str) -> list[str]:
    return [sys.executable, *extra, "-m", "lora_lab.nodes.cli", "run", workflow, "--quiet",
            "--output-dir", os.path.join(tmp, "out"), "--models-dir", os.path.join(tmp, "models")]


def _timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc


def top_level_imports(stderr: str) -> dict[str, float]:
    """-X importtime output -> {top-level module: cumulative seconds} (children are inside)."""
    out = {}
    for m in LINE.finditer(stderr):
        if len(m.group(3)) == 1:  # one space: imported by __main__ code, not by another module
            out[m.group(4)] = out.get(m.group(4), 0.0) + int(m.group(2)) / 1e6
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workflow", default=str(ROOT / "workflows" / "demo_txt2img.json"))
    args = ap.parse_args(argv)
    rows = {"run": [], "validate": [], "importtime run": [], "imports": [], "share": []}
    tops: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            rows["run"].append(_timed(_cmd(args.workflow, tmp))[0])
            rows["validate"].append(_timed(_cmd(args.workflow, tmp) + ["--validate-only"])[0])
            wall, proc = _timed(_cmd(args.workflow, tmp, "-X", "importtime"))
            top = top_level_imports(proc.stderr)
            rows["importtime run"].append(wall)
            rows["imports"].append(sum(top.values()))
            rows["share"].append(sum(top.values()) / wall)
            for k, v in top.items():
                tops.setdefault(k, []).append(v)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min); medians of {args.repeats}")
    for name, vals in rows.items():
        unit = "" if name == "share" else " s"
        print(f"  {name:15s} {statistics.median(vals):8.3f}{unit}")
    print("  largest top-level imports (s, median):")
    for k, v in sorted(tops.items(), key=lambda kv: -statistics.median(kv[1]))[:6]:
        print(f"    {statistics.median(v):6.2f}  {k}")


if __name__ == "__main__":
    main()
