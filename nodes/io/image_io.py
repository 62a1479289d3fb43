"""Saving images as ComfyUI does: counter file names, `prompt`/`workflow` PNG text chunks
(dropping the PNG into ComfyUI restores the graph), plus an A1111-style `parameters` chunk.

Never overwrites: each file is written to a temp name and hard-linked onto a free counter
name (the link fails if another writer took that name first, and the next counter is tried).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .destination import next_counter, split_prefix
from .errors import NodeInputError
from .paths import output_dir
from .temp_files import new_temp


def to_pil(image: torch.Tensor):
    """[H, W, C] float in 0..1 -> PIL image (ComfyUI's rounding: clip(255 * x))."""
    from PIL import Image

    arr = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def png_info(prompt=None, extra_pnginfo=None, parameters: str | None = None):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def save_images(images: torch.Tensor, filename_prefix: str, prompt=None, extra_pnginfo=None,
                parameters: str | list | None = None, node: str = "LoraLabSaveImage") -> list[Path]:
    """Write a batch [B, H, W, C] as PNGs named `<prefix>_<counter:05>_.png`; return their paths.
    `parameters`: one A1111 text for every image, or a list with each image's own."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise NodeInputError(node, "images", shape, "expected an IMAGE tensor [batch, height, width, channels]")
    folder, stem = split_prefix(filename_prefix, output_dir(), node)
    folder.mkdir(parents=True, exist_ok=True)
    texts = parameters if isinstance(parameters, list) else [parameters] * images.shape[0]
    if len(texts) != images.shape[0]:
        raise NodeInputError(node, "parameters", len(texts), f"one text per image ({images.shape[0]})")
    infos = {}
    written = []
    counter = next_counter(folder, stem, ".png")
    for image, text in zip(images, texts):
        if text not in infos:
            infos[text] = png_info(prompt, extra_pnginfo, text)
        info = infos[text]
        tmp = new_temp(folder, stem + ".png")  # the user's umask; stale ones of killed runs removed
        try:
            to_pil(image).save(tmp, format="PNG", pnginfo=info, compress_level=4)
            while True:
                target = folder / f"{stem}_{counter:05}_.png"
                try:
                    os.link(tmp, target)  # fails if the name exists: never overwrite
                    break
                except FileExistsError:
                    counter += 1
            written.append(target)
            counter += 1
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return written


def a1111_parameters(prompt: str, negative: str, settings: dict) -> str:
    """The `parameters` text A1111 writes (png_params.format_infotext: its field order and quoting)."""
    from .png_params import format_infotext

    return format_infotext(prompt, negative, settings)
