"""Prompt adherence of the demo model and the effect of its demo LoRAs, by image statistics.

    python bench/demo_quality.py [--n 64] [--lora-n 20] [--checkpoint PATH] [--no-loras] [--sheet out.png]

Each picture is classified without any learned model:
    background  the median colour of the 2-pixel border, nearest palette colour (6 colours)
    object      pixels farther than 60 (RGB distance) from that colour; their median colour,
                nearest of the 5 other palette colours
    shape       the object mask cropped to its bounding box (1st-99th percentile of its pixels),
                resized to 64x64 and compared (IoU) with each shape's template drawn by the
                dataset generator; the best IoU wins (4 base shapes; 6 with the LoRAs' star/heart)
    stripes     swings of more than 20 in mean luminance down the middle 16 columns (>= 4)
    star        the radial profile of the object's outline (largest connected part; distance from
                its centroid over 90 angles): its strongest harmonic is the 5th, at no less than
                half a drawn star's amplitude (drawn star 0.33; the other shapes <= 0.08 there).
                Rotation-invariant and tolerant of the rounded tips an 8x8 latent makes, which
                the upright IoU templates are not (they call a fat star a circle).
The classifier is first checked on the dataset's own pictures (it should be ~100 % there), then
the model draws N prompts through the path `lora-lab run` takes (Load Checkpoint -> Sample:
euler_ancestral, karras, 20 steps, CFG 7, 64x64, empty negative prompt), one seed each.
Chance levels: background 1/6, object colour 1/5 (never the background's), shape 1/4.
For each demo LoRA, the same prompts with the LoRA at strength 0 and at 1 (its trigger word in
the prompt both times): the fraction of pictures showing its concept.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


from lora_lab.nodes.demo import shapes as D

BASE_COLOURS = tuple(D.COLOURS)
ALL_SHAPES = D.SHAPES + D.EXTRA_SHAPES


def nearest_colour(rgb, names) -> str:
    pal = np.array([D.ALL_COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((pal - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


_TEMPLATES: dict = {}


def template(shape: str, n: int = 64) -> np.ndarray:
    """The generator's mask of `shape`, cropped to its bounding box, n x n bool."""
    if shape not in _TEMPLATES:
        m = np.asarray(D.draw(shape, (255, 255, 255), (0, 0, 0), 32, 32, 26))[..., 0] > 127
        ys, xs = np.nonzero(m)
        crop = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        _TEMPLATES[shape] = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((n, n), Image.BILINEAR)) > 127
    return _TEMPLATES[shape]


