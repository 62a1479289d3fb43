"""`lora-lab` command line. Subcommands live in SUBCOMMANDS: name -> (help, add_arguments, handler).

    lora-lab run GRAPH... [--set NODE.input=VALUE]... [--sweep NODE.input=V1,V2,...]...
                 [--models-dir DIR] [--output-dir DIR] [--input-dir DIR] [--quiet] [--json] [--validate-only]
                 [--fail-fast] [--cache-runs N] [--verbose]

Exit codes: 0 every graph succeeded; 1 at least one failed; 2 bad command line;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..io.errors import LoraLabError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class UsageError(LoraLabError):
    """A command line that cannot be acted on (exit code 2)."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


# ---------------------------------------------------------------------------------------------
# run


@dataclass
class Sweep:
    assignment: object  # workflow.Assignment with value = the raw "V1,V2,..." text
    values: list

    @property
    def key(self) -> str:
        return self.assignment.key


def parse_sweep(text: str) -> Sweep:
    """NODE.input=V1,V2,...; a JSON list (NODE.input=["a, b", "c"]) keeps commas inside values."""
    from ..graph.workflow import parse_assignment

    a = parse_assignment(text)
    raw = a.value.strip()
    if raw.startswith("["):
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UsageError(f"--sweep {text!r}: bad JSON list ({e})") from None
        values = [v if isinstance(v, str) else json.dumps(v) for v in values]
    else:
        values = [v.strip() for v in raw.split(",")]
    if not values or any(v == "" for v in values):
        raise UsageError(f"--sweep {text!r}: give one or more comma-separated values")
    return Sweep(a, values)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", str(text)).strip("_") or "x"


def sweep_label(graph_name: str, combo: list[tuple[Sweep, str]]) -> str | None:
    """graphname_seed-5_strength-0.5 (input names; node too where two sweeps share an input)."""
    if not combo:
        return None
    names = [s.assignment.input for s, _ in combo]
    parts = [_safe(graph_name)]
    for s, value in combo:
        a = s.assignment
        key = a.input if names.count(a.input) == 1 else f"{a.node}.{a.input}"
        parts.append(f"{_safe(key)}-{_safe(value)}")
    return "_".join(parts)


def _unique_names(files: list[Path]) -> list[str]:
    """File stems, numbered where several files share one (a.json, x/a.png -> a-1, a-2)."""
    stems = [f.stem for f in files]
    seen: dict = {}
    names = []
    for stem in stems:
        if stems.count(stem) == 1:
            names.append(stem)
        else:
            seen[stem] = seen.get(stem, 0) + 1
            names.append(f"{stem}-{seen[stem]}")
    return names


@dataclass
class RunRecord:
    graph: str
    name: str
    label: str | None = None
    overrides: dict = field(default_factory=dict)
    status: str = "skipped"  # ok | failed | interrupted | skipped | valid
    error: str | None = None
    problems: list = field(default_factory=list)
    files: list = field(default_factory=list)
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    executed_nodes: list = field(default_factory=list)
    cached_nodes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # {"node", "title", "message"}: a partial LoRA match, ...

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graphs", nargs="+", metavar="GRAPH",
                   help="API or UI workflow .json, a PNG with ComfyUI chunks, or a folder of them")
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


def _copy_result(rec: RunRecord, res) -> None:
    rec.status, rec.error, rec.problems = res.status, res.error, res.problems
    rec.files, rec.seconds, rec.timings = res.files, res.seconds, res.timings
    rec.executed_nodes, rec.cached_nodes = res.executed, res.cached
    rec.warnings = list(getattr(res, "warnings", []))


