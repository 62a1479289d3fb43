"""`lora-lab run ... --ray [ADDRESS]`: the run list on a Ray cluster (optional extra `[ray]`).

Ray is the engine: actors, their task queues, `ray.wait`, `ray.cancel`, `ray.kill`. This module
only decides what each worker gets:

- one long-lived actor per worker (per GPU when the cluster has GPUs), each with its own
  `Executor`, so its output cache keeps a loaded checkpoint (and encoded prompts, LoRAs) between
  runs as a local run does;
- the run list cut into chunks by checkpoint (`run_plan.worker_chunks`); a worker that is done
  with its chunk gets the next one, and its runs go to it one call at a time, so each worker
  loads each checkpoint once, and nothing is left queued on a worker that Ctrl-C must undo
  (`ray.cancel` does not stop an actor call that the actor already holds);
- runs that could write the same counter name stay in one chunk, in plan order, so every file
  gets the name one sequential run gives it;
- outputs are written by the workers into the same output folder (a shared file system), or,
  with `--ray-fetch-files`, into a scratch folder on the worker and sent back to the driver,
  which writes them atomically under its output folder (never overwriting: a taken name moves
  to the next counter, as Save Image does);
- one run's failure is its record's status; a worker that dies fails the run it was running,
  and the rest of its chunk goes to the next free worker; Ctrl-C (or SIGTERM) starts nothing more, lets the runs in progress finish
  (their files are whole), then kills the actors; a second Ctrl-C kills them at once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from ..io.errors import LoraLabError
from .run_plan import RunRecord, UsageError, run_one, worker_chunks

log = logging.getLogger(__name__)

_COUNTER = re.compile(r"^(?P<stem>.+)_(?P<n>\d{5,})_(?P<ext>(\.[^/]*)?)$")
GRACE_SECONDS = 600.0  # how long Ctrl-C waits for the runs in progress (a second Ctrl-C: no wait)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'lora-lab[ray]' (or pip install ray)") from None
    return ray


class RunWorker:
    """One worker's state (a Ray actor made with ray.remote at run time): an Executor whose
    output cache lives as long as the actor, and the graph file last loaded."""

    def __init__(self, registry: dict, display_names, models_dir: str, output_dir: str | None,
                 keep_runs: int, validate_only: bool, input_dir: str | None = None):
        from ..graph.executor import Executor

        self.registry, self.display_names, self.validate_only = registry, display_names, validate_only
        self.models_dir, self.input_dir = models_dir, input_dir
        self.scratch = None if output_dir else tempfile.mkdtemp(prefix="lora-lab-ray-out-")
        self.output_dir = output_dir or self.scratch  # scratch: files go back to the driver
        self.executor = Executor(registry, quiet=True, keep_runs=keep_runs)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._graph: tuple = (None, None)

    def _workflow(self, path: str):
        from ..graph.workflow import load_workflow

        if self._graph[0] != path:
            try:
                self._graph = (path, load_workflow(path, self.registry, self.display_names))
            except (LoraLabError, OSError) as e:
                self._graph = (path, e)
            except RecursionError:  # one file never stops the others' results
                self._graph = (path, LoraLabError(f"{path}: graph nested too deeply to read"))
        return self._graph[1]

    def run(self, path: str, rec: RunRecord, assignments: list) -> tuple[RunRecord, dict, dict]:
        """One run: (its record, {relative path: bytes} of its files when they go back to the
        driver, the cache counts so far)."""
        from ..graph.executor import RunInterrupted
        from ..io.paths import standalone_dirs

        rec.worker = self.name
        payload = {}
        with standalone_dirs(self.models_dir, self.output_dir, self.input_dir):
            wf = self._workflow(path)
            if isinstance(wf, Exception):
                rec.status, rec.error = "failed", str(wf)
            else:
                try:
                    run_one(rec, wf, assignments, self.executor, self.validate_only, self.registry)
                except RunInterrupted:
                    rec.status, rec.error = "interrupted", "interrupted on the worker"
        if self.scratch is not None:
            root = Path(self.scratch)
            for f in rec.files:
                p = Path(f)
                payload[p.relative_to(root).as_posix()] = p.read_bytes()
                p.unlink()
        return rec, payload, {"hits": self.executor.cache.hits, "misses": self.executor.cache.misses}


def commit_file(root: Path, rel: str, data: bytes) -> Path:
    """Write a file a worker sent back under `root`, atomically, never overwriting: a counter
    name (`<stem>_00001_.png`) that is taken moves to the next free counter."""
    from ..io.destination import next_counter

    target = (root / rel).resolve()
    target.relative_to(root.resolve())  # a worker's path never leaves the output folder
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        m = _COUNTER.match(target.name)
        n = int(m.group("n")) if m else 0
        if m:
            n = max(n, next_counter(target.parent, m.group("stem"), m.group("ext")))
        while True:
            candidate = target.parent / (f"{m.group('stem')}_{n:05}_{m.group('ext')}" if m else target.name)
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                if not m:
                    raise
                n += 1
    finally:
        Path(tmp).unlink(missing_ok=True)


def worker_resources(nodes: list[dict], asked: int | None, cpus_each: int | None = None) -> tuple[int, dict]:
    """How many actors, and what each asks Ray for, from `ray.nodes()`: one per GPU (a GPU and
    its share of the CPUs), else one per node (the CPUs of the smallest node), or `asked` with an
    equal share of the CPUs (`cpus_each` to choose). Ray sets OMP_NUM_THREADS to an actor's CPUs: a 1-CPU actor would
    run torch on one thread of a 32-core node."""
    if asked is not None and asked < 1:
        raise UsageError(f"--ray-workers must be at least 1, got {asked}")
    if cpus_each is not None and cpus_each < 1:
        raise UsageError(f"--ray-cpus-per-worker must be at least 1, got {cpus_each}")
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive")]
    if not alive:
        raise UsageError("--ray: the cluster has no live node")
    gpus = int(sum(r.get("GPU", 0) for r in alive))
    cpus = int(sum(r.get("CPU", 0) for r in alive))
    smallest = int(min(r.get("CPU", 0) for r in alive))
    n = asked or gpus or len(alive)
    if gpus and n > gpus:
        raise UsageError(f"--ray-workers {n}: the cluster has {gpus} GPU(s), one per worker")
    if n > cpus:
        raise UsageError(f"--ray-workers {n}: the cluster has {cpus} CPU(s)")
    share = cpus_each or max(1, min(smallest, cpus // n))
    if share > max(int(r.get("CPU", 0)) for r in alive):
        raise UsageError(f"--ray-cpus-per-worker {share}: no node of the cluster has that many CPUs")
    return n, ({"num_gpus": 1, "num_cpus": share} if gpus else {"num_cpus": share})


def _copy_into(rec: RunRecord, got: RunRecord) -> None:
    rec.__dict__.update({k: v for k, v in got.__dict__.items() if k not in ("graph", "index")})


def run_on_ray(plan: list, args, registry: dict, display_names, report) -> tuple:
    """Run `plan` (run_plan.PlannedRun) on Ray; records are filled in place and each finished one
    is handed to `report`. Returns (the KeyboardInterrupt that stopped it or None, cache counts).

    Ray prints its own notices (a dead worker's "(raylet) ..." lines, worker logs) on stdout; they
    go to stderr here, so stdout keeps only what the caller writes (the --json summary)."""
    with contextlib.redirect_stdout(sys.stderr):
        return _run_on_ray(plan, args, registry, display_names, report)


def _run_on_ray(plan: list, args, registry: dict, display_names, report) -> tuple:
    from ..io.paths import input_dir, models_dir, output_dir

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=args.ray or None, logging_level=logging.WARNING, log_to_driver=not args.quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"--ray {args.ray or '(default)'}: cannot start or reach the cluster ({e})") from None
    actors: list = []
    interrupt = None
    pending: dict = {}  # ObjectRef -> (actor, PlannedRun)
    counts: dict = {}  # actor -> its latest cache counts
    try:
        n, resources = worker_resources(ray.nodes(), getattr(args, "ray_workers", None),
                                       getattr(args, "ray_cpus_per_worker", None))
        chunks = worker_chunks(plan, registry, display_names, n)
        fetch = getattr(args, "ray_fetch_files", False)
        worker_cls = ray.remote(**resources)(RunWorker)
        actors = [worker_cls.remote(registry, display_names, str(models_dir()), None if fetch else str(output_dir()),
                                    args.cache_runs, args.validate_only, str(input_dir()))
                  for _ in range(min(n, len(chunks)))]
        log.info("%d run(s) in %d chunk(s) on %d Ray worker(s)", len(plan), len(chunks), len(actors))
        queues = {actor: deque() for actor in actors}  # each worker's chunk, one call in flight
        while True:
            for actor, queue in queues.items():
                if not queue and chunks and actor not in {a for a, _ in pending.values()}:
                    queue.extend(chunks.pop(0))
                if queue and actor not in {a for a, _ in pending.values()}:
                    run = queue.popleft()
                    ref = actor.run.remote(str(Path(run.path).absolute()), run.record, run.assignments)
                    pending[ref] = (actor, run)
            if not pending:
                break
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, run = pending.pop(ref)
            if not _collect(ray, ref, run, counts, actor, fetch, report):  # the worker died
                lost = list(queues.pop(actor))  # its chunk's runs not started yet, in order
                if queues and lost:
                    chunks.insert(0, lost)  # the next free worker takes them
                elif not queues:
                    for r in [*lost, *(r for c in chunks for r in c)]:
                        r.record.status, r.record.error = "failed", "every Ray worker died before running it"
                        report(r.record)
                    chunks.clear()
            if args.fail_fast and run.record.status == "failed":
                chunks.clear()
                for queue in queues.values():
                    queue.clear()
    except KeyboardInterrupt as e:  # nothing is queued on a worker: only the runs in progress
        interrupt = e
        _drain(ray, pending, counts, fetch, report)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    cache = {k: sum(c[k] for c in counts.values()) for k in ("hits", "misses")}
    return interrupt, cache


def _collect(ray, ref, run, counts: dict, actor, fetch: bool, report) -> bool:
    """One finished call into its record; False when the worker is gone."""
    from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

    rec = run.record
    try:
        got, payload, cache = ray.get(ref)
    except TaskCancelledError:
        return True  # stays "skipped"
    except RayActorError as e:
        rec.status, rec.error = "failed", f"the Ray worker running it died ({type(e).__name__}: {e})"
        report(rec)
        return False
    except RayTaskError as e:  # the worker's own code raised (a run's failure is in its record)
        rec.status, rec.error = "failed", f"the Ray worker raised: {e}"
        report(rec)
        return True
    _copy_into(rec, got)
    counts[actor] = cache
    if fetch:
        from ..io.paths import output_dir

        root = output_dir()
        rec.files = [str(commit_file(root, rel, data)) for rel, data in payload.items()]
    report(rec)
    return True


def _drain(ray, pending: dict, counts: dict, fetch: bool, report) -> None:
    """After Ctrl-C: the runs in progress finish (their files are whole); a second Ctrl-C, or
    GRACE_SECONDS, stops waiting (the actors are killed next; those runs are 'interrupted')."""
    deadline = time.monotonic() + GRACE_SECONDS
    try:
        while pending and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in done:
                actor, run = pending.pop(ref)
                _collect(ray, ref, run, counts, actor, fetch, report)
    except KeyboardInterrupt:
        log.warning("second interrupt: killing the Ray workers now")
    for _actor, run in pending.values():
        run.record.status, run.record.error = "interrupted", "interrupted by the user"
        report(run.record)
    pending.clear()
