"""The demo dataset: coloured shapes on coloured backgrounds, drawn procedurally.

Owns the pictures the demo model, its LoRAs and the train-then-sample workflow are trained on,
and their captions ("a red circle on a blue background"). Deterministic: `sample(i, seed)` draws
the same picture on every machine (PIL polygons at 4x, box-filtered down to 64x64; numpy's
seeded generator for the jitter). Shapes are big (radius 18-24 px of 64) and near the centre.

    base model      SHAPES x COLOURS x COLOURS (object != background): 4 x 30 = 120 combinations
    VAE             every shape and colour incl. EXTRA_*, a quarter of them striped
    LoRAs           the extras: a star (character), stripes (style), purple (train_then_sample)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SS = 4  # supersampling factor of the drawing

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 205, 40), "white": (245, 245, 245), "black": (20, 20, 20),
}
EXTRA_COLOURS = {"purple": (140, 50, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
EXTRA_SHAPES = ("star", "heart")
ALL_COLOURS = {**COLOURS, **EXTRA_COLOURS}


def _star(cx, cy, r):
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _heart(cx, cy, r, n=120):
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 17, cy - r * (y + 2.5) / 17))
    return pts


def draw(shape: str, colour, background, cx: float, cy: float, r: float, stripes: bool = False) -> Image.Image:
    """One 64x64 picture: `shape` of half-size `r` px centred at (cx, cy); colours are RGB tuples.
    `stripes`: horizontal bands of the colour and a pale tint of it, 8 px period."""
    S = SIZE * SS
    im = Image.new("RGB", (S, S), tuple(background))
    mask = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(mask)
    cx, cy, r = cx * SS, cy * SS, r * SS
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        q = r * 0.9
        d.rectangle([cx - q, cy - q, cx + q, cy + q], fill=255)
    elif shape == "triangle":
        h = r * 0.95
        d.polygon([(cx, cy - h), (cx + r, cy + h), (cx - r, cy + h)], fill=255)
    elif shape == "cross":
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    elif shape == "star":
        d.polygon(_star(cx, cy + r * 0.08, r * 1.08), fill=255)
    elif shape == "heart":
        d.polygon(_heart(cx, cy, r), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + EXTRA_SHAPES}")
    fill = Image.new("RGB", (S, S), tuple(colour))
    if stripes:
        band = ImageDraw.Draw(fill)
        light = tuple(int(c + (255 - c) * 0.85) for c in colour)
        for y0 in range(0, S, 8 * SS):
            band.rectangle([0, y0 + 4 * SS, S, y0 + 8 * SS - 1], fill=light)
    im.paste(fill, (0, 0), mask)
    return im.resize((SIZE, SIZE), Image.BOX)


def caption(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def combinations(shapes=SHAPES, colours=tuple(COLOURS), backgrounds=tuple(COLOURS)) -> list[tuple]:
    """Every (shape, colour, background) with colour != background, in a fixed order."""
    return [(s, c, b) for s in shapes for c in colours for b in backgrounds if c != b]


def sample(i: int, seed: int = 0, shapes=SHAPES, colours=tuple(COLOURS), backgrounds=tuple(COLOURS),
           stripes: bool = False):
    """(PIL image, caption, (shape, colour, background)): picture i of the stream for `seed`.

    Each block of len(combinations) consecutive pictures holds every combination once (in an
    order shuffled per block); position and size jitter come from a generator seeded by (seed, i)."""
    combos = combinations(shapes, colours, backgrounds)
    rng = np.random.default_rng([seed, i])
    order = np.random.default_rng([seed, i // len(combos)]).permutation(len(combos))
    s, c, b = combos[order[i % len(combos)]]
    r = rng.uniform(18, 24)
    cx = SIZE / 2 + rng.uniform(-4, 4)
    cy = SIZE / 2 + rng.uniform(-4, 4)
    im = draw(s, ALL_COLOURS[c], ALL_COLOURS[b], cx, cy, r, stripes=stripes)
    return im, caption(s, c, b), (s, c, b)


def vae_sample(i: int, seed: int = 0) -> Image.Image:
    """Picture i of the VAE's stream: every shape and colour, incl. the extras; 1 in 4 striped."""
    rng = np.random.default_rng([seed, 7, i])
    shapes = SHAPES + EXTRA_SHAPES
    names = list(ALL_COLOURS)
    s = shapes[rng.integers(len(shapes))]
    c, b = rng.choice(len(names), 2, replace=False)
    r = rng.uniform(14, 26)
    cx = SIZE / 2 + rng.uniform(-8, 8)
    cy = SIZE / 2 + rng.uniform(-8, 8)
    return draw(s, ALL_COLOURS[names[c]], ALL_COLOURS[names[b]], cx, cy, r, stripes=rng.random() < 0.25)


def to_tensor(im):
    """PIL RGB -> float tensor [3, H, W] in -1..1 (the VAE's input range)."""
    import torch

    a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return a.permute(2, 0, 1)


def write_kohya_folder(folder, subfolder: str, n: int, seed: int, prefix: str = "", **kinds) -> Path:
    """Write n pictures of `sample(..., **kinds)` with their .txt captions ("<prefix>, <caption>")
    into folder/subfolder (kohya's `<repeats>_<tokens>` layout). Existing files are kept."""
    sub = Path(folder) / subfolder
    sub.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im, cap, _ = sample(i, seed, **kinds)
        png, txt = sub / f"{i:03d}.png", sub / f"{i:03d}.txt"
        if not png.exists():
            tmp = png.with_name(f".{png.name}.tmp")
            im.save(tmp, format="PNG")
            tmp.replace(png)
        if not txt.exists():
            txt.write_text((f"{prefix}, {cap}" if prefix else cap) + "\n", encoding="utf-8")
    return Path(folder)
