"""Reading images from the input folder as ComfyUI's LoadImage / LoadImageMask do.

LoadImage: every frame of the file's size (EXIF orientation applied; mode "I" scaled by
1/255) as IMAGE [N, H, W, 3]; MASK [N, H, W] = 1 - alpha (a palette image's transparency
counts as alpha), or a 64x64 zero mask when there is no alpha. LoadImageMask: one channel
(alpha inverted) as MASK [1, H, W].
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .errors import NodeInputError

MASK_CHANNELS = ("alpha", "red", "green", "blue")


def _open(node: str, path: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise NodeInputError(node, "image", path.name, f"not a readable image ({e})") from None
    return img, ImageOps


def load_image(path: Path, node: str = "LoadImage") -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import ImageSequence

    img, ImageOps = _open(node, path)
    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])
        if "A" in frame.getbands():
            mask = 1.0 - torch.from_numpy(np.array(frame.getchannel("A")).astype(np.float32) / 255.0)
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = frame.convert("RGBA").getchannel("A")
            mask = 1.0 - torch.from_numpy(np.array(alpha).astype(np.float32) / 255.0)
        else:
            mask = torch.zeros((64, 64), dtype=torch.float32)
        masks.append(mask[None])
    if len(images) > 1 and img.format != "MPO":
        return torch.cat(images), torch.cat(masks)
    return images[0], masks[0]


def load_image_mask(path: Path, channel: str, node: str = "LoadImageMask") -> torch.Tensor:
    if channel not in MASK_CHANNELS:
        raise NodeInputError(node, "channel", channel, f"one of {MASK_CHANNELS}")
    img, ImageOps = _open(node, path)
    img = ImageOps.exif_transpose(img)
    if img.getbands() != ("R", "G", "B", "A"):
        if img.mode == "I":
            img = img.point(lambda v: v * (1 / 255))
        img = img.convert("RGBA")
    c = channel[0].upper()
    mask = torch.from_numpy(np.array(img.getchannel(c)).astype(np.float32) / 255.0)
    if c == "A":
        mask = 1.0 - mask
    return mask[None]


def file_hash(path: Path) -> str:
    """LoadImage's IS_CHANGED: the file's sha256, so an edited input image reruns the graph."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
