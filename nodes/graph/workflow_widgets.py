"""Widgets of a node class as ComfyUI's frontend derives them from INPUT_TYPES, and the
assignment of a saved node's `widgets_values` to them (the widget half of UI -> API
conversion; workflow_ui.py does the graph half)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")


@dataclass(frozen=True)
class WidgetSpec:
    name: str
    kind: str  # INT / FLOAT / STRING / BOOLEAN / COMBO
    default: object
    extra_slots: int  # companion widgets after it (control value, combo filter, upload button)


def spec_parts(spec) -> tuple[object, dict]:
    if not isinstance(spec, (list, tuple)) or not spec:
        return spec, {}
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], opts


def widget_kind(type_, opts: dict) -> str | None:
    """The widget a ComfyUI input spec gets in the editor, or None for a socket-only input."""
    if opts.get("forceInput"):
        return None
    if isinstance(type_, (list, tuple)):
        return "COMBO"
    if isinstance(type_, str) and type_ in WIDGET_TYPES:
        return type_
    return None


def combo_options(type_, opts: dict) -> list:
    if isinstance(type_, (list, tuple)):
        return list(type_)
    return list(opts.get("options") or [])


def widget_specs(input_types: dict) -> list[WidgetSpec]:
    """Widgets in the order the editor creates them (and saves their values)."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            type_, opts = spec_parts(spec)
            kind = widget_kind(type_, opts)
            if kind is None:
                continue
            control = opts.get("control_after_generate")
            extra = 0
            if kind == "INT":
                if control if control is not None else name in ("seed", "noise_seed"):
                    extra = 1
                default = opts.get("default", 0)
            elif kind == "FLOAT":
                extra = 1 if control else 0
                default = opts.get("default", 0)
            elif kind == "COMBO":
                extra = 2 if control else 0  # control value + filter list
                extra += sum(1 for key in UPLOAD_OPTIONS if opts.get(key))
                options = combo_options(type_, opts)
                default = opts.get("default") or (options[0] if options else None)
            elif kind == "STRING":
                default = opts.get("default", "")
            else:  # BOOLEAN
                default = opts.get("default", False)
            out.append(WidgetSpec(name, kind, default, extra))
    return out


def _serialise_widget_value(value):
    # Arrays are reserved for links in the API format; the frontend boxes list values.
    return {"__value__": value} if isinstance(value, list) else value


def widget_values(specs: list[WidgetSpec], saved) -> dict:
    """{widget name: value} from a node's `widgets_values` (list by position, or dict by name)."""
    values = {}
    if isinstance(saved, dict):
        for w in specs:
            values[w.name] = saved.get(w.name, w.default)
        return values
    saved = list(saved or [])
    pos = 0
    for w in specs:
        values[w.name] = saved[pos] if pos < len(saved) else w.default
        pos += 1 + w.extra_slots
    if pos < len(saved):
        log.debug("%d widget values beyond the %d widgets were ignored", len(saved) - pos, len(specs))
    return values


