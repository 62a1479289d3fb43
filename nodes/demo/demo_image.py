"""The demo input image for the img2img / inpainting examples, written into the input folder on
first use (as the demo checkpoint is): 128x128 RGBA, a drawn pattern (no randomness), with a
transparent square in the middle, which LoadImage turns into the inpainting mask (1 - alpha)."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..io import paths

log = logging.getLogger(__name__)

DEMO_IMAGE = "lora-lab-demo-input.png"
SIZE = 128
HOLE = (40, 88)  # the transparent square: rows and columns 40..87


def demo_pixels() -> np.ndarray:
    """[128, 128, 4] uint8: colour gradients, a ring, and the transparent square."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    r = np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)
    ring = (np.abs(r - 0.33) < 0.06).astype(np.float32)
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x * y], -1) * (1 - ring[..., None]) \
        + ring[..., None] * np.array([0.95, 0.85, 0.2], dtype=np.float32)
    alpha = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    alpha[HOLE[0]:HOLE[1], HOLE[0]:HOLE[1]] = 0
    return np.dstack([np.round(rgb * 255).astype(np.uint8), alpha])


def ensure_demo_image(folder: Path | None = None) -> Path:
    """Path of the demo input image, writing it (atomically) if it is not there yet."""
    from PIL import Image

    folder = Path(folder) if folder is not None else paths.folders("input")[0]
    target = folder / DEMO_IMAGE
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    log.info("writing the demo input image to %s", target)
    fd, tmp = tempfile.mkstemp(prefix=".demo.", suffix=".png.tmp", dir=folder)
    os.close(fd)
    try:
        Image.fromarray(demo_pixels(), "RGBA").save(tmp, format="PNG")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
