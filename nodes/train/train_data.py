"""Training data: kohya-style folders, captions, aspect-ratio buckets, cached latents, batch order.

Layout (kohya's DreamBooth style, plus a plain folder):

    dataset_dir/
      10_sks dog/          <repeats>_<class tokens>: every image counts 10 times per epoch;
        a.png  a.txt       "sks dog" is the caption of an image without a caption file
        b.jpg  b.caption   (.txt is read first, then .caption; the first line is the caption)
      c.png                images directly in dataset_dir: 1 repeat, no class tokens

Other sub-folders are skipped with a warning (as kohya does). Each image goes to the bucket
(w, h) of area <= resolution^2 whose aspect ratio is nearest its own, is scaled to cover it
and centre-cropped. Batches hold one bucket each; their order is a pure function of
(seed, epoch), so a run can be resumed at any step with the same batches.
"""
from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.errors import NodeInputError
from .train_config import NODE

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSIONS = (".txt", ".caption")
_REPEAT_DIR = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str  # the caption file's first line, else the folder's class tokens
    subset: str  # folder name (ss_tag_frequency / ss_dataset_dirs key)
    size: tuple  # original (width, height)
    bucket: tuple  # (width, height) trained at


@dataclass(frozen=True)
class Subset:
    name: str
    repeats: int
    class_tokens: str
    img_count: int


@dataclass(frozen=True)
class Dataset:
    items: tuple  # ImageItem, one per image file
    subsets: tuple  # Subset
    buckets: tuple  # every (w, h) in use, sorted
    tag_frequency: dict  # {subset: {tag: count}}, as kohya counts it

    @property
    def num_train_images(self) -> int:
        return sum(s.repeats * s.img_count for s in self.subsets)

    def repeats(self, item: ImageItem) -> int:
        return next(s.repeats for s in self.subsets if s.name == item.subset)


# ------------------------------------------------------------------------------- scanning
def _read_caption(image: Path) -> str | None:
    for ext in CAPTION_EXTENSIONS:
        side = image.with_suffix(ext)
        if side.is_file():
            try:  # utf-8-sig: Windows editors' BOM is not part of the first tag
                text = side.read_text(encoding="utf-8-sig").strip()
            except UnicodeDecodeError as e:  # latin-1 / cp1252 captions would train on "caf\ufffd"
                raise NodeInputError(NODE, "dataset_dir", str(side),
                                     f"caption is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                                     f"{e.start}: {e.object[max(0, e.start - 12):e.end + 12]!r}); "
                                     "save it as UTF-8") from None
            return text.splitlines()[0].strip() if text else ""
    return None


def _image_size(path: Path) -> tuple:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as e:
        raise NodeInputError(NODE, "dataset_dir", str(path), f"image too large to decode safely ({e})") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise NodeInputError(NODE, "dataset_dir", str(path), f"unreadable image ({e})") from None


def bucket_settings(resolution: int) -> tuple[int, int, int]:
    """(step, min side, max side) of the buckets; kohya's 64 / 256 / 1024 at 512."""
    step = 64 if resolution >= 256 else 8
    low = max(step, (resolution // 2) // step * step)
    return step, low, resolution * 2


def make_buckets(resolution: int) -> list[tuple]:
    """Every (w, h), multiples of the step, area <= resolution^2, sides within the limits."""
    step, low, high = bucket_settings(resolution)
    area = resolution * resolution
    out = {(resolution, resolution)}
    for w in range(low, high + 1, step):
        h = min(high, (area // w) // step * step)
        if h >= low:
            out.add((w, h))
            out.add((h, w))
    return sorted(out)


def nearest_bucket(size: tuple, buckets: list[tuple]) -> tuple:
    """The bucket whose aspect ratio is closest (in log) to the image's; larger area wins ties."""
    ar = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - ar), 9), -b[0] * b[1]))


