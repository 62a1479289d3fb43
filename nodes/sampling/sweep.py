"""Strength sweep: one LoRA at several strengths (optionally × a second axis: another LoRA's
strengths, or seeds), sampled with the same settings and laid out as one labelled contact sheet.

Every cell is sampled from a *new* handle: the input handle's patches (LoRAs applied upstream)
plus the swept LoRA(s) appended, built with `add_loras` (→ `handle.with_patches`). The input
handle is never modified, so the branches that share it are unaffected.

Value lists: numbers separated by commas, semicolons, spaces or new lines, and inclusive
ranges `start:stop:step` ("0:1:0.25" = 0, 0.25, 0.5, 0.75, 1).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.errors import NodeInputError

# torch (also behind io.checks) is imported where it is used: listing the node's inputs stays torch-free.
if TYPE_CHECKING:
    import torch

NODE = "LoraLabStrengthSweep"
AXIS2_CHOICES = ("none", "lora strengths", "seeds")
NO_LORA = "none"
MAX_CELLS = 64
MAX_RANGE = 1000
_SPLIT = re.compile(r"[\s,;]+")


def _number(token: str, kind: type, input_name: str, text: str):
    try:
        value = float(token)
    except ValueError:
        raise NodeInputError(NODE, input_name, text, f"{token!r} is not a number") from None
    if not np.isfinite(value):
        raise NodeInputError(NODE, input_name, text, f"{token!r} is not a finite number")
    if kind is int:
        if not value.is_integer() or value < 0:
            raise NodeInputError(NODE, input_name, text, f"{token!r} is not a whole number ≥ 0")
        return int(value)
    return value


def parse_values(text: str, kind: type = float, input_name: str = "strengths") -> tuple:
    """'0, 0.5 1' or '0:1:0.25' -> a tuple of numbers (ints for kind=int), in the order written."""
    out: list = []
    for token in _SPLIT.split((text or "").strip()):
        if not token:
            continue
        if ":" in token:
            parts = token.split(":")
            if len(parts) != 3:
                raise NodeInputError(NODE, input_name, text, f"range {token!r}: expected start:stop:step")
            start, stop, step = (_number(p, kind, input_name, text) if i < 2 else _number(p, float, input_name, text)
                                 for i, p in enumerate(parts))
            if step <= 0:
                raise NodeInputError(NODE, input_name, text, f"range {token!r}: the step must be positive")
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            if n < 1 or n > MAX_RANGE:
                raise NodeInputError(NODE, input_name, text, f"range {token!r} gives {max(n, 0)} values")
            # start + i*step, rounded so 0.1-steps print as 0.3, not 0.30000000000000004
            out += [kind(round(start + i * step, 10)) for i in range(n)]
        else:
            out.append(_number(token, kind, input_name, text))
    if not out:
        raise NodeInputError(NODE, input_name, text, "give at least one value, e.g. 0, 0.5, 1")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    lora: str
    strengths: tuple  # columns
    axis2: str = "none"
    lora2: str | None = None
    values2: tuple = (None,)  # rows (None: a single row)

    def __post_init__(self):
        if self.axis2 not in AXIS2_CHOICES:
            raise NodeInputError(NODE, "axis2", self.axis2, f"expected one of {AXIS2_CHOICES}")
        cells = len(self.strengths) * len(self.values2)
        if cells > MAX_CELLS:
            raise NodeInputError(NODE, "strengths", f"{len(self.strengths)} × {len(self.values2)}",
                                 f"{cells} images; a sweep makes at most {MAX_CELLS}")


def _strengths(text: str, input_name: str) -> tuple:
    """parse_values, each value within the one strength range (io.checks)."""
    from ..io.checks import check_strength

    values = parse_values(text, float, input_name)
    for v in values:
        check_strength(v, NODE, input_name, shown=text)
    return values


def make_plan(lora_name: str, strengths: str, axis2: str = "none", lora2_name: str | None = None,
              values2: str = "") -> SweepPlan:
    cols = _strengths(strengths, "strengths")
    if axis2 == "none":
        return SweepPlan(lora_name, cols)
    if axis2 == "lora strengths":
        if not lora2_name or lora2_name == NO_LORA:
            raise NodeInputError(NODE, "lora2_name", lora2_name, "axis2 'lora strengths' needs a second LoRA")
        return SweepPlan(lora_name, cols, axis2, lora2_name, _strengths(values2, "values2"))
    if axis2 == "seeds":
        return SweepPlan(lora_name, cols, axis2, None, parse_values(values2, int, "values2"))
    raise NodeInputError(NODE, "axis2", axis2, f"expected one of {AXIS2_CHOICES}")


def fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(name: str) -> str:
    return Path(name.replace("\\", "/")).stem


def labels(plan: SweepPlan) -> tuple[str, list[str], list[str]]:
    """(title, column labels, row labels) of the sheet."""
    title = f"{_short(plan.lora)}: strength"
    cols = [fmt(s) for s in plan.strengths]
    if plan.axis2 == "none":
        return title, cols, []
    if plan.axis2 == "seeds":
        return title + " x seed", cols, [f"seed {v}" for v in plan.values2]
    return title + f" x {_short(plan.lora2)}", cols, [f"{_short(plan.lora2)} {fmt(v)}" for v in plan.values2]


def cell_handle(handle, plan: SweepPlan, strength: float, value2):
    """A new handle: `handle`'s patches + the swept LoRA(s). `handle` itself is not touched."""
    from ..lora.lora_stack import StackEntry, add_loras

    new, _ = add_loras(handle, [StackEntry(plan.lora, strength, strength)], NODE, "lora_name")
    if plan.axis2 == "lora strengths":
        new, _ = add_loras(new, [StackEntry(plan.lora2, value2, value2)], NODE, "lora2_name")
    return new


