"""The structure of one level of a UI-format workflow (the root, or a subgraph definition): its
nodes by id and its links, as litegraph serialises them (links as arrays at a version-0.4 root,
as objects elsewhere)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .workflow_fields import WorkflowError, check_node_fields, is_int


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
        lk = Link(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] if len(raw) > 5 else None)
    elif isinstance(raw, dict):
        try:
            lk = Link(raw["id"], raw["origin_id"], raw["origin_slot"], raw["target_id"], raw["target_slot"],
                      raw.get("type"))
        except KeyError as e:
            raise WorkflowError(f"malformed link {raw!r}: missing {e}") from None
    else:
        raise WorkflowError(f"malformed link {raw!r}")
    for name in ("id", "origin_slot", "target_slot"):
        if not is_int(getattr(lk, name)):
            raise WorkflowError(f"malformed link {str(raw)[:120]}: field {name!r} = {getattr(lk, name)!r}: "
                                "expected an integer")
    for name in ("origin_id", "target_id"):
        v = getattr(lk, name)
        if not isinstance(v, (int, str)) or isinstance(v, bool):
            raise WorkflowError(f"malformed link {str(raw)[:120]}: field {name!r} = {v!r}: expected a node id")
    return lk


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
            check_node_fields(n, where)
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


def is_valid_connection(a, b) -> bool:
    """litegraph's LiteGraph.isValidConnection for slot types."""
    a = 0 if a in ("", "*", None) else a
    b = 0 if b in ("", "*", None) else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(is_valid_connection(x, y) for x in a.split(",") for y in b.split(","))
