"""Subgraph definitions as ComfyUI's current frontend (1.5x, litegraph's subgraphDeduplication and
SubgraphNode) configures them before it flattens a graph for queueing:

- definitions are collected depth first (a definition, then the definitions nested in it), the
  first of a repeated id wins;
- inner node ids that collide with a root node id or with an inner id of an earlier definition
  are renumbered: the next id after the graph's last node id (`last_node_id`, or
  `state.lastNodeId` in version 1) that no root node holds; ids that do not collide are kept
  and advance that counter. Links and promoted-widget references inside the definition follow.
  The queued ids ("<instance>:<inner>") carry the new numbers;
- a subgraph input is *promoted* (shows a widget on the instance) when one of its inner links
  ends at a widget socket, directly or through a nested instance's promoted input; the
  instance's `widgets_values` fill its promoted inputs in input order.
"""
from __future__ import annotations

import copy

from .workflow_fields import WorkflowError, is_int

SUBGRAPH_INPUT_ID = -10
MAX_SAFE_INTEGER = 2 ** 53 - 1


def collect_definitions(data: dict) -> dict:
    """{definition id: definition} in the frontend's order (depth first, first of an id wins)."""
    out: dict = {}
    stack = list(reversed(((data.get("definitions") or {}).get("subgraphs")) or []))
    while stack:
        sg = stack.pop()
        if not isinstance(sg, dict) or "id" not in sg:
            continue
        out.setdefault(sg["id"], sg)
        stack.extend(reversed(((sg.get("definitions") or {}).get("subgraphs")) or []))
    return out


def _numeric(key: str) -> int | None:
    """A serialised node id's integer value when it is one written plainly ("12", not "012")."""
    try:
        n = int(key)
    except ValueError:
        return None
    return n if str(n) == key else None


def _last_node_id(data: dict) -> int:
    state = data.get("state")
    if data.get("version") != 0.4 and isinstance(state, dict):
        v = state.get("lastNodeId")
        return v if is_int(v) and 0 <= v <= MAX_SAFE_INTEGER else 0
    v = data.get("last_node_id")
    return v if is_int(v) else 0


def _mint(last: int, used: set) -> int:
    """idAllocation.mintSequentialId: last + 1 unless taken, else the first free id after it."""
    if 0 <= last < MAX_SAFE_INTEGER and last + 1 not in used:
        return last + 1
    candidate = last + 1 if 0 < last + 1 <= MAX_SAFE_INTEGER else 1
    while candidate in used:
        candidate = 1 if candidate == MAX_SAFE_INTEGER else candidate + 1
    return candidate


def _link_ends(link) -> tuple[int, int] | None:
    """Indexes (or keys) of origin_id / target_id in a serialised link."""
    if isinstance(link, dict):
        return ("origin_id", "target_id")
    if isinstance(link, list) and len(link) >= 4:
        return (1, 3)
    return None


def renumber_definitions(data: dict, defs: dict) -> dict:
    """`defs` with colliding inner node ids renumbered as the frontend does (copies of the
    definitions that change; the others are returned as they are)."""
    root_keys = [str(n.get("id")) for n in data.get("nodes") or [] if isinstance(n, dict)]
    used_keys = set(root_keys)
    used_nums = {n for n in map(_numeric, root_keys) if n is not None}
    last = _last_node_id(data)
    out = {}
    for def_id, sg in defs.items():
        name = sg.get("name") or def_id
        remap: dict[str, int] = {}
        own: set[str] = set()
        for node in sg.get("nodes") or []:
            if not isinstance(node, dict) or "id" not in node:
                continue  # Graph.from_json names the malformed node
            key = str(node["id"])
            if key in own:  # the frontend keeps the first; a file must not run a guess
                raise WorkflowError(f"subgraph {name!r}: duplicate node id {node['id']!r}")
            own.add(key)
            if key in used_keys:
                new = _mint(last, used_nums)
                last = new
                remap[key] = new
                used_nums.add(new)
                used_keys.add(str(new))
            else:
                used_keys.add(key)
                n = _numeric(key)
                if n is not None:
                    used_nums.add(n)
                    if 0 <= n <= MAX_SAFE_INTEGER and n > last:
                        last = n
        out[def_id] = _apply_remap(sg, remap) if remap else sg
    return out


def _apply_remap(sg: dict, remap: dict) -> dict:
    sg = copy.deepcopy(sg)
    for node in sg.get("nodes") or []:
        if isinstance(node, dict) and str(node.get("id")) in remap:
            node["id"] = remap[str(node["id"])]
    for link in list(sg.get("links") or []) + list(sg.get("floatingLinks") or []):
        ends = _link_ends(link)
        if ends is None:
            continue
        for end in ends:
            try:
                v = link[end]
            except (KeyError, IndexError):
                continue
            if str(v) in remap:
                link[end] = remap[str(v)]
    for w in sg.get("widgets") or []:
        if isinstance(w, dict) and str(w.get("id")) in remap:
            w["id"] = remap[str(w["id"])]
    return sg


# -- promoted inputs (SubgraphNode._resolveInputWidget) -----------------------------------------


def _links_of_input(sg: dict, slot: int) -> list:
    """The inner links that leave subgraph input `slot`, in the input's linkIds order."""
    links = {}
    for raw in sg.get("links") or []:
        if isinstance(raw, dict):
            links[raw.get("id")] = (raw.get("origin_id"), raw.get("origin_slot"), raw.get("target_id"),
                                    raw.get("target_slot"))
        elif isinstance(raw, list) and len(raw) >= 5:
            links[raw[0]] = (raw[1], raw[2], raw[3], raw[4])
    inputs = sg.get("inputs") or []
    ids = (inputs[slot].get("linkIds") if 0 <= slot < len(inputs) and isinstance(inputs[slot], dict) else None)
    if ids is None:
        ids = [i for i, lk in links.items() if lk[0] == SUBGRAPH_INPUT_ID and lk[1] == slot]
    return [links[i] for i in ids if i in links and links[i][0] == SUBGRAPH_INPUT_ID]


def promoted_inputs(sg: dict, defs: dict, seen: frozenset = frozenset()) -> list[tuple]:
    """The subgraph's inputs that are promoted widgets, in input order, each as (input name,
    inner node id, name, nested): the first inner link that makes it one ends at that node's
    widget `name`, or (nested=True) at that nested instance's promoted input `name`."""
    if sg.get("id") in seen:
        return []
    seen = seen | {sg.get("id")}
    nodes = {n.get("id"): n for n in sg.get("nodes") or [] if isinstance(n, dict)}
    out = []
    for slot, inp in enumerate(sg.get("inputs") or []):
        if not isinstance(inp, dict):
            continue
        for _, _, target_id, target_slot in _links_of_input(sg, slot):
            node = nodes.get(target_id)
            if node is None or not is_int(target_slot):
                continue
            inputs = node.get("inputs") or []
            target = inputs[target_slot] if 0 <= target_slot < len(inputs) else None
            if not isinstance(target, dict):
                continue
            nested = defs.get(node.get("type"))
            if nested is not None:  # a nested instance: promoted when its input of that name is
                if any(p[0] == target.get("name") for p in promoted_inputs(nested, defs, seen)):
                    out.append((inp.get("name"), target_id, target.get("name"), True))
                    break
            elif (target.get("widget") or {}).get("name"):
                out.append((inp.get("name"), target_id, target["widget"]["name"], False))
                break
    return out
