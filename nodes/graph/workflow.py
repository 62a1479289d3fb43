"""Read workflows (API JSON, UI JSON, PNG with ComfyUI chunks) and edit API graphs (overrides).

- API format ("prompt"): {node_id: {"class_type", "inputs", "_meta": {"title"}}}; also accepted
  wrapped as the body of ComfyUI's POST /prompt ({"prompt": ..., "extra_data": {...}}).
- UI format: what the editor saves (nodes, links, widgets_values; version 0.4 or 1, with
  subgraph definitions); converted by `workflow_ui.ui_to_api` as the frontend does.
- PNG: the `prompt` (API) and `workflow` (UI) text chunks ComfyUI writes. The `prompt` chunk
  is what actually ran, so it is used when present; the `workflow` chunk is kept for
  EXTRA_PNGINFO (and converted when it is the only one). A `prompt` chunk of an older ComfyUI
  that lacks required inputs added since (VAEEncodeForInpaint.grow_mask_by) while the converted
  `workflow` chunk has them is replaced by that conversion, with a warning naming what was
  missing (ComfyUI's UI loads the workflow chunk of such a PNG, so it runs there too). A PNG with neither but an A1111
  `parameters` chunk (A1111, Civitai) becomes the graph those parameters describe (a1111.py).
"""
from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..io.errors import LoraLabError, NodeInputError
from .workflow_ui import WorkflowError, ui_to_api
from .workflow_widgets import combo_options, spec_parts, widget_kind

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # graphs / A1111 parameters inside a picture
GRAPH_SUFFIXES = (".json",) + IMAGE_SUFFIXES

__all__ = [
    "Workflow", "WorkflowError", "OverrideError", "Assignment", "load_workflow", "parse_workflow",
    "is_api_graph", "is_ui_graph", "read_png_chunks", "collect_graph_files", "find_node",
    "apply_assignments", "parse_assignment", "ui_to_api",
]


@dataclass
class Workflow:
    source: str  # where it came from (a path, or "<memory>")
    name: str  # short name (file stem) for labels and reports
    prompt: dict  # the API graph
    ui: dict | None = None  # the UI workflow, when the source carried one (for EXTRA_PNGINFO)
    unmapped: dict | None = None  # A1111 parameters this graph does not reproduce: field -> why
    warnings: tuple = ()  # how the graph was read, when not as the file says (a fallback)

    @property
    def extra_pnginfo(self) -> dict | None:
        return {"workflow": self.ui} if self.ui is not None else None


def is_api_graph(data) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "class_type" in v for v in data.values()))


