"""`lora-lab` command line. Subcommands live in SUBCOMMANDS: name -> (help, add_arguments, handler).

    lora-lab run GRAPH... [--set NODE.input=VALUE]... [--sweep NODE.input=V1,V2,...]...
                 [--models-dir DIR] [--output-dir DIR] [--input-dir DIR] [--quiet] [--json] [--validate-only]
                 [--fail-fast] [--cache-runs N] [--verbose] [--shard I/N]
                 [--ray [ADDRESS]] [--ray-workers N] [--ray-cpus-per-worker N] [--ray-fetch-files]
    lora-lab merge-json SHARD_SUMMARY... [-o FILE]

Exit codes: 0 every graph succeeded; 1 at least one failed; 2 bad command line;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from ..io.errors import LoraLabError
from .run_plan import (
    RunRecord,
    Sweep,
    UsageError,
    expand,
    parse_shard,
    parse_sweep,
    plan_fingerprint,
    run_one,
    select_shard,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


# ---------------------------------------------------------------------------------------------
# run (planning, sweeps and shards: run_plan.py; Ray: ray_runner.py)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graphs", nargs="+", metavar="GRAPH",
                   help="API or UI workflow .json, a PNG/JPEG/WebP with ComfyUI or A1111 metadata, or a folder of them")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.input=VALUE",
                   help="override an input (NODE = node id, title or unique class type); repeatable")
    p.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="NODE.input=V1,V2,...",
                   help="run once per value (several sweeps: every combination); repeatable")
    p.add_argument("--models-dir",
                   help="models folder (checkpoints/, loras/); default $LORA_LAB_MODELS_DIR or ./models")
    p.add_argument("--output-dir", help="output folder; default $LORA_LAB_OUTPUT_DIR or ./output")
    p.add_argument("--input-dir", help="LoadImage's folder; default $LORA_LAB_INPUT_DIR or ./input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no per-graph lines (errors still)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (JSON) on stdout")
    p.add_argument("--validate-only", action="store_true", help="load, override and validate; run nothing")
    p.add_argument("--fail-fast", action="store_true", help="stop after the first failing graph")
    p.add_argument("--cache-runs", type=int, default=1, metavar="N",
                   help="keep cached node outputs used by the last N runs (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--shard", metavar="I/N", help="run only shard I (0..N-1) of the run list; N jobs "
                   "together run each run once, with the names of one sequential run")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run on a Ray cluster "
                   "(ADDRESS, or ray.init's default: $RAY_ADDRESS, a running local cluster, else a new one)")
    p.add_argument("--ray-workers", type=int, metavar="N", help="Ray workers (one actor each; default one per GPU, else per node)")
    p.add_argument("--ray-cpus-per-worker", type=int, metavar="N", help="CPUs (torch threads) of each Ray worker; "
                   "default an equal share")
    p.add_argument("--ray-fetch-files", action="store_true",
                   help="workers return the files they write (no shared file system with the workers)")


@contextlib.contextmanager
def _quiet_node_bars(quiet: bool):
    """--quiet also silences the progress bars nodes open themselves (lora_lab.nodes.progress uses
    tqdm on sys.stderr and has no global switch): stderr goes to devnull while graphs run. Our
    own messages and logging keep the real stderr (both hold it already)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def handler(signum, frame):
        raise _Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _plan(args) -> tuple[list, list[Sweep], list[Path]]:
    from ..graph.workflow import collect_graph_files, parse_assignment
    from ..io.paths import check_path_options

    sets = [parse_assignment(s) for s in args.sets]
    sweeps = [parse_sweep(s) for s in args.sweeps]
    keys = [a.key for a in sets] + [s.key for s in sweeps]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise UsageError(f"set more than once by --set/--sweep: {', '.join(dup)}")
    check_path_options({"--models-dir": args.models_dir, "--output-dir": args.output_dir})
    if args.cache_runs < 1:
        raise UsageError(f"--cache-runs must be at least 1, got {args.cache_runs}")
    files = collect_graph_files(args.graphs)
    if not files:
        raise UsageError(f"no graph files (*.json, *.png) in {', '.join(args.graphs)}")
    return sets, sweeps, files