def run_sweep(handle, plan: SweepPlan, settings, progress=None) -> torch.Tensor:
    """Sample every cell (rows = axis 2, columns = strengths); IMAGE [1, H, W, 3] contact sheet."""
    from .txt2img import generate

    settings = dataclasses.replace(settings, batch_size=1)
    rows = []
    for v2 in plan.values2:
        s = dataclasses.replace(settings, seed=v2) if plan.axis2 == "seeds" else settings
        rows.append([generate(cell_handle(handle, plan, st, v2), s, progress=progress)[0]
                     for st in plan.strengths])
    title, col_labels, row_labels = labels(plan)
    return contact_sheet(rows, col_labels, row_labels, title)


@dataclasses.dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a contact sheet (pixels)."""

    width: int
    height: int
    cell_w: int  # column width (≥ the image width, wide enough for its label)
    label_w: int  # row-label band on the left (0 without row labels)
    top: int  # title + column-label band
    image_h: int
    image_w: int
    pad: int
    line: int  # text line height

    def image_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the image in cell (row, col)."""
        x0 = self.label_w + self.pad + col * (self.cell_w + self.pad) + (self.cell_w - self.image_w) // 2
        y0 = self.top + row * (self.image_h + self.pad)
        return x0, y0, x0 + self.image_w, y0 + self.image_h


def _font_and_measure():
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(t: str) -> int:
        box = probe.textbbox((0, 0), t, font=font)
        return box[2] - box[0]

    return font, text_w, probe.textbbox((0, 0), "Ag", font=font)[3] + 2


def sheet_layout(n_rows: int, image_hw: tuple[int, int], col_labels: list[str], row_labels: list[str],
                 title: str = "", pad: int = 4) -> SheetLayout:
    _, text_w, line = _font_and_measure()
    h, w = image_hw
    cell_w = max(w, *(text_w(t) + 2 * pad for t in col_labels))
    label_w = max((text_w(t) for t in row_labels), default=-2 * pad) + 2 * pad
    top = (line + pad) * (2 if title else 1) + pad
    grid_w = label_w + cell_w * len(col_labels) + pad * (len(col_labels) + 1)
    return SheetLayout(max(grid_w, text_w(title) + 2 * pad), top + (h + pad) * n_rows, cell_w, label_w, top,
                       h, w, pad, line)


def contact_sheet(rows: list[list[torch.Tensor]], col_labels: list[str], row_labels: list[str],
                  title: str = "") -> torch.Tensor:
    """Images [H, W, 3] in a grid with a title line, column labels on top and row labels on the
    left, drawn with PIL's default font; returns IMAGE [1, H', W', 3] in 0..1."""
    from PIL import Image, ImageDraw

    from ..io.image_io import to_pil

    if not rows or any(len(r) != len(col_labels) for r in rows) or (row_labels and len(row_labels) != len(rows)):
        raise ValueError(f"{len(rows)} rows of images for {len(col_labels)} column / {len(row_labels)} row labels")
    font, text_w, _ = _font_and_measure()
    lay = sheet_layout(len(rows), tuple(rows[0][0].shape[:2]), col_labels, row_labels, title)
    sheet = Image.new("RGB", (lay.width, lay.height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    fg = (235, 235, 235)
    if title:
        draw.text((lay.pad, lay.pad), title, fill=fg, font=font)
    y_cols = lay.pad + ((lay.line + lay.pad) if title else 0)
    for c, label in enumerate(col_labels):
        x0 = lay.label_w + lay.pad + c * (lay.cell_w + lay.pad)
        draw.text((x0 + (lay.cell_w - text_w(label)) // 2, y_cols), label, fill=fg, font=font)
    for r, images in enumerate(rows):
        if row_labels:
            y0 = lay.top + r * (lay.image_h + lay.pad)
            draw.text((lay.pad, y0 + (lay.image_h - lay.line) // 2), row_labels[r], fill=fg, font=font)
        for c, image in enumerate(images):
            sheet.paste(to_pil(image), lay.image_box(r, c)[:2])
    import torch

    arr = np.asarray(sheet, dtype=np.float32) / 255.0  # (H', W', 3)
    return torch.from_numpy(arr.copy())[None]