def is_ui_graph(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _normalise_api(prompt: dict) -> dict:
    """A deep copy with string node ids and [str id, int slot] links."""
    out = {}
    for node_id, node in prompt.items():
        node = copy.deepcopy(node)
        node.setdefault("inputs", {})
        if not isinstance(node["inputs"], dict):
            raise WorkflowError(f"node {node_id}: 'inputs' must be an object, got {node['inputs']!r}")
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
                    and isinstance(value[1], int) and not isinstance(value[0], bool):
                node["inputs"][name] = [str(value[0]), value[1]]
        out[str(node_id)] = node
    return out


def _convert_ui(ui: dict, registry: dict, source: str, display_names: dict | None) -> dict:
    try:
        return ui_to_api(ui, registry, display_names)
    except WorkflowError as e:  # named by node and field: say which file too
        raise WorkflowError(f"{source}: {e}") from None
    except (KeyError, IndexError, TypeError, AttributeError) as e:  # malformed nodes, slots or links
        raise WorkflowError(f"{source}: malformed UI workflow ({type(e).__name__}: {e})") from e


def parse_workflow(data, registry: dict, source: str = "<memory>", name: str | None = None,
                   display_names: dict | None = None) -> Workflow:
    """A Workflow from decoded JSON in any supported shape."""
    name = name or Path(source).stem or "graph"
    if isinstance(data, dict) and is_api_graph(data.get("prompt")):
        extra = (data.get("extra_data") or {}).get("extra_pnginfo") or {}
        return Workflow(source, name, _normalise_api(data["prompt"]), extra.get("workflow"))
    if is_api_graph(data):
        return Workflow(source, name, _normalise_api(data), None)
    if is_ui_graph(data):
        return Workflow(source, name, _convert_ui(data, registry, source, display_names), data)
    raise WorkflowError(f"{source}: neither an API-format graph (node id → class_type/inputs) "
                        "nor a UI-format workflow (nodes/links)")


def _ui_fallback(prompt: dict, ui: dict, registry: dict, source: str,
                 display_names: dict | None) -> tuple[dict, str] | None:
    """(the converted UI workflow, a warning) when `prompt` fails validation on missing required
    inputs, the converted workflow has every one of them on the same node (id and class type),
    and the conversion brings no problem the prompt chunk lacks (a missing input file, say, that
    both name stays); None otherwise (the prompt chunk is used and its problems reported)."""
    from .graph_validate import GraphValidationError, validate_graph

    def problems_of(graph):
        try:
            validate_graph(graph, registry)
            return []
        except GraphValidationError as e:
            return e.problems

    def key(pr):
        return pr.kind, str(pr.node_id), pr.input, repr(pr.value)

    problems = problems_of(prompt)
    missing = [pr for pr in problems if pr.kind == "missing_input"]
    if not missing:
        return None
    try:
        converted = _convert_ui(ui, registry, source, display_names)
    except (WorkflowError, RecursionError):
        return None
    for pr in missing:
        node = converted.get(str(pr.node_id))
        if node is None or node.get("class_type") != pr.class_type or pr.input not in (node.get("inputs") or {}):
            return None
    if {key(pr) for pr in problems_of(converted)} - {key(pr) for pr in problems}:
        return None
    names = ", ".join(sorted({f"node {pr.node_id} ({pr.class_type}).{pr.input}" for pr in missing}))
    return converted, (f"{source}: the PNG's 'prompt' chunk (an older ComfyUI's graph) lacks required input(s) "
                       f"{names}; ran its 'workflow' chunk converted instead, as ComfyUI's UI loads it")


def read_png_chunks(path: str | Path) -> dict:
    """The decoded `prompt` / `workflow` text chunks of a PNG written by ComfyUI, and A1111's
    `parameters` text (a PNG chunk, or EXIF in a JPEG / WebP: io/exif_params)."""
    from PIL import Image, UnidentifiedImageError

    from ..io.exif_params import exif_text

    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", None) or {})
            text.update({k: v for k, v in im.info.items() if isinstance(v, str) and k not in text})
            text.update({k: v for k, v in exif_text(im).items() if k not in text})
    except (UnidentifiedImageError, OSError) as e:
        raise WorkflowError(f"{path}: not a readable image ({e})") from None
    chunks = {}
    if isinstance(text.get("parameters"), str):
        chunks["parameters"] = text["parameters"]  # A1111's settings text, kept as text
    for key in ("prompt", "workflow"):
        if key in text:
            try:
                chunks[key] = json.loads(text[key])
            except json.JSONDecodeError as e:
                raise WorkflowError(f"{path}: the {key!r} chunk is not valid JSON ({e})") from None
            except RecursionError:
                raise WorkflowError(f"{path}: the {key!r} chunk is nested too deeply") from None
    return chunks


def _from_a1111(p: Path, text: str) -> Workflow:
    """The graph an A1111 / Civitai PNG's parameters describe (a1111.py); what it cannot map is logged."""
    from .a1111 import graph_from_parameters

    try:
        built = graph_from_parameters(text, p.stem)
    except WorkflowError as e:
        raise WorkflowError(f"{p}: {e}") from None
    for key, why in built.unmapped.items():
        log.warning("%s: A1111 %s: %s", p.name, key, why)
    return Workflow(str(p), p.stem, built.prompt, None, built.unmapped)


def load_workflow(path: str | Path, registry: dict, display_names: dict | None = None) -> Workflow:
    """Read one graph file (.json, or a .png / .jpg / .webp picture carrying a graph or A1111 parameters)."""
    p = Path(path)
    if not p.is_file():
        raise WorkflowError(f"{path}: no such file")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        chunks = read_png_chunks(p)
        ui = chunks.get("workflow") if is_ui_graph(chunks.get("workflow")) else None
        if is_api_graph(chunks.get("prompt")):
            prompt = _normalise_api(chunks["prompt"])
            fallback = _ui_fallback(prompt, ui, registry, str(path), display_names) if ui is not None else None
            if fallback is not None:
                converted, note = fallback
                log.warning("%s", note)
                return Workflow(str(path), p.stem, converted, ui, warnings=(note,))
            return Workflow(str(path), p.stem, prompt, ui)
        if ui is not None:
            return Workflow(str(path), p.stem, _convert_ui(ui, registry, str(path), display_names), ui)
        if chunks.get("parameters"):
            return _from_a1111(p, chunks["parameters"])
        raise WorkflowError(f"{path}: the {p.suffix[1:].upper()} carries no ComfyUI 'prompt' or 'workflow' chunk "
                            "and no A1111 'parameters' chunk" + (" (nor EXIF UserComment)" if p.suffix.lower() != ".png"
                                                                 else ""))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:  # json's decoder recurses once per level
        raise WorkflowError(f"{path}: JSON nested too deeply (thousands of levels); no graph is") from None
    return parse_workflow(data, registry, source=str(path), name=p.stem, display_names=display_names)


def collect_graph_files(paths) -> list[Path]:
    """The graph files named: files as given, folders expanded to their *.json and pictures (.png/.jpg/.jpeg/.webp, sorted)."""
    out = []
    for raw in paths:
        p = Path(raw)
        try:
            is_dir = p.is_dir()
        except (OSError, ValueError):  # a name too long, a NUL byte: loading it names the error
            is_dir = False
        if is_dir:
            out.extend(sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in GRAPH_SUFFIXES))
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# overrides: NODE.input=VALUE, NODE = node id, title or (unique) class type