def _print_record(rec: RunRecord, args, out, err) -> None:
    from tqdm import tqdm

    def say(text, stream):  # above the progress bars, which tqdm redraws
        tqdm.write(text, file=stream)

    what = rec.graph + (f" [{', '.join(f'{k}={v}' for k, v in rec.overrides.items())}]" if rec.overrides else "")
    if rec.status in ("ok", "valid"):
        if not args.quiet and not args.json:
            n = len(rec.files)
            extra = f"  {n} file{'s' * (n != 1)}" if rec.status == "ok" else ""
            say(f"{rec.status:<7} {what}  {rec.seconds:.2f} s{extra}", out)
            for f in rec.files:
                say(f"        {f}", out)
    elif rec.status != "skipped":
        say(f"{rec.status:<7} {what}: {rec.error}", err)


def _run_local(plan: list, args, registry, display_names, report) -> tuple:
    """The runs one after another in this process; (interrupt or None, cache counts)."""
    from tqdm import tqdm

    from ..graph.executor import Executor, RunInterrupted
    from ..graph.workflow import load_workflow

    records = [run.record for run in plan]
    executor = Executor(registry, quiet=args.quiet, keep_runs=args.cache_runs)
    interrupt = None
    loaded: dict = {}
    bar = tqdm(total=len(plan), desc="graphs", unit="run", disable=args.quiet, dynamic_ncols=True)
    try:
        for run in plan:
            rec = run.record
            if run.path not in loaded:
                loaded.clear()  # one graph file at a time
                try:
                    loaded[run.path] = load_workflow(run.path, registry, display_names)
                except (LoraLabError, OSError) as e:
                    loaded[run.path] = e
                except RecursionError:  # one file never stops the others' results
                    loaded[run.path] = LoraLabError(f"{run.path}: graph nested too deeply to read")
            wf = loaded[run.path]
            if isinstance(wf, Exception):
                rec.status, rec.error = "failed", str(wf)
            else:
                run_one(rec, wf, run.assignments, executor, args.validate_only, registry)
            report(rec)
            bar.update(1)
            if args.fail_fast and rec.status == "failed":
                break
    except RunInterrupted as e:
        interrupt = e.cause
    except KeyboardInterrupt as e:  # between runs, or while loading a graph
        interrupt = e
    finally:
        bar.close()
    if interrupt is not None:
        current = next((r for r in records if r.status == "skipped"), None)
        interrupted_rec = next((r for r in records if r.status == "interrupted"), current)
        if interrupted_rec is not None:
            interrupted_rec.status, interrupted_rec.error = "interrupted", "interrupted by the user"
            report(interrupted_rec)
    return interrupt, {"hits": executor.cache.hits, "misses": executor.cache.misses}


