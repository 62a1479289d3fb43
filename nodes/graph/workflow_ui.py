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
  "<instance id>:<inner id>" (nested: "1:5:3"), as the frontend sends them, after the
  frontend's renumbering of inner ids that collide (workflow_subgraphs.py). A muted or bypassed
  instance at the root drops its inner nodes; inside a subgraph, the current frontend (1.58)
  still queues the inner nodes of a muted or bypassed nested instance (their own mode counts);
- `_meta` holds the title and the node pack's `cnr_id` / `aux_id` / `ver` from the node's
  properties where they are well formed (the frontend's zNodePackMetadata).

tests/graph/frontend_fixtures/ holds UI graphs and what frontend 1.58.1's graphToPrompt queued
for them (tests/graph/frontend_capture.py); tests/graph/test_frontend_parity.py compares.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .workflow_fields import WorkflowError, node_mode, pack_metadata
from .workflow_graph import Graph, is_valid_connection
from .workflow_subgraphs import collect_definitions, promoted_inputs, renumber_definitions
from .workflow_widgets import _serialise_widget_value, widget_specs, widget_values

log = logging.getLogger(__name__)

MODE_NEVER = 2  # muted
MODE_BYPASS = 4
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
_IN, _OUT = object(), object()  # the kinds of a link-resolution step


@dataclass
class Exec:
    """A node as the executor sees it: a node of some graph level, under a path of instances."""

    exec_id: str
    node: dict
    graph: Graph
    path: tuple
    instance: "Exec | None"  # the subgraph instance holding this node
    subgraph: Graph | None = None  # set when this node is itself a subgraph instance
    definition: dict | None = None  # and its (renumbered) definition

    @property
    def mode(self) -> int:
        return node_mode(self.node)

    @property
    def inputs(self) -> list:
        return self.node.get("inputs") or []

    @property
    def outputs(self) -> list:
        return self.node.get("outputs") or []


class Converter:
    def __init__(self, workflow: dict, registry: dict, display_names: dict):
        self.registry = registry
        self.display_names = display_names
        self.defs = renumber_definitions(workflow, collect_definitions(workflow))
        self.root = Graph.from_json(workflow, "workflow")
        self.execs: dict[str, Exec] = {}
        self.order: list[Exec] = []
        self.widget_overrides: dict[tuple[str, str], object] = {}
        self._promoted: dict[str, dict] = {}
        for node in self.root.nodes.values():
            self._add(node, self.root, (), None, frozenset())

    # -- flattening ---------------------------------------------------------------------------
    def _add(self, node: dict, graph: Graph, path: tuple, instance: Exec | None, seen: frozenset) -> None:
        """Add a node and, for a subgraph instance, its inner nodes (depth first, in order;
        with a stack, so nesting depth is not limited by Python's recursion limit)."""
        pending = [(node, graph, path, instance, seen)]
        while pending:
            node, graph, path, instance, seen = pending.pop()
            exec_id = ":".join(str(p) for p in (*path, node["id"]))
            ex = Exec(exec_id, node, graph, path, instance)
            self.execs[exec_id] = ex
            sub = self.defs.get(node["type"])
            if sub is None:
                self.order.append(ex)
                continue
            if node["type"] in seen:
                raise WorkflowError(f"subgraph {sub.get('name') or node['type']!r} contains itself (node {exec_id})")
            ex.subgraph = Graph.from_json(sub, f"subgraph {sub.get('name') or node['type']!r}")
            ex.definition = sub
            inner = [(n, ex.subgraph, (*path, node["id"]), ex, seen | {node["type"]})
                     for n in ex.subgraph.nodes.values()]
            pending.extend(reversed(inner))

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
        """applyFirstWidgetValueToGraph: the nodes its links end at, directly (a Reroute in between
        has no widget: the current frontend skips it, and the target keeps its own value)."""
        for link_id in link_ids:
            lk = src.graph.links.get(link_id)
            if lk is None:
                continue
            target = self._exec_in(src, lk.target_id)
            if target is None or target.node["type"] in VIRTUAL_TYPES or target.subgraph is not None:
                continue  # an instance's promoted widget is not read while its input is linked
            slot = target.inputs[lk.target_slot] if 0 <= lk.target_slot < len(target.inputs) else {}
            name = (slot.get("widget") or {}).get("name")
            if name:
                self.widget_overrides[(target.exec_id, name)] = value

    # -- link resolution (ExecutableNodeDTO.resolveInput / resolveOutput) ---------------------
    # One loop over ("I" input | "O" output, exec, slot, type) steps: chains of reroutes,
    # bypassed nodes and subgraph boundaries of any length, without recursion.
    def resolve_input(self, ex: Exec, slot: int, visited: set, type_=None):
        """None (nothing connected), ("value", v) (a promoted widget) or (origin exec id, slot)."""
        return self._resolve((_IN, ex, slot, type_), visited)

    def resolve_output(self, ex: Exec, slot: int, type_, visited: set):
        return self._resolve((_OUT, ex, slot, type_), visited)

    def _resolve(self, step: tuple, visited: set):
        while True:
            step = self._input_step(*step[1:], visited) if step[0] is _IN else self._output_step(*step[1:], visited)
            if step is None or (step[0] is not _IN and step[0] is not _OUT):
                return step

    def _input_step(self, ex: Exec, slot: int, type_, visited: set):
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
            return self._from_instance(ex.instance, lk.origin_slot, type_ or inp.get("type"))
        origin = self._exec_in(ex, lk.origin_id)
        if origin is None:
            raise WorkflowError(f"link {link_id} into node {ex.exec_id} comes from missing node {lk.origin_id}")
        return (_OUT, origin, lk.origin_slot, type_ or inp.get("type"))

    def _from_instance(self, inst: Exec, sub_slot: int, type_):
        sub_inputs = inst.subgraph.inputs
        name = sub_inputs[sub_slot].get("name") if 0 <= sub_slot < len(sub_inputs) else None
        # By name only, as the frontend pairs them: an instance whose saved inputs lack the name has
        # nothing wired there (a positional guess would wire some other, linked input).
        idx = next((i for i, s in enumerate(inst.inputs) if name is not None and s.get("name") == name), None)
        if idx is None:
            promoted = self.promoted_values(inst)
            return ("value", promoted[name]) if name in promoted else None
        if inst.inputs[idx].get("link") is None:
            promoted = self.promoted_values(inst)
            return ("value", promoted[name]) if name in promoted else None
        return (_IN, inst, idx, type_)

    def _output_step(self, ex: Exec, slot: int, type_, visited: set):
        key = (ex.exec_id, "O", slot)
        if key in visited:
            raise WorkflowError(f"circular link resolution at output {slot} of node {ex.exec_id}")
        visited.add(key)
        if ex.mode == MODE_NEVER:  # muted nodes produce no output
            return None
        if ex.mode == MODE_BYPASS:
            idx = self._bypass_slot(ex, slot, type_)
            return None if idx < 0 else (_IN, ex, idx, None)
        if ex.subgraph is not None:
            inner_link = next((lk for lk in ex.subgraph.links.values()
                               if lk.target_id == SUBGRAPH_OUTPUT_ID and lk.target_slot == slot), None)
            if inner_link is None:
                return None
            inner = self.execs.get(":".join(str(p) for p in (*ex.path, ex.node["id"], inner_link.origin_id)))
            return None if inner is None else (_OUT, inner, inner_link.origin_slot, type_)
        if ex.node["type"] in VIRTUAL_TYPES:
            return (_IN, ex, slot, type_) if slot < len(ex.inputs) else None
        return (ex.exec_id, slot)

    @staticmethod
    def _bypass_slot(ex: Exec, slot: int, type_) -> int:
        inputs = ex.inputs
        if type_ in ("*", "", None):
            return slot if len(inputs) > slot else 0
        out_type = ex.outputs[slot].get("type") if slot < len(ex.outputs) else None
        if slot < len(inputs):
            t = inputs[slot].get("type")
            if is_valid_connection(t, out_type) and is_valid_connection(t, type_):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == type_:
                return i
        for i, inp in enumerate(inputs):
            if is_valid_connection(inp.get("type"), out_type) and is_valid_connection(inp.get("type"), type_):
                return i
        return -1

    # -- widgets ------------------------------------------------------------------------------
    def promoted_values(self, inst: Exec) -> dict:
        """{subgraph input name: value} of the widgets a subgraph instance shows for its inputs.

        Its promoted inputs are the definition's (workflow_subgraphs.promoted_inputs). A root-level
        instance fills them in input order from its `widgets_values` (a dict: by name); an input
        without a saved value, and every input of a nested instance (frontend 1.58.1 does not
        restore a nested instance's saved values on load), shows the value of the inner widget
        that made it one, and that value goes to every inner node the input feeds.
        """
        if inst.exec_id in self._promoted:
            return self._promoted[inst.exec_id]
        self._promoted[inst.exec_id] = out = {}
        saved = inst.node.get("widgets_values") if not inst.path else None
        for i, (name, target_id, key, nested) in enumerate(promoted_inputs(inst.definition, self.defs)):
            if isinstance(saved, dict) and name in saved:
                out[name] = saved[name]
            elif isinstance(saved, list) and i < len(saved):
                out[name] = saved[i]
            else:
                target = self.execs.get(f"{inst.exec_id}:{target_id}")
                values = (self.promoted_values(target) if nested else self.widget_values_of(target)) if target else {}
                if key in values:
                    out[name] = values[key]
        return out

    def widget_values_of(self, ex: Exec) -> dict:
        """{widget name: value} of a node, with the values primitives write into it."""
        cls = self.registry.get(ex.node["type"])
        if cls is None:
            return {}
        try:
            specs = widget_specs(cls.INPUT_TYPES())
        except Exception as e:  # a node class that cannot describe itself
            raise WorkflowError(f"node {ex.exec_id} ({ex.node['type']}): INPUT_TYPES() failed: {e}") from e
        return {name: self.widget_overrides.get((ex.exec_id, name), value)
                for name, value in widget_values(specs, ex.node.get("widgets_values")).items()}

    def _muted(self, ex: Exec) -> bool:
        """Not queued: muted or bypassed itself, or inside a muted or bypassed root-level instance
        (graphToPrompt expands only the root instances that run; nested ones always)."""
        if ex.mode in (MODE_NEVER, MODE_BYPASS):
            return True
        while ex.instance is not None:
            ex = ex.instance
        return ex is not None and ex.path == () and ex.subgraph is not None and ex.mode in (MODE_NEVER, MODE_BYPASS)

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
            inputs = {name: _serialise_widget_value(v) for name, v in self.widget_values_of(ex).items()}
            for i, inp in enumerate(ex.inputs):
                resolved = self.resolve_input(ex, i, set())
                if resolved is None:
                    continue
                if resolved[0] == "value":
                    inputs[inp["name"]] = _serialise_widget_value(resolved[1])
                else:
                    inputs[inp["name"]] = [resolved[0], int(resolved[1])]
            meta = {"title": self.title(ex), **pack_metadata(ex.node.get("properties"))}
            prompt[ex.exec_id] = {"inputs": inputs, "class_type": class_type, "_meta": meta}
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