class OverrideError(LoraLabError, ValueError):
    """A --set / --sweep that names no node, an unknown input, or a value of the wrong type."""


@dataclass(frozen=True)
class Assignment:
    node: str  # node id, title or class type as the user wrote it
    input: str
    value: str  # raw text; converted with the input's type when applied

    @property
    def key(self) -> str:
        return f"{self.node}.{self.input}"


_ASSIGN = re.compile(r"^(?P<node>.+)\.(?P<input>[^.=]+)=(?P<value>.*)$", re.S)


def parse_assignment(text: str) -> Assignment:
    """'NODE.input=VALUE' (NODE may contain dots; the input name may not)."""
    m = _ASSIGN.match(text)
    if not m or not m["node"].strip() or not m["input"].strip():
        raise OverrideError(f"{text!r}: expected NODE.input=VALUE (NODE = node id or title)")
    return Assignment(m["node"].strip(), m["input"].strip(), m["value"])


def find_node(prompt: dict, ref: str) -> str:
    """The id of the node `ref` names: its id, else its title, else its class type (if unique)."""
    if ref in prompt:
        return ref
    for what, get in (("title", lambda n: (n.get("_meta") or {}).get("title")),
                      ("class type", lambda n: n.get("class_type"))):
        hits = [nid for nid, n in prompt.items() if get(n) == ref]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise OverrideError(f"{ref!r} is the {what} of several nodes ({', '.join(hits)}); use the node id")
    def order(kv):  # numeric ids in number order first
        return not str(kv[0]).isdigit(), len(str(kv[0])), str(kv[0])

    listed = [f"{nid} ({(n.get('_meta') or {}).get('title') or n.get('class_type')})"
              for nid, n in sorted(prompt.items(), key=order)]
    more = f", ... ({len(listed) - 40} more)" if len(listed) > 40 else ""
    raise OverrideError(f"no node with id, title or class type {ref!r} in the graph; its nodes (id (title)): "
                        f"{', '.join(listed[:40])}{more}")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert_value(node_label: str, input_name: str, raw, spec) -> object:
    """Text from the command line → the input's type (raw non-strings pass through)."""
    if not isinstance(raw, str):
        return raw
    type_, opts = spec_parts(spec)
    kind = widget_kind(type_, {})  # forceInput widgets still take constants
    try:
        if kind == "INT":
            return int(raw.strip())
        if kind == "FLOAT":
            return float(raw.strip())
        if kind == "BOOLEAN":
            low = raw.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError("expected true/false")
    except ValueError as e:
        raise NodeInputError(node_label, input_name, raw, f"not a valid {kind} ({e})") from None
    if kind == "COMBO":
        options = combo_options(type_, opts)
        if raw in options:
            return raw
        return next((o for o in options if str(o) == raw), raw)  # validation reports a miss
    if kind == "STRING":
        return raw
    raise NodeInputError(node_label, input_name, raw,
                         f"takes a link of type {type_!r}; only widget values can be set")


def _json_or_text(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_assignments(prompt: dict, assignments, registry: dict) -> dict:
    """A copy of `prompt` with each assignment applied (a set value replaces a link too)."""
    out = copy.deepcopy(prompt)
    for a in assignments:
        node_id = find_node(out, a.node)
        node = out[node_id]
        title = (node.get("_meta") or {}).get("title") or node.get("class_type")
        label = f"node {node_id} ({title})"
        cls = registry.get(node.get("class_type"))
        if cls is None:  # validation reports the unknown type; keep the value readable
            node["inputs"][a.input] = _json_or_text(a.value) if isinstance(a.value, str) else a.value
            continue
        types = cls.INPUT_TYPES()
        spec = (types.get("required") or {}).get(a.input) or (types.get("optional") or {}).get(a.input)
        if spec is None:
            known = [*(types.get("required") or {}), *(types.get("optional") or {})]
            raise NodeInputError(label, a.input, a.value, f"no such input; {node.get('class_type')} has {known}")
        node["inputs"][a.input] = convert_value(label, a.input, a.value, spec)
    return out
