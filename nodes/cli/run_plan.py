"""The run list of `lora-lab run`: graphs × sweep combinations, planned up front, and how it is
split across independent jobs (`--shard I/N`) or Ray workers without changing a file name.

Output names. A saver appends the run's label (set for sweeps) to its prefix and takes the next
free counter `<stem>_NNNNN_`. Runs whose stems differ never see each other's files, so they may
run anywhere in any order; runs that can write the same stem (graphs without a sweep that share
a `filename_prefix`, or a prefix that comes from a link) must run in plan order on one worker,
or their counters would differ from one sequential run. `name_groups` joins those runs
(union-find over the stems a run can write); a group is never split.

Checkpoints. `model_key` is the set of `ckpt_name` constants of a run's graph; the Ray runner
hands a worker the runs of one checkpoint back to back, so its output cache loads it once.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io.errors import LoraLabError


class UsageError(LoraLabError):
    """A --shard, --sweep or summary that cannot be acted on (exit code 2)."""


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
    index: int = 0  # position in the full (unsharded) run list
    worker: str | None = None  # the Ray worker that ran it (None: this process)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PlannedRun:
    path: Path
    record: RunRecord
    assignments: list  # workflow.Assignment: the --set ones, then this combination's values


def expand(files: list[Path], sets: list, sweeps: list[Sweep]) -> list[PlannedRun]:
    """Every run of the invocation, in the order one sequential run executes them."""
    import itertools
    from dataclasses import replace

    combos = list(itertools.product(*[[(s, v) for v in s.values] for s in sweeps]))
    plan = []
    for path, name in zip(files, _unique_names(files)):
        for combo in combos:
            rec = RunRecord(str(path), name, sweep_label(name, list(combo)),
                            {**{a.key: a.value for a in sets}, **{s.key: v for s, v in combo}},
                            index=len(plan))
            plan.append(PlannedRun(path, rec, [*sets, *(replace(s.assignment, value=v) for s, v in combo)]))
    return plan


# ---------------------------------------------------------------------------------------------
# one run (here, or in a Ray worker)


def copy_result(rec: RunRecord, res) -> None:
    rec.status, rec.error, rec.problems = res.status, res.error, res.problems
    rec.files, rec.seconds, rec.timings = res.files, res.seconds, res.timings
    rec.executed_nodes, rec.cached_nodes = res.executed, res.cached
    rec.warnings = list(getattr(res, "warnings", []))


def run_one(rec: RunRecord, wf, assignments: list, executor, validate_only: bool, registry) -> None:
    """Override, validate and (unless validate_only) execute one run; the outcome goes in rec."""
    from ..graph.executor import RunInterrupted
    from ..graph.graph_validate import GraphValidationError, validate_graph
    from ..graph.workflow import apply_assignments

    t0 = time.perf_counter()
    fallback_notes = [{"node": None, "title": None, "message": w} for w in getattr(wf, "warnings", ())]
    rec.warnings = list(fallback_notes)
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
        copy_result(rec, e.result)
        rec.warnings[:0] = fallback_notes
        raise
    copy_result(rec, res)
    rec.warnings[:0] = fallback_notes


# ---------------------------------------------------------------------------------------------
# what a run writes and reads, from its graph with the overrides applied


def _constants(prompt: dict, input_name: str) -> tuple[list[str], bool]:
    """The constant values of every `input_name` input, and whether one comes from a link."""
    values, linked = [], False
    for node in prompt.values():
        value = (node.get("inputs") or {}).get(input_name)
        if isinstance(value, list):
            linked = True
        elif value is not None:
            values.append(str(value))
    return sorted(set(values)), linked


def run_prompts(plan: list[PlannedRun], registry: dict, display_names: dict | None) -> list[dict | None]:
    """The API graph of each run with its overrides applied; None where it cannot be built
    (the run then fails when it runs, and writes nothing)."""
    from ..graph.workflow import apply_assignments, load_workflow

    loaded: dict = {}
    prompts = []
    for run in plan:
        if run.path not in loaded:
            try:
                loaded[run.path] = load_workflow(run.path, registry, display_names).prompt
            except (LoraLabError, OSError):
                loaded[run.path] = None
        try:
            prompts.append(None if loaded[run.path] is None else
                           apply_assignments(loaded[run.path], run.assignments, registry))
        except LoraLabError:
            prompts.append(None)
    return prompts


def name_keys(run: PlannedRun, prompt: dict | None) -> list[str]:
    """The output stems a run can write with a counter: its label, or its constant prefixes;
    "*" (shared with every run without a label) where a prefix is linked."""
    if run.record.label is not None:
        return [f"label:{run.record.label}"]
    if prompt is None:
        return [f"graph:{run.path}"]  # fails to build: writes nothing
    prefixes, linked = _constants(prompt, "filename_prefix")
    return [f"prefix:{p}" for p in prefixes] + (["*"] if linked else [])


def model_key(prompt: dict | None) -> tuple:
    return tuple(_constants(prompt, "ckpt_name")[0]) if prompt is not None else ()


def name_groups(keys: list[list[str]]) -> list[list[int]]:
    """Runs that share a name key, transitively, as lists of run indices in plan order (the
    groups ordered by their first run)."""
    parent = list(range(len(keys)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, ks in enumerate(keys):
        for k in ks:
            if k in owner:
                parent[find(i)] = find(owner[k])
            else:
                owner[k] = i
    groups: dict = {}
    for i in range(len(keys)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# ---------------------------------------------------------------------------------------------
# --shard I/N


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if self.count < 1:
            raise UsageError(f"--shard {self}: the shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self}: the index must be 0..{self.count - 1}, got {self.index}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'I/N' (0-based I: SLURM's $SLURM_ARRAY_TASK_ID with --array=0-(N-1), a Kubernetes
    indexed job's $JOB_COMPLETION_INDEX)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shards are numbered 0..N-1)")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_groups(groups: list[list[int]], count: int) -> list[list[int]]:
    """Contiguous blocks of groups, balanced by run count: shard i takes the groups whose first
    run falls in [i*T/N, (i+1)*T/N) of the cumulative count (neighbouring runs share
    checkpoints, so blocks keep loads down). Each group lands in exactly one shard."""
    total = sum(len(g) for g in groups)
    shards: list[list[int]] = [[] for _ in range(count)]
    done = 0
    for g in groups:
        # the shard that holds the group's midpoint: balanced even when groups are uneven
        i = min(count - 1, (2 * done + len(g)) * count // (2 * total)) if total else 0
        shards[i].extend(g)
        done += len(g)
    return [sorted(s) for s in shards]


def plan_fingerprint(plan: list[PlannedRun]) -> str:
    """A hash of the whole run list (graphs, names, overrides): shards of one command line agree."""
    import hashlib

    rows = [[r.record.graph, r.record.name, r.record.label, r.record.overrides] for r in plan]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def select_shard(plan: list[PlannedRun], shard: Shard, registry: dict,
                 display_names: dict | None) -> list[PlannedRun]:
    """The runs of `shard`, in plan order."""
    prompts = run_prompts(plan, registry, display_names)
    groups = name_groups([name_keys(r, p) for r, p in zip(plan, prompts)])
    return [plan[i] for i in shard_groups(groups, shard.count)[shard.index]]


def worker_chunks(plan: list[PlannedRun], registry: dict, display_names: dict | None,
                  workers: int) -> list[list[PlannedRun]]:
    """The run list as chunks for `workers` long-lived workers: the name groups of one
    checkpoint together (checkpoints in order of first use), each checkpoint's groups split into
    at most `workers` contiguous chunks. Handed out in this order, a worker's runs of one
    checkpoint come back to back, so its output cache loads each checkpoint once."""
    prompts = run_prompts(plan, registry, display_names)
    groups = name_groups([name_keys(r, p) for r, p in zip(plan, prompts)])
    by_model: dict = {}
    for g in groups:
        by_model.setdefault(model_key(prompts[g[0]]), []).append(g)
    chunks = []
    for model_groups in by_model.values():
        for part in shard_groups(model_groups, min(workers, len(model_groups))):
            if part:
                chunks.append([plan[i] for i in part])
    return chunks