def classify_shape(mask: np.ndarray, shapes, n: int = 64):
    """(best shape or None, its IoU) of a bool mask against the shape templates."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 20:
        return None, 0.0
    y0, y1 = np.percentile(ys, [1, 99]).astype(int)
    x0, x1 = np.percentile(xs, [1, 99]).astype(int)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return None, 0.0
    crop = mask[y0:y1 + 1, x0:x1 + 1].astype(np.uint8) * 255
    m = np.asarray(Image.fromarray(crop).resize((n, n), Image.BILINEAR)) > 127
    ious = {s: (m & template(s)).sum() / max(1, (m | template(s)).sum()) for s in shapes}
    best = max(ious, key=ious.get)
    return best, float(ious[best])


def stripes_score(a: np.ndarray) -> int:
    """Luminance swings (> 20) down the middle columns: a flat shape gives <= 2, stripes >= 4."""
    w = a.shape[1]
    lum = a[:, w * 3 // 8: w * 5 // 8].astype(np.float32).mean(axis=(1, 2))  # [H]
    count, ref, direction = 0, lum[0], 0
    for v in lum[1:]:
        if direction >= 0 and v < ref - 20:
            count += direction == 1
            direction, ref = -1, v
        elif direction <= 0 and v > ref + 20:
            count += direction == -1
            direction, ref = 1, v
        elif (direction == 1 and v > ref) or (direction == -1 and v < ref):
            ref = v
    return count


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected part of a bool mask (drops the VAE's stray corner pixels)."""
    from collections import deque

    H, W = mask.shape
    seen, best = np.zeros_like(mask, dtype=bool), []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        part, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            part.append((y, x))
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        if len(part) > len(best):
            best = part
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def radial_harmonics(mask: np.ndarray, bins: int = 90, kmax: int = 8) -> np.ndarray:
    """Amplitudes of harmonics 1..kmax of the outline's distance from the centroid (mean 1)."""
    part = largest_component(mask)
    if part.sum() < 20:
        return np.zeros(kmax)
    ys, xs = np.nonzero(part)
    cy, cx = ys.mean(), xs.mean()
    p = np.pad(part, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    by, bx = np.nonzero(part & ~inner)
    idx = ((np.arctan2(by - cy, bx - cx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    r = np.zeros(bins)
    np.maximum.at(r, idx, np.hypot(by - cy, bx - cx))
    for i in np.nonzero(r == 0)[0]:  # a bin no outline pixel fell in: its neighbours' radius
        r[i] = max(r[(i - 1) % bins], r[(i + 1) % bins])
    r = r / r.mean()
    return np.abs(np.fft.rfft(r - 1.0))[1:kmax + 1] * 2 / bins


def star_amplitude() -> float:
    """The 5th-harmonic amplitude of the generator's own star (the reference for `is_star`)."""
    m = np.asarray(D.draw("star", (255, 255, 255), (0, 0, 0), 32, 32, 26))[..., 0] > 127
    return float(radial_harmonics(m)[4])


def is_star(mask: np.ndarray) -> bool:
    h = radial_harmonics(mask)
    return bool(int(np.argmax(h)) == 4 and h[4] >= 0.5 * star_amplitude())


def classify(a: np.ndarray, shapes=D.SHAPES) -> dict:
    """uint8 [H, W, 3] -> {background, colour, shape, iou, stripes}."""
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    bg = nearest_colour(bg_rgb, list(BASE_COLOURS))
    mask = np.sqrt(((a.astype(np.float32) - bg_rgb.astype(np.float32)) ** 2).sum(-1)) > 60.0
    colour = nearest_colour(np.median(a[mask], axis=0), [c for c in BASE_COLOURS if c != bg]) if mask.sum() >= 20 else None
    shape, iou = classify_shape(mask, shapes)
    return {"background": bg, "colour": colour, "shape": shape, "iou": iou, "stripes": stripes_score(a),
            "star": is_star(mask)}


def check_on_dataset(n: int = 240) -> tuple:
    hits = np.zeros(3)
    for i in range(n):
        im, _, (s, c, b) = D.sample(i, 12345)
        r = classify(np.asarray(im))
        hits += [r["background"] == b, r["colour"] == c, r["shape"] == s]
    return tuple(hits / n)


def check_star_detector(n: int = 120) -> tuple:
    """(fraction of n base-shape dataset pictures called a star, fraction of n star pictures called one)."""
    base = sum(classify(np.asarray(D.sample(i, 12345)[0]))["star"] for i in range(n))
    stars = sum(classify(np.asarray(D.sample(i, 777, shapes=("star",))[0]))["star"] for i in range(n))
    return base / n, stars / n


def prompts(n: int) -> list[tuple]:
    """n (prompt, shape, colour, background): the base combinations in a fixed spread order."""
    combos = D.combinations()
    picks = [combos[(7 * i) % len(combos)] for i in range(n)]  # 7 is prime to 120: a spread of all
    return [(D.caption(*c),) + c for c in picks]


def render(handle, prompt: str, seed: int, steps: int = 20) -> np.ndarray:
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

    s = SampleSettings(prompt=prompt, negative_prompt="", seed=seed, steps=steps, cfg=7.0,
                       sampler_name="euler_ancestral", scheduler="karras", width=64, height=64)
    img = generate(handle, s)[0]  # [64, 64, 3] in 0..1
    return (img.numpy() * 255).round().astype(np.uint8)


def lora_concepts(n: int = 20):
    """(LoRA file name, n prompts, predicate on a classification, concept, n (colour, background)
    the prompts ask for) for each demo LoRA."""
    from lora_lab.nodes.demo import demo_lora as L

    colours = [c for c in BASE_COLOURS if c != "white"]  # pale stripes vanish into white
    combos = [(s, c, b) for s in D.SHAPES for c in colours for b in colours if c != b]
    style_rows = [combos[(7 * i) % len(combos)] for i in range(n)]
    style = [f"{L.STYLE_TRIGGER}, {D.caption(*row)}" for row in style_rows]
    char_combos = [(c, b) for c in BASE_COLOURS for b in BASE_COLOURS if c != b]
    char_rows = [char_combos[(7 * i) % len(char_combos)] for i in range(n)]
    char = [f"{L.CHARACTER_TRIGGER}, {D.caption('star', *row)}" for row in char_rows]
    return [(L.DEMO_STYLE, style, lambda r: r["stripes"] >= 4, "striped", [row[1:] for row in style_rows]),
            (L.DEMO_CHARACTER, char, lambda r: r["star"], "a star", char_rows)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="demo model prompt adherence and demo LoRA effect")
    ap.add_argument("--n", type=int, default=64, help="prompts for the base model (>= 64)")
    ap.add_argument("--lora-n", type=int, default=20, help="prompts per demo LoRA (each at strength 0 and 1)")
    ap.add_argument("--checkpoint", default="", help="a checkpoint file (default: the demo checkpoint)")
    ap.add_argument("--no-loras", action="store_true")
    ap.add_argument("--sheet", default="", help="write the base model's pictures as one PNG")
    args = ap.parse_args(argv)

    import torch

    from lora_lab.nodes.demo import demo, demo_lora
    from lora_lab.nodes.io import paths
    from lora_lab.nodes.model.checkpoint import load_single_file

    torch.set_num_threads(1)
    bg, col, shp = check_on_dataset()
    print(f"classifier on 240 dataset pictures: background {bg:.1%}, colour {col:.1%}, shape {shp:.1%}")
    fp, tp = check_star_detector()
    print(f"star detector on 120 dataset pictures each: base shapes called a star {fp:.1%}, stars {tp:.1%}")

    with tempfile.TemporaryDirectory() as tmp, paths.standalone_dirs(models_dir=tmp, output_dir=tmp):
        ckpt = Path(args.checkpoint) if args.checkpoint else demo.ensure_demo_checkpoint(Path(tmp) / "checkpoints")
        handle = load_single_file(ckpt)
        t0 = time.time()
        rows, pics = prompts(args.n), []
        hits = np.zeros(3)
        for i, (p, s, c, b) in enumerate(rows):
            a = render(handle, p, seed=1000 + i)
            pics.append(a)
            r = classify(a)
            hits += [r["background"] == b, r["colour"] == c, r["shape"] == s]
        acc = hits / len(rows)
        print(f"{ckpt.name}: {len(rows)} prompts, {time.time() - t0:.0f} s")
        print(f"  background colour {acc[0]:6.1%}   (chance {1 / 6:.1%}, goal >= 95 %)")
        print(f"  object colour     {acc[1]:6.1%}   (chance {1 / 5:.1%}, goal >= 85 %)")
        print(f"  shape             {acc[2]:6.1%}   (chance {1 / 4:.1%}, goal >= 75 %)")
        if args.sheet:
            cols = 12
            sheet = Image.new("RGB", (64 * cols, 64 * ((len(pics) + cols - 1) // cols)))
            for k, a in enumerate(pics):
                sheet.paste(Image.fromarray(a), ((k % cols) * 64, (k // cols) * 64))
            sheet.save(args.sheet)
        if not args.no_loras:
            demo_lora.ensure_demo_loras(Path(tmp) / "loras")
            for name, lora_prompts, shows, what, asked in lora_concepts(args.lora_n):
                frac = []
                for w in (0.0, 1.0):
                    rs = [classify(render(handle, f"{p} <lora:{Path(name).stem}:{w}>", seed=2000 + i), shapes=ALL_SHAPES)
                          for i, p in enumerate(lora_prompts)]
                    frac.append(sum(map(shows, rs)) / len(rs))
                kept = sum(r["colour"] == c and r["background"] == b for r, (c, b) in zip(rs, asked)) / len(rs)
                print(f"  {name}: {what} at strength 0 {frac[0]:6.1%}, at strength 1 {frac[1]:6.1%}"
                      f"   ({len(lora_prompts)} prompts; goal <= 5 % vs >= 80 %); at 1 the prompt's object and"
                      f" background colours {kept:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
