"""UI-format workflow (what ComfyUI's editor saves) → API-format graph (what it queues).

Follows the ComfyUI frontend's `graphToPrompt` and litegraph's `ExecutableNodeDTO`:

- every node with widgets gets its widget values by position: the node class's inputs in
  `INPUT_TYPES` order (required, then optional) that are widgets (INT, FLOAT, STRING,
  BOOLEAN, combos; not `forceInput`). Some widgets carry extra, unserialised companions that
  still take a slot in `widgets_values`: the `control_after_generate` value after an INT named
  seed/noise_seed or with that option (and after a FLOAT with it), the control value plus the
  filter-list value after a combo with it, and the upload button after an `image_upload` /
  `video_upload` / `audio_upload` combo. Missing trailing values take the widget's default.
  `widgets_values` may also be a dict keyed by widget name.
- a linked input overrides the widget of the same name;
- muted nodes (mode 2) are dropped, bypassed nodes (mode 4) are dropped and links through them
  go to their first input of a matching type (same slot index first);
- Reroute / PrimitiveNode / Note / MarkdownNote are virtual: a reroute forwards its input, a
  primitive writes its value into the widgets it feeds (also through reroutes), notes vanish;
- inputs linked to nodes that were dropped are removed;
- version-1 subgraphs (`definitions.subgraphs`) are flattened: inner nodes get the ids
  "<instance id>:<inner id>" (nested: "1:5:3"), as the frontend sends them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..io.errors import LoraLabError
from .workflow_widgets import _serialise_widget_value, widget_specs, widget_values

log = logging.getLogger(__name__)

MODE_NEVER = 2  # muted
MODE_BYPASS = 4
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})


class WorkflowError(LoraLabError):
    """A workflow file that cannot be read or converted."""


# ---------------------------------------------------------------------------------------------
# graph structure


@dataclass
class Link:
    id: int
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: object = None


def _link(raw) -> Link:
    if isinstance(raw, (list, tuple)):  # [id, origin_id, origin_slot, target_id, target_slot, type]
        if len(raw) < 5:
            raise WorkflowError(f"malformed link {raw!r}: expected [id, from_node, from_slot, to_node, to_slot, type]")
        return Link(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] if len(raw) > 5 else None)
    if isinstance(raw, dict):
        try:
            return Link(raw["id"], raw["origin_id"], raw["origin_slot"], raw["target_id"], raw["target_slot"],
                        raw.get("type"))
        except KeyError as e:
            raise WorkflowError(f"malformed link {raw!r}: missing {e}") from None
    raise WorkflowError(f"malformed link {raw!r}")


@dataclass
class Graph:
    """One graph level: the root workflow or a subgraph definition."""

    nodes: dict  # id -> UI node dict
    links: dict  # id -> Link
    inputs: list = field(default_factory=list)  # subgraph definition inputs (names, types)

    @classmethod
    def from_json(cls, data: dict, where: str) -> "Graph":
        nodes = {}
        for n in data.get("nodes") or []:
            if not isinstance(n, dict) or "id" not in n or "type" not in n:
                raise WorkflowError(f"{where}: malformed node {str(n)[:120]}")
            if n["id"] in nodes:  # the editor never saves two; a hand-edited file must not run "last one wins"
                raise WorkflowError(f"{where}: duplicate node id {n['id']!r} ({nodes[n['id']]['type']} and "
                                    f"{n['type']})")
            nodes[n["id"]] = n
        raw_links = data.get("links") or []
        if isinstance(raw_links, dict):
            raw_links = list(raw_links.values())
        links = {}
        for raw in raw_links:
            if raw is None:
                continue
            lk = _link(raw)
            links[lk.id] = lk
        return cls(nodes, links, list(data.get("inputs") or []))


@dataclass
class Exec:
    """A node as the executor sees it: a node of some graph level, under a path of instances."""

    exec_id: str
    node: dict
    graph: Graph
    path: tuple
    instance: "Exec | None"  # the subgraph instance holding this node
    subgraph: Graph | None = None  # set when this node is itself a subgraph instance

    @property
    def mode(self) -> int:
        return self.node.get("mode") or 0

    @property
    def inputs(self) -> list:
        return self.node.get("inputs") or []

    @property
    def outputs(self) -> list:
        return self.node.get("outputs") or []


def _is_valid_connection(a, b) -> bool:
    """litegraph's LiteGraph.isValidConnection for slot types."""
    a = 0 if a in ("", "*", None) else a
    b = 0 if b in ("", "*", None) else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_is_valid_connection(x, y) for x in a.split(",") for y in b.split(","))