def scan_dataset(folder: str, resolution: int, enable_bucket: bool = True) -> Dataset:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NodeInputError(NODE, "dataset_dir", folder, "is not a folder")
    groups = []  # (folder, subset name, repeats, class tokens)
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir() if p.is_file()):
        groups.append((root, root.name, 1, ""))
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _REPEAT_DIR.match(sub.name)
        if not m or int(m.group(1)) < 1:
            log.warning("%s: skipping folder %r (not <repeats>_<class tokens>)", NODE, sub.name)
            continue
        groups.append((sub, sub.name, int(m.group(1)), m.group(2).strip()))
    buckets = make_buckets(resolution) if enable_bucket else [(resolution, resolution)]
    items, subsets, freq = [], [], {}
    for path, name, repeats, tokens in groups:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            continue
        counts = freq.setdefault(name, {})
        for f in files:
            caption = _read_caption(f)
            if not caption:
                if not tokens:
                    log.warning("%s: %s has no caption and its folder no class tokens: empty caption", NODE, f.name)
                caption = tokens
            for tag in caption.split(","):
                tag = tag.strip()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
            size = _image_size(f)
            items.append(ImageItem(f, caption, name, size, nearest_bucket(size, buckets)))
        subsets.append(Subset(name, repeats, tokens, len(files)))
    if not items:
        raise NodeInputError(NODE, "dataset_dir", folder,
                             f"no images found ({', '.join(IMAGE_EXTENSIONS)}) in it or in <repeats>_<tokens> "
                             "sub-folders")
    return Dataset(tuple(items), tuple(subsets), tuple(sorted({i.bucket for i in items})), freq)


# --------------------------------------------------------------------------- image prep
def load_image(item: ImageItem) -> tuple[torch.Tensor, tuple]:
    """([3, h, w] float in -1..1 at the item's bucket, (crop_top, crop_left)); resize to cover, centre crop."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    bw, bh = item.bucket
    try:
        with Image.open(item.path) as im:
            im = im.convert("RGB")
            scale = max(bw / im.width, bh / im.height)
            w, h = max(bw, round(im.width * scale)), max(bh, round(im.height * scale))
            im = im.resize((w, h), Image.LANCZOS)
            left, top = (w - bw) // 2, (h - bh) // 2
            im = im.crop((left, top, left + bw, top + bh))
            arr = np.asarray(im, dtype=np.float32)  # [h, w, 3] 0..255
    except Image.DecompressionBombError as e:
        raise NodeInputError(NODE, "dataset_dir", str(item.path), f"image too large to decode safely ({e})") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise NodeInputError(NODE, "dataset_dir", str(item.path), f"unreadable image ({e})") from None
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1) / 127.5 - 1.0
    return x, (top, left)


@torch.no_grad()
def cache_latents(handle, dataset: Dataset, device, seed: int, progress=None) -> list[dict]:
    """One entry per image: latent [4, h/8, w/8] float32 on `device` (a seeded sample of the
    VAE posterior, times the family's scaling factor) and the SDXL size conditioning."""
    vae = handle.vae
    dtype = next(vae.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    out = []
    for item in dataset.items:
        x, (top, left) = load_image(item)
        dist = vae.encode(x[None].to(vae.device, dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=g).to(dist.mean.device, dist.mean.dtype)
        z = (dist.mean + dist.std * noise).float() * handle.vae_scaling_factor
        bw, bh = item.bucket
        out.append({"latent": z[0].to(device),
                    "time_ids": [item.size[1], item.size[0], top, left, bh, bw]})
        if progress is not None:
            progress()
    return out


# ------------------------------------------------------------------------------- batches
class BatchOrder:
    """Which images make micro-batch m: a pure function of (seed, m).

    An epoch is every image x its repeats, grouped by bucket, shuffled inside each bucket,
    cut into batches of `batch_size` (the last of a bucket may be smaller), and the batches
    shuffled; with several processes, process r takes batches r, r + n, ...
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.by_bucket: dict = {}
        for i, item in enumerate(dataset.items):
            self.by_bucket.setdefault(item.bucket, []).extend([i] * dataset.repeats(item))
        self.per_epoch = sum(math.ceil(len(v) / batch_size) for v in self.by_bucket.values())
        self._epoch, self._batches = -1, []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"batches-{self.seed}-{epoch}")
        batches = []
        for bucket in sorted(self.by_bucket):
            idx = list(self.by_bucket[bucket])
            rng.shuffle(idx)
            batches += [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def batch(self, micro_step: int) -> tuple[int, list[int]]:
        """(epoch, image indices) of micro-batch `micro_step` for this process."""
        k = micro_step * self.world + self.rank
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch_batches(epoch)
        return epoch, self._batches[i]


def process_caption(caption: str, rng: random.Random, dropout: float, shuffle: bool, keep_tokens: int) -> str:
    """kohya's caption handling: dropout to "", then shuffle the comma tags after `keep_tokens`."""
    if dropout > 0 and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",")]
    fixed, flex = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(flex)
    return ", ".join(t for t in fixed + flex if t)
