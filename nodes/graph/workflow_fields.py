"""Field checks of UI-format workflow nodes: a malformed field is named by node and field
(the converter would otherwise fail deep inside with an AttributeError naming nothing)."""
from __future__ import annotations

import re

from ..io.errors import LoraLabError


class WorkflowError(LoraLabError):
    """A workflow file that cannot be read or converted."""


def _bad_field(where: str, node: dict, field_name: str, value, expected: str) -> WorkflowError:
    return WorkflowError(f"{where}: node {node.get('id')!r} ({node.get('type')!r}): field {field_name!r} = "
                         f"{str(value)[:80]!r}: expected {expected}")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_node_fields(n: dict, where: str) -> None:
    """The fields the converter reads, with their types; a bad one named by node and field.
    A numeric `mode` string ("4", as some tools write it) is allowed: see node_mode."""
    if not isinstance(n["type"], str) or not n["type"]:
        raise _bad_field(where, n, "type", n["type"], "a node type name")
    if not isinstance(n["id"], (int, str)) or isinstance(n["id"], bool):
        raise _bad_field(where, n, "id", n["id"], "an integer or string id")
    mode = n.get("mode")
    if mode is not None and not is_int(mode) and not (isinstance(mode, str) and mode.strip().isdigit()):
        raise _bad_field(where, n, "mode", mode, "an integer (0 always, 2 muted, 4 bypassed)")
    if n.get("title") is not None and not isinstance(n["title"], str):
        raise _bad_field(where, n, "title", n["title"], "a string")
    wv = n.get("widgets_values")
    if wv is not None and not isinstance(wv, (list, dict)):
        raise _bad_field(where, n, "widgets_values", wv, "a list or an object")
    for side in ("inputs", "outputs"):
        slots = n.get(side)
        if slots is None:
            continue
        if not isinstance(slots, list):
            raise _bad_field(where, n, side, slots, "a list of slots")
        for i, slot in enumerate(slots):
            if not isinstance(slot, dict):
                raise _bad_field(where, n, f"{side}[{i}]", slot, "a slot object")
            if slot.get("name") is not None and not isinstance(slot["name"], str):
                raise _bad_field(where, n, f"{side}[{i}].name", slot["name"], "a string")
            if side == "inputs" and slot.get("link") is not None and not is_int(slot["link"]):
                raise _bad_field(where, n, f"inputs[{i}].link", slot["link"], "a link id (integer) or null")
            if side == "outputs":
                links = slot.get("links")
                if links is not None and not (isinstance(links, list) and all(is_int(x) for x in links)):
                    raise _bad_field(where, n, f"outputs[{i}].links", links, "a list of link ids or null")
            if slot.get("widget") is not None and not isinstance(slot["widget"], dict):
                raise _bad_field(where, n, f"{side}[{i}].widget", slot["widget"], "an object")


def node_mode(n: dict) -> int:
    """A node's mode as a number (0 always, 2 muted, 4 bypassed), "4" read as 4."""
    mode = n.get("mode") or 0
    return int(mode.strip()) if isinstance(mode, str) else mode


# The frontend's zNodePackMetadata (workflowSchema.ts): which node-pack fields of a node's
# properties ride along in the queued `_meta`, and in what shape.
_REPO_LIKE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9._-]*[a-zA-Z0-9])?", re.ASCII)  # (used with fullmatch)
_GITHUB_USER = re.compile(r"(?!-)(?!.*--)[a-zA-Z0-9-]+(?<!-)", re.ASCII)
_GIT_HASH = re.compile(r"[0-9a-fA-F]{4,40}", re.ASCII)
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([\da-z-]+(?:\.[\da-z-]+)*))?"
                     r"(?:\+([\da-z-]+(?:\.[\da-z-]+)*))?", re.ASCII)


def _repo_like(v) -> bool:
    return isinstance(v, str) and 1 <= len(v) <= 100 and bool(_REPO_LIKE.fullmatch(v))


def pack_metadata(properties) -> dict:
    """{cnr_id, aux_id, ver} of a node's properties that are well formed (others are left out)."""
    if not isinstance(properties, dict):
        return {}
    out = {}
    if _repo_like(properties.get("cnr_id")):
        out["cnr_id"] = properties["cnr_id"]
    aux = properties.get("aux_id")
    if isinstance(aux, str) and aux.count("/") == 1:
        user, repo = aux.split("/")
        if 1 <= len(user) <= 39 and _GITHUB_USER.fullmatch(user) and _repo_like(repo):
            out["aux_id"] = aux
    ver = properties.get("ver")
    if ver == "unknown":
        out["ver"] = ver
    elif isinstance(ver, str):
        v = ver.removeprefix("v")
        if _SEMVER.fullmatch(v) or _GIT_HASH.fullmatch(v):
            out["ver"] = v
    return out