class Converter:
    def __init__(self, workflow: dict, registry: dict, display_names: dict):
        self.registry = registry
        self.display_names = display_names
        self.defs = self._collect_definitions(workflow)
        self.root = Graph.from_json(workflow, "workflow")
        self.execs: dict[str, Exec] = {}
        self.order: list[Exec] = []
        self.widget_overrides: dict[tuple[str, str], object] = {}
        self._promoted: dict[str, dict] = {}
        for node in self.root.nodes.values():
            self._add(node, self.root, (), None, frozenset())

    # -- flattening ---------------------------------------------------------------------------
    def _collect_definitions(self, data: dict) -> dict:
        defs = {}
        pending = list(((data.get("definitions") or {}).get("subgraphs")) or [])
        while pending:
            sg = pending.pop()
            if isinstance(sg, dict) and "id" in sg:
                defs.setdefault(sg["id"], sg)
                pending.extend(((sg.get("definitions") or {}).get("subgraphs")) or [])
        return defs

    def _add(self, node: dict, graph: Graph, path: tuple, instance: Exec | None, seen: frozenset) -> None:
        exec_id = ":".join(str(p) for p in (*path, node["id"]))
        ex = Exec(exec_id, node, graph, path, instance)
        self.execs[exec_id] = ex
        sub = self.defs.get(node["type"])
        if sub is None:
            self.order.append(ex)
            return
        if node["type"] in seen:
            raise WorkflowError(f"subgraph {sub.get('name') or node['type']!r} contains itself (node {exec_id})")
        ex.subgraph = Graph.from_json(sub, f"subgraph {sub.get('name') or node['type']!r}")
        for inner in ex.subgraph.nodes.values():
            self._add(inner, ex.subgraph, (*path, node["id"]), ex, seen | {node["type"]})

    def _exec_in(self, graph_owner: Exec, node_id) -> Exec | None:
        return self.execs.get(":".join(str(p) for p in (*graph_owner.path, node_id)))

    # -- primitives -----------------------------------------------------------------------
    def apply_primitives(self) -> None:
        """PrimitiveNode.applyToGraph: its value replaces the widget of every input it feeds."""
        for ex in self.execs.values():
            if ex.node["type"] != "PrimitiveNode":
                continue
            values = ex.node.get("widgets_values") or []
            if not values:
                continue
            for out in ex.outputs[:1]:
                self._push_value(ex, out.get("links") or [], values[0], set())

    def _push_value(self, src: Exec, link_ids: list, value, seen: set) -> None:
        for link_id in link_ids:
            lk = src.graph.links.get(link_id)
            if lk is None or link_id in seen:
                continue
            seen.add(link_id)
            target = self._exec_in(src, lk.target_id)
            if target is None:
                continue
            if target.node["type"] == "Reroute":
                for out in target.outputs[:1]:
                    self._push_value(target, out.get("links") or [], value, seen)
                continue
            slot = target.inputs[lk.target_slot] if lk.target_slot < len(target.inputs) else {}
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            if name:
                self.widget_overrides[(target.exec_id, name)] = value

    # -- link resolution (ExecutableNodeDTO.resolveInput / resolveOutput) ---------------------
    def resolve_input(self, ex: Exec, slot: int, visited: set, type_=None):
        """None (nothing connected), ("value", v) (a promoted widget) or (origin exec id, slot)."""
        key = (ex.exec_id, "I", slot)
        if key in visited:
            raise WorkflowError(f"circular link resolution at input {slot} of node {ex.exec_id}")
        visited.add(key)
        if slot >= len(ex.inputs):
            return None
        inp = ex.inputs[slot]
        link_id = inp.get("link")
        if link_id is None:
            return None
        lk = ex.graph.links.get(link_id)
        if lk is None:
            raise WorkflowError(f"node {ex.exec_id} input {inp.get('name')!r} refers to missing link {link_id}")
        if lk.origin_id == SUBGRAPH_INPUT_ID and ex.instance is not None:
            return self._resolve_from_instance(ex.instance, lk.origin_slot, visited, type_ or inp.get("type"))
        origin = self._exec_in(ex, lk.origin_id)
        if origin is None:
            raise WorkflowError(f"link {link_id} into node {ex.exec_id} comes from missing node {lk.origin_id}")
        return self.resolve_output(origin, lk.origin_slot, type_ or inp.get("type"), visited)

    def _resolve_from_instance(self, inst: Exec, sub_slot: int, visited: set, type_):
        sub_inputs = inst.subgraph.inputs
        name = sub_inputs[sub_slot].get("name") if sub_slot < len(sub_inputs) else None
        # By name only, as the frontend pairs them: an instance whose saved inputs lack the name has
        # nothing wired there (a positional guess would wire some other, linked input).
        idx = next((i for i, s in enumerate(inst.inputs) if name is not None and s.get("name") == name), None)
        if idx is None:
            promoted = self.promoted_values(inst)
            return ("value", promoted[name]) if name in promoted else None
        if inst.inputs[idx].get("link") is None:
            promoted = self.promoted_values(inst)
            return ("value", promoted[name]) if name in promoted else None
        return self.resolve_input(inst, idx, visited, type_)

    def resolve_output(self, ex: Exec, slot: int, type_, visited: set):
        key = (ex.exec_id, "O", slot)
        if key in visited:
            raise WorkflowError(f"circular link resolution at output {slot} of node {ex.exec_id}")
        visited.add(key)
        if ex.mode == MODE_BYPASS:
            idx = self._bypass_slot(ex, slot, type_)
            return None if idx < 0 else self.resolve_input(ex, idx, visited)
        if ex.subgraph is not None:
            inner_link = next((lk for lk in ex.subgraph.links.values()
                               if lk.target_id == SUBGRAPH_OUTPUT_ID and lk.target_slot == slot), None)
            if inner_link is None:
                return None
            inner = self.execs.get(":".join(str(p) for p in (*ex.path, ex.node["id"], inner_link.origin_id)))
            return None if inner is None else self.resolve_output(inner, inner_link.origin_slot, type_, visited)
        if ex.node["type"] in VIRTUAL_TYPES:
            return self.resolve_input(ex, slot, visited, type_) if slot < len(ex.inputs) else None
        return (ex.exec_id, slot)

    @staticmethod
    def _bypass_slot(ex: Exec, slot: int, type_) -> int:
        inputs = ex.inputs
        if type_ in ("*", "", None):
            return slot if len(inputs) > slot else 0
        out_type = ex.outputs[slot].get("type") if slot < len(ex.outputs) else None
        if slot < len(inputs):
            t = inputs[slot].get("type")
            if _is_valid_connection(t, out_type) and _is_valid_connection(t, type_):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == type_:
                return i
        for i, inp in enumerate(inputs):
            if _is_valid_connection(inp.get("type"), out_type) and _is_valid_connection(inp.get("type"), type_):
                return i
        return -1

    # -- widgets ------------------------------------------------------------------------------
    def promoted_values(self, inst: Exec) -> dict:
        """{subgraph input name: value} of the widgets a subgraph instance shows for its inputs.

        One value per promoted input (an input with a `widget`), in input order, as the current
        frontend saves them. Counts that disagree (older saves with extra control slots, or
        proxyWidgets-only promotions) give no values: the inner nodes keep their own.
        """
        if inst.exec_id in self._promoted:
            return self._promoted[inst.exec_id]
        promoted = [s for s in inst.inputs if s.get("widget")]
        saved = inst.node.get("widgets_values")
        out = {}
        if isinstance(saved, dict):
            out = {s["name"]: saved[s["name"]] for s in promoted if s.get("name") in saved}
        elif saved:
            saved = list(saved)
            if len(saved) == len(promoted):
                out = {s["name"]: v for s, v in zip(promoted, saved)}
            elif promoted:
                log.warning("subgraph instance %s: %d widget values for %d promoted inputs; using the inner "
                            "widget values instead", inst.exec_id, len(saved), len(promoted))
        for s in promoted:
            if (inst.exec_id, s["name"]) in self.widget_overrides:
                out[s["name"]] = self.widget_overrides[(inst.exec_id, s["name"])]
        self._promoted[inst.exec_id] = out
        return out

    def _muted(self, ex: Exec) -> bool:
        """Muted or bypassed, itself or through an enclosing subgraph instance."""
        while ex is not None:
            if ex.mode in (MODE_NEVER, MODE_BYPASS):
                return True
            ex = ex.instance
        return False

    def title(self, ex: Exec) -> str:
        t = ex.node.get("type")
        return ex.node.get("title") or self.display_names.get(t) or t

    def convert(self) -> dict:
        self.apply_primitives()
        prompt = {}
        for ex in self.order:
            class_type = ex.node["type"]
            if class_type in VIRTUAL_TYPES or self._muted(ex):
                continue
            if class_type.startswith(("workflow>", "workflow/")):
                raise WorkflowError(f"node {ex.exec_id} is a legacy group node ({class_type!r}); "
                                    "convert it to a subgraph in ComfyUI first")
            inputs = {}
            cls = self.registry.get(class_type)
            if cls is not None:
                try:
                    specs = widget_specs(cls.INPUT_TYPES())
                except Exception as e:  # a node class that cannot describe itself
                    raise WorkflowError(f"node {ex.exec_id} ({class_type}): INPUT_TYPES() failed: {e}") from e
                for name, value in widget_values(specs, ex.node.get("widgets_values")).items():
                    value = self.widget_overrides.get((ex.exec_id, name), value)
                    inputs[name] = _serialise_widget_value(value)
            for i, inp in enumerate(ex.inputs):
                resolved = self.resolve_input(ex, i, set())
                if resolved is None:
                    continue
                if resolved[0] == "value":
                    inputs[inp["name"]] = _serialise_widget_value(resolved[1])
                else:
                    inputs[inp["name"]] = [resolved[0], int(resolved[1])]
            prompt[ex.exec_id] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": self.title(ex)}}
        for node in prompt.values():  # inputs connected to removed nodes
            for name in [k for k, v in node["inputs"].items() if isinstance(v, list) and v[0] not in prompt]:
                del node["inputs"][name]
        return prompt


def ui_to_api(workflow: dict, registry: dict, display_names: dict | None = None) -> dict:
    """Convert a UI-format workflow to the API graph the ComfyUI frontend would queue.

    `registry` maps class types to node classes (their INPUT_TYPES give the widget order);
    handed in by the caller (defs/cli). Nodes of unknown classes keep their links but get
    no widget values (validation then reports the unknown type).
    """
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError("not a UI-format workflow: no 'nodes' list")
    return Converter(workflow, registry, display_names or {}).convert()