def _run_one(rec: RunRecord, wf, assignments: list, executor, validate_only: bool, registry) -> None:
    """Override, validate and (unless validate_only) execute one run; the outcome goes in rec."""
    from ..graph.executor import RunInterrupted
    from ..graph.graph_validate import GraphValidationError, validate_graph
    from ..graph.workflow import apply_assignments

    t0 = time.perf_counter()
    try:
        prompt = apply_assignments(wf.prompt, assignments, registry)
        if validate_only:
            validate_graph(prompt, registry)
            rec.status = "valid"
            return
    except GraphValidationError as e:
        rec.status, rec.error, rec.problems = "failed", str(e), [p.to_dict() for p in e.problems]
        return
    except LoraLabError as e:
        rec.status, rec.error = "failed", str(e)
        return
    finally:
        rec.seconds = time.perf_counter() - t0
    try:
        res = executor.run(prompt, extra_pnginfo=wf.extra_pnginfo, label=rec.label, name=rec.name)
    except RunInterrupted as e:
        _copy_result(rec, e.result)
        raise
    _copy_result(rec, res)


def cmd_run(args, registry: dict | None = None, out=None, err=None) -> int:
    """`lora-lab run`; `registry` (class type -> node class) defaults to lora_lab's nodes."""
    from tqdm import tqdm

    from ..graph.executor import Executor, RunInterrupted
    from ..graph.workflow import load_workflow
    from ..io.paths import standalone_dirs

    out = out or sys.stdout
    err = err or sys.stderr
    display_names = None
    if registry is None:  # our nodes + ComfyUI's core ids (the graph layer is handed them, never imports them)
        from ..defs.runner_registry import RUNNER_CLASS_MAPPINGS as registry
        from ..defs.runner_registry import RUNNER_DISPLAY_NAME_MAPPINGS as display_names
    try:
        sets, sweeps, files = _plan(args)
    except LoraLabError as e:
        print(f"lora-lab run: {e}", file=err)
        return EXIT_USAGE
    combos = list(itertools.product(*[[(s, v) for v in s.values] for s in sweeps]))
    # every run planned up front, so an interrupted invocation still lists what it skipped
    plan = []
    for path, name in zip(files, _unique_names(files)):
        for combo in combos:
            rec = RunRecord(str(path), name, sweep_label(name, list(combo)),
                            {**{a.key: a.value for a in sets}, **{s.key: v for s, v in combo}})
            plan.append((path, rec, [*sets, *(replace(s.assignment, value=v) for s, v in combo)]))
    records = [rec for _, rec, _ in plan]
    executor = Executor(registry, quiet=args.quiet, keep_runs=args.cache_runs)
    interrupt = None
    t_start = time.perf_counter()
    loaded: dict = {}
    bar = tqdm(total=len(plan), desc="graphs", unit="run", disable=args.quiet, dynamic_ncols=True)
    try:
        with _quiet_node_bars(args.quiet), _sigterm_as_interrupt(), \
                standalone_dirs(args.models_dir, args.output_dir, args.input_dir):
            for path, rec, assignments in plan:
                if path not in loaded:
                    loaded.clear()  # one graph file at a time
                    try:
                        loaded[path] = load_workflow(path, registry, display_names)
                    except (LoraLabError, OSError) as e:
                        loaded[path] = e
                    except RecursionError:  # one file never stops the others' results
                        loaded[path] = LoraLabError(f"{path}: graph nested too deeply to read")
                wf = loaded[path]
                if isinstance(wf, Exception):
                    rec.status, rec.error = "failed", str(wf)
                else:
                    _run_one(rec, wf, assignments, executor, args.validate_only, registry)
                _print_record(rec, args, out, err)
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
            _print_record(interrupted_rec, args, out, err)
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
              + f" ({time.perf_counter() - t_start:.1f} s)", file=out)
    if args.json:
        summary = {
            "status": {EXIT_OK: "ok", EXIT_FAILED: "failed"}.get(code, "interrupted"),
            "exit_code": code,
            "runs": [r.to_dict() for r in records],
            "cache": {"hits": executor.cache.hits, "misses": executor.cache.misses},
            "seconds": time.perf_counter() - t_start,
        }
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