def cmd_run(args, registry: dict | None = None, out=None, err=None) -> int:
    """`lora-lab run`; `registry` (class type -> node class) defaults to lora_lab's nodes."""
    from ..io.paths import standalone_dirs

    out = out or sys.stdout
    err = err or sys.stderr
    display_names = None
    if registry is None:  # our nodes + ComfyUI's core ids (the graph layer is handed them, never imports them)
        from ..defs.runner_registry import RUNNER_CLASS_MAPPINGS as registry
        from ..defs.runner_registry import RUNNER_DISPLAY_NAME_MAPPINGS as display_names
    try:
        sets, sweeps, files = _plan(args)
        shard = parse_shard(args.shard) if args.shard is not None else None
    except LoraLabError as e:
        print(f"lora-lab run: {e}", file=err)
        return EXIT_USAGE
    # every run planned up front, so an interrupted invocation still lists what it skipped
    plan = expand(files, sets, sweeps)
    n_total, fingerprint = len(plan), plan_fingerprint(plan)
    if shard is not None:
        plan = select_shard(plan, shard, registry, display_names)
    records = [run.record for run in plan]
    t_start = time.perf_counter()

    def report(rec):
        _print_record(rec, args, out, err)

    with _quiet_node_bars(args.quiet), _sigterm_as_interrupt(), \
            standalone_dirs(args.models_dir, args.output_dir, args.input_dir):
        if args.ray is not None:
            from .ray_runner import run_on_ray

            try:
                interrupt, cache = run_on_ray(plan, args, registry, display_names, report)
            except LoraLabError as e:  # no ray, or no cluster at that address
                print(f"lora-lab run: {e}", file=err)
                return EXIT_USAGE
        else:
            interrupt, cache = _run_local(plan, args, registry, display_names, report)
    if interrupt is not None:
        print("lora-lab run: interrupted; stopped cleanly", file=err)
        code = EXIT_TERMINATED if isinstance(interrupt, _Terminated) else EXIT_INTERRUPTED
    elif any(r.status == "failed" for r in records):
        code = EXIT_FAILED
    else:
        code = EXIT_OK
    statuses = [r.status for r in records]
    if not args.json and not args.quiet:
        n_ok = sum(s in ("ok", "valid") for s in statuses)
        print(f"{n_ok} of {len(records)} run(s) succeeded, {statuses.count('failed')} failed"
              + (f", {statuses.count('skipped')} skipped" if statuses.count("skipped") else "")
              + (f" (shard {shard} of {n_total} runs)" if shard else "")
              + f" ({time.perf_counter() - t_start:.1f} s)", file=out)
    if args.json:
        summary = {
            "status": {EXIT_OK: "ok", EXIT_FAILED: "failed"}.get(code, "interrupted"),
            "exit_code": code,
            "runs": [r.to_dict() for r in records],
            "cache": cache,
            "seconds": time.perf_counter() - t_start,
        }
        if shard is not None:  # what `lora-lab merge-json` checks
            summary["shard"] = {"index": shard.index, "count": shard.count, "runs_total": n_total,
                                "plan": fingerprint}
        print(json.dumps(summary, indent=2, default=repr), file=out)
    return code


# ---------------------------------------------------------------------------------------------
# entry point

def _lazy(module: str, name: str):
    """A subcommand function imported only when its subcommand is used."""

    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args, **kwargs)

    return call


SUBCOMMANDS = {
    "run": ("run workflow graphs headless (API/UI JSON, PNG, folders)", add_run_arguments, cmd_run),
    "train": ("train a LoRA on a folder of images (kohya format)", _lazy("cli_train", "add_arguments"), _lazy("cli_train", "main")),
    # Other areas: each module has add_arguments(parser) and main(args) -> exit code.
    "merge": ("bake LoRAs into a checkpoint (streamed, atomic)", _lazy("cli_merge", "add_arguments"),
              _lazy("cli_merge", "main")),
    "lora": ("LoRA file tools: merge, resize, extract, save", _lazy("cli_merge", "add_lora_arguments"),
             _lazy("cli_merge", "main_lora")),
    "merge-json": ("merge the --json summaries of `run --shard I/N` jobs into one",
                   _lazy("cli_summaries", "add_arguments"), _lazy("cli_summaries", "main")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-lab", description="LoRA Lab command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, _handler) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _configure_logging(args) -> None:
    """Console logging for the command line; an embedding program's own setup is left alone."""
    if logging.getLogger().handlers:
        return
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv=None, *, registry: dict | None = None) -> int:
    """Entry point of `lora-lab`; returns the exit code. `registry` is for tests and embedders."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    _configure_logging(args)
    _help, _add, handler = SUBCOMMANDS[args.command]
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover
        logging_redirect_tqdm = contextlib.nullcontext
    with logging_redirect_tqdm():
        return handler(args, registry)


if __name__ == "__main__":  # python -m lora_lab.nodes.cli.main
    sys.exit(main())
