"""Run validated API graphs with ComfyUI's execution semantics, standalone.

- Output nodes (OUTPUT_NODE = True) decide what runs: they and everything they depend on,
  dependencies first; nothing else.
- Node outputs are cached by input signature, as ComfyUI's CacheKeySetInputSignature does:
  class type, IS_CHANGED result, constant inputs and, recursively, the signatures of linked
  nodes (plus the node id for NOT_IDEMPOTENT nodes and nodes with a UNIQUE_ID hidden input).
  One `Executor` keeps its cache across every graph it runs, so 50 graphs on one checkpoint
  load it once. Entries that the last `keep_runs` runs did not use are dropped (ComfyUI's
  classic cache keeps what the latest prompt used). An IS_CHANGED that returns NaN (or raises)
  makes the node run every time.
- Output nodes always run (a headless run exists to write its files); intermediate nodes run
  only on a cache miss.
- Inputs are passed like ComfyUI: lists of values with INPUT_IS_LIST / OUTPUT_IS_LIST
  mapping, hidden PROMPT (the API graph), EXTRA_PNGINFO ({"workflow": ui} or None) and
  UNIQUE_ID (the node id); nodes run under torch.inference_mode(). Not supported: lazy
  inputs (evaluated eagerly), node expansion ("expand" results), ExecutionBlocker, async nodes.

Run labels. `run(..., label=...)` sets `current_run_label()` while the graph runs (the CLI
labels each combination of a sweep, e.g. "graph_seed-5_strength-0.5"). Saver nodes that
write files append it to their filename prefix when it is set, so every combination of a
sweep gets its own deterministic file names. Writers must be atomic (temp file, then
rename), so an interrupt never leaves a half-written file.

Saved files are reported as ComfyUI's savers report them: {"ui": {"images": [{"filename",
"subfolder", "type": "output"}]}} (any ui key whose entries carry a filename).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from ..io import notices
from ..io.errors import InterruptedByUser, LoraLabError
from .graph_validate import (
    GraphValidationError,
    ValidatedGraph,
    is_link,
    validate_graph,
)

log = logging.getLogger(__name__)

_RUN_LABEL: contextvars.ContextVar = contextvars.ContextVar("lora_lab_run_label", default=None)


def current_run_label() -> str | None:
    """The label of the run in progress (set by the headless runner for sweeps), else None."""
    return _RUN_LABEL.get()


@contextlib.contextmanager
def run_label(label: str | None):
    token = _RUN_LABEL.set(label)
    try:
        yield
    finally:
        _RUN_LABEL.reset(token)


class NodeExecutionError(LoraLabError):
    """A node raised while running; names the node and keeps the cause."""

    def __init__(self, node_id: str, title: str, class_type: str, cause: BaseException | str):
        self.node_id, self.title, self.class_type = node_id, title, class_type
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        name = f'"{title}" ({class_type})' if title and title != class_type else f"({class_type})"
        super().__init__(f"node {node_id} {name} failed: {reason}")


class RunInterrupted(LoraLabError):
    """Ctrl-C (or ComfyUI's interrupt) during a run; `result` holds what was done."""

    def __init__(self, result: "RunResult", cause: BaseException | None = None):
        self.result, self.cause = result, cause
        super().__init__(f"{result.name}: interrupted")


@dataclass
class RunResult:
    name: str
    status: str = "ok"  # ok | failed | interrupted
    error: str | None = None
    problems: list = field(default_factory=list)  # validation problems (dicts)
    files: list = field(default_factory=list)  # absolute paths of files written
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # node id -> seconds (executed nodes)
    executed: list = field(default_factory=list)
    cached: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)  # output node id -> merged ui dict
    label: str | None = None
    warnings: list = field(default_factory=list)  # {"node", "title", "message"} (io.notices), also of cached nodes

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class OutputCache:
    """Node outputs by input signature, shared by the runs of one invocation."""

    def __init__(self, keep_runs: int = 1):
        if keep_runs < 1:
            raise ValueError(f"keep_runs must be at least 1, got {keep_runs!r}")
        self.keep_runs = keep_runs
        self._entries: dict[str, list] = {}
        self._last_used: dict[str, int] = {}
        self._run = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sig: str):
        if sig in self._entries:
            self.hits += 1
            self._last_used[sig] = self._run
            return self._entries[sig]
        self.misses += 1
        return None

    def put(self, sig: str, outputs: list) -> None:
        self._entries[sig] = outputs
        self._last_used[sig] = self._run

    def end_run(self) -> None:
        """Drop entries that none of the last `keep_runs` runs used, then start the next run."""
        oldest = self._run - self.keep_runs + 1
        for sig in [s for s, r in self._last_used.items() if r < oldest]:
            del self._entries[sig], self._last_used[sig]
        self._run += 1

    def clear(self) -> None:
        self._entries.clear()
        self._last_used.clear()


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=repr, allow_nan=True)


def _unbox(value):
    return value["__value__"] if isinstance(value, dict) and "__value__" in value else value


def _hidden_inputs(types: dict) -> dict:
    return dict(types.get("hidden") or {})


def _inference_mode():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return contextlib.nullcontext()
    return torch.inference_mode()


class Executor:
    """Runs API graphs one after another, sharing one output cache."""

    def __init__(self, registry: dict, cache: OutputCache | None = None, quiet: bool = False,
                 keep_runs: int = 1):
        self.registry = registry  # class type -> node class, handed in by the caller
        self.cache = cache if cache is not None else OutputCache(keep_runs)
        self.quiet = quiet
        self._notes: dict[str, tuple] = {}  # signature -> warnings its node gave when it ran

    # -- public -------------------------------------------------------------------------------
    def validate(self, prompt: dict) -> ValidatedGraph:
        return validate_graph(prompt, self.registry)

    def run(self, prompt: dict, *, extra_pnginfo: dict | None = None, label: str | None = None,
            name: str = "graph") -> RunResult:
        """Validate then execute one graph. Failures come back in the result; an interrupt raises
        RunInterrupted (carrying the partial result)."""
        result = RunResult(name=name, label=label)
        start = time.perf_counter()
        try:
            graph = self.validate(prompt)
        except GraphValidationError as e:
            result.status, result.error = "failed", str(e)
            result.problems = [p.to_dict() for p in e.problems]
            result.seconds = time.perf_counter() - start
            return result
        try:
            with run_label(label), _inference_mode():
                self._execute(graph, extra_pnginfo, result)
        except (KeyboardInterrupt, InterruptedByUser) as e:
            result.status, result.error = "interrupted", "interrupted by the user"
            result.seconds = time.perf_counter() - start
            raise RunInterrupted(result, e) from None
        except NodeExecutionError as e:
            log.debug("%s failed", name, exc_info=True)
            result.status, result.error = "failed", str(e)
        except RecursionError:  # (all graph walks are iterative) one graph never stops the others
            result.status, result.error = "failed", "graph nested too deeply to run"
        finally:
            self.cache.end_run()
        result.seconds = time.perf_counter() - start
        return result

    # -- internals ----------------------------------------------------------------------------
    def _execute(self, graph: ValidatedGraph, extra_pnginfo, result: RunResult) -> None:
        from tqdm import tqdm

        prompt, registry = graph.prompt, graph.registry
        outputs: dict[str, list] = {}
        signatures: dict[str, str] = {}
        output_ids = set(graph.outputs)
        with tqdm(total=len(graph.order), desc=result.name, unit="node", leave=False,
                  disable=self.quiet, dynamic_ncols=True) as bar:
            for node_id in graph.order:
                node = prompt[node_id]
                cls = registry[node["class_type"]]
                title = (node.get("_meta") or {}).get("title") or node["class_type"]
                bar.set_postfix_str(f"{node_id} {title}"[:40])
                sig = self._signature(node_id, prompt, registry, signatures, extra_pnginfo)
                if node_id not in output_ids:
                    cached = self.cache.get(sig)
                    if cached is not None:
                        outputs[node_id] = cached
                        result.cached.append(node_id)
                        result.warnings += [{"node": node_id, "title": title, "message": m}
                                            for m in self._notes.get(sig, ())]
                        bar.update(1)
                        continue
                t0 = time.perf_counter()
                with notices.collect() as notes:
                    out, ui = self._run_node(node_id, node, cls, title, prompt, outputs, extra_pnginfo)
                result.warnings += [{"node": node_id, "title": title, "message": m} for m in notes]
                if notes and sig is not None:
                    self._notes[sig] = tuple(notes)  # a cached output still carries its warnings
                result.timings[node_id] = time.perf_counter() - t0
                result.executed.append(node_id)
                outputs[node_id] = out
                if node_id not in output_ids and sig is not None:
                    self.cache.put(sig, out)
                if ui:
                    result.ui[node_id] = ui
                    result.files.extend(_files_from_ui(ui))
                log.debug("node %s (%s) ran in %.3f s", node_id, node["class_type"], result.timings[node_id])
                bar.update(1)

    def _signature(self, node_id, prompt, registry, memo, extra_pnginfo) -> str | None:
        """The node's cache key; its inputs' keys first, with a stack (chains of any length;
        the validated graph has no cycles)."""
        pending, expanded = [node_id], set()
        while pending:
            nid = pending[-1]
            if nid in memo:
                pending.pop()
                continue
            todo = [str(v[0]) for v in prompt[nid]["inputs"].values() if is_link(v) and str(v[0]) not in memo]
            if todo:
                if nid in expanded:  # its inputs are still open when we come back: a cycle
                    raise LoraLabError(f"dependency cycle through node {nid}")
                expanded.add(nid)
                pending.extend(todo)
                continue
            memo[nid] = self._own_signature(nid, prompt, registry, memo, extra_pnginfo)
            pending.pop()
        return memo[node_id]

    def _own_signature(self, node_id, prompt, registry, memo, extra_pnginfo) -> str:
        """The cache key of a node whose inputs' keys are in `memo`."""
        node = prompt[node_id]
        cls = registry[node["class_type"]]
        types = cls.INPUT_TYPES()
        parts = [node["class_type"], self._is_changed(node_id, node, cls, types, prompt, extra_pnginfo)]
        if getattr(cls, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in _hidden_inputs(types).values():
            parts.append(["id", node_id])
        for name in sorted(node["inputs"]):
            value = node["inputs"][name]
            if is_link(value):
                parts.append([name, "link", memo[str(value[0])], value[1]])
            else:
                parts.append([name, "value", _canonical(value)])
        sig = hashlib.sha256(_canonical(parts).encode()).hexdigest()
        memo[node_id] = sig
        return sig

    def _is_changed(self, node_id, node, cls, types, prompt, extra_pnginfo):
        fn = getattr(cls, "IS_CHANGED", None)
        if fn is None:
            return None
        declared = {**(types.get("required") or {}), **(types.get("optional") or {})}
        kwargs = {k: (None if is_link(v) else _unbox(v)) for k, v in node["inputs"].items() if k in declared}
        kwargs.update(self._hidden_values(types, node_id, prompt, extra_pnginfo))
        try:
            value = fn(**kwargs)
        except Exception as e:  # ComfyUI: warn and treat as always changed
            log.warning("node %s: IS_CHANGED raised %s: %s; it will run every time", node_id, type(e).__name__, e)
            return ["always", uuid.uuid4().hex]
        if isinstance(value, float) and math.isnan(value):
            return ["always", uuid.uuid4().hex]
        return _canonical(value)

    @staticmethod
    def _hidden_values(types, node_id, prompt, extra_pnginfo) -> dict:
        values = {}
        for name, kind in _hidden_inputs(types).items():
            if kind == "PROMPT":
                values[name] = prompt
            elif kind == "EXTRA_PNGINFO":
                values[name] = extra_pnginfo
            elif kind == "UNIQUE_ID":
                values[name] = node_id
            else:
                values[name] = None
        return values

    def _run_node(self, node_id, node, cls, title, prompt, outputs, extra_pnginfo):
        types = cls.INPUT_TYPES()
        declared = {**(types.get("required") or {}), **(types.get("optional") or {})}
        data: dict[str, list] = {}
        for name, value in node["inputs"].items():
            if name not in declared:
                continue
            if is_link(value):
                data[name] = outputs[str(value[0])][value[1]]
            else:
                data[name] = [_unbox(value)]
        for name, value in self._hidden_values(types, node_id, prompt, extra_pnginfo).items():
            data[name] = [value]
        try:
            obj = cls()
            fn = getattr(obj, cls.FUNCTION)
            if getattr(cls, "INPUT_IS_LIST", False):
                returns = [fn(**data)]
            elif not data:
                returns = [fn()]
            else:
                n = max(len(v) for v in data.values())
                returns = [fn(**{k: v[i if i < len(v) else -1] for k, v in data.items()}) for i in range(n)]
        except (KeyboardInterrupt, InterruptedByUser):
            raise
        except Exception as e:
            raise NodeExecutionError(node_id, title, node["class_type"], e) from e
        return self._merge(node_id, node, cls, title, returns)

    @staticmethod
    def _merge(node_id, node, cls, title, returns):
        n_out = len(getattr(cls, "RETURN_TYPES", ()))
        results, uis = [], []
        for r in returns:
            if isinstance(r, dict):
                if "expand" in r:
                    raise NodeExecutionError(node_id, title, node["class_type"],
                                             "node expansion is not supported by the headless runner")
                if "ui" in r:
                    uis.append(r["ui"])
                if "result" in r:
                    results.append(tuple(r["result"] or ()))
            elif r is None and n_out == 0:
                continue
            elif isinstance(r, (tuple, list)):
                results.append(tuple(r))
            else:
                raise NodeExecutionError(node_id, title, node["class_type"],
                                         f"returned {type(r).__name__}, expected a tuple of {n_out} output(s)")
        for r in results:
            if len(r) != n_out:
                raise NodeExecutionError(node_id, title, node["class_type"],
                                         f"returned {len(r)} output(s), RETURN_TYPES declares {n_out}")
        is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", ())) or (False,) * n_out
        merged = []
        for i in range(n_out):
            if i < len(is_list) and is_list[i]:
                merged.append([v for r in results for v in r[i]])
            else:
                merged.append([r[i] for r in results])
        ui = {}
        for u in uis:
            for key, value in (u or {}).items():
                ui.setdefault(key, [])
                ui[key].extend(value if isinstance(value, list) else [value])
        return merged, ui


def _files_from_ui(ui: dict) -> list[str]:
    from ..io.paths import output_dir

    root = output_dir()
    files = []
    for entries in ui.values():
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("filename"), str) and e.get("type", "output") == "output":
                files.append(str(root / (e.get("subfolder") or "") / e["filename"]))
    return files
