"""Tiled VAE decode / encode for images too large to pass through the VAE at once.

ComfyUI's semantics (comfy/sd.py VAE.decode_tiled_ / encode_tiled_, comfy/utils.tiled_scale):
the input is cut into overlapping tiles, each tile goes through the VAE alone, and every output
pixel is the weighted mean of the tiles covering it. A tile's weight ramps linearly from 1/f to
1 over the f = overlap (scaled to the output) pixels at each of its edges, so seams blend. This is
done three times, with tiles of (h, w), (h*2, w/2) and (h/2, w*2), and the three results
averaged: the seams of one pass fall inside tiles of the others. Peak activation memory is that
of one tile instead of the whole image; the result differs from a whole-image pass near seams
(the VAE's receptive field is cut), by an amount tests bound on a tiny VAE.

Sizes: decode takes tile and overlap in latent cells (ComfyUI's node divides its pixel inputs by
8), encode in pixels. Slicing (one image of a batch at a time) is what vae_decode / vae_encode
always do.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..io.errors import NodeInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tiles:
    """Tile height / width and overlap, in the input's cells (latent cells or pixels)."""

    height: int
    width: int
    overlap: int
    node: str = "VAEDecodeTiled"

    def __post_init__(self):
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise NodeInputError(self.node, "tile_size", v, "tiles must be at least 1 cell")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise NodeInputError(self.node, "overlap", self.overlap, "must be 0 or more")
        if self.overlap >= min(self.height, self.width):
            raise NodeInputError(self.node, "overlap", self.overlap,
                                 f"must be smaller than the tile ({self.height} x {self.width})")


def from_node(tile_size: int, overlap: int, scale: int, node: str) -> Tiles:
    """A ComfyUI tiled node's pixel inputs -> Tiles in the input's cells (scale 8: latents; 1: pixels).
    As ComfyUI does, an overlap above a quarter of the tile is cut to a quarter."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 64:
        raise NodeInputError(node, "tile_size", tile_size, "must be an integer of at least 64 (pixels)")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise NodeInputError(node, "overlap", overlap, "must be an integer of at least 0 (pixels)")
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    return Tiles(tile_size // scale, tile_size // scale, overlap // scale, node)


def positions(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of the tiles along one axis: steps of tile - overlap, the last one cut at the end."""
    if size <= tile:
        return [(0, size)]
    out = []
    for start in range(0, size - overlap, tile - overlap):
        start = min(start, size - overlap)
        out.append((start, min(tile, size - start)))
    return out


def ramp(length: int, feather: int) -> torch.Tensor:
    """[length] weights: 1 inside, (t+1)/feather at distance t from either end (both ramps multiply
    where they meet); no ramp when feather >= length, as in ComfyUI."""
    w = torch.ones(length)
    if 0 < feather < length:
        for t in range(feather):
            a = (t + 1) / feather
            w[t] *= a
            w[length - 1 - t] *= a
    return w


def tiled_pass(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_h: int, tile_w: int,
               overlap: int, scale: float, out_channels: int) -> torch.Tensor:
    """One pass: x [1, C, H, W] -> fn's output [1, out_channels, H*scale, W*scale] blended from tiles."""
    _, _, h, w = x.shape
    out_h, out_w = round(h * scale), round(w * scale)
    if h <= tile_h and w <= tile_w:
        return fn(x).float()
    acc = torch.zeros(1, out_channels, out_h, out_w)
    weight = torch.zeros(1, 1, out_h, out_w)
    feather = round(overlap * scale)
    for (y, th), (x0, tw) in itertools.product(positions(h, tile_h, overlap), positions(w, tile_w, overlap)):
        part = fn(x[:, :, y:y + th, x0:x0 + tw]).float().cpu()  # [1, out_channels, th*scale, tw*scale]
        ph, pw = part.shape[-2:]
        mask = (ramp(ph, feather)[:, None] * ramp(pw, feather)[None, :])[None, None]
        oy, ox = round(y * scale), round(x0 * scale)
        acc[:, :, oy:oy + ph, ox:ox + pw] += part * mask
        weight[:, :, oy:oy + ph, ox:ox + pw] += mask
    return acc / weight


def three_passes(x: torch.Tensor, fn, tiles: Tiles, scale: float, out_channels: int) -> torch.Tensor:
    """The mean of ComfyUI's three tile shapes: (h/2, w*2), (h*2, w/2), (h, w) for decode."""
    shapes = ((tiles.height * 2, tiles.width // 2), (tiles.height // 2, tiles.width * 2), (tiles.height, tiles.width))
    total = None
    for th, tw in shapes:
        th, tw = max(th, tiles.overlap + 1), max(tw, tiles.overlap + 1)
        part = tiled_pass(x, fn, th, tw, tiles.overlap, scale, out_channels)
        total = part if total is None else total + part
    return total / 3.0


# What ComfyUI's VAE falls back to when a whole-image pass runs out of GPU memory
# (comfy/sd.py VAE.decode_tiled_ / encode_tiled_ defaults): 64-cell (512 px) tiles, 16 cells
# overlap for decode; 512 px tiles, 64 px overlap for encode.
OOM_DECODE_TILES = Tiles(64, 64, 16, "VAEDecode")
OOM_ENCODE_TILES = Tiles(512, 512, 64, "VAEEncode")


def _one_image(xi, fn, tiles, fallback, scale, channels, what):
    if tiles is not None:
        return three_passes(xi, fn, tiles, scale, channels)
    try:
        return fn(xi)
    except torch.OutOfMemoryError:
        pass  # retried below, once the failed pass's tensors are freed with the exception
    from ..io import notices

    notices.warn(log, f"ran out of memory {what} a {tuple(xi.shape[-2:])} image whole; retrying in tiles "
                      f"({fallback.height} x {fallback.width}, overlap {fallback.overlap}), as ComfyUI does")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return three_passes(xi, fn, fallback, scale, channels)


def decode(model, z: torch.Tensor, tiles: Tiles | None = None) -> torch.Tensor:
    """Raw latents [B, C, h, w] -> the VAE's output [B, 3, 8h, 8w] float32 on the CPU (before
    clamping), one image at a time, each tiled when `tiles` is given (or when the whole image
    runs out of GPU memory: OOM_DECODE_TILES)."""
    dtype = next(model.parameters()).dtype

    def fn(t):
        return model.decode(t.to(model.device, dtype), return_dict=False)[0].float().cpu()

    ch = model.config.out_channels
    return torch.cat([_one_image(z[i:i + 1], fn, tiles, OOM_DECODE_TILES, 8, ch, "decoding")
                      for i in range(z.shape[0])])


def encode(model, x: torch.Tensor, tiles: Tiles | None = None) -> torch.Tensor:
    """Pixels in -1..1 [B, 3, H, W] -> the posterior's mode [B, C, H/8, W/8] float32 on the CPU
    (tiled as decode is; OOM_ENCODE_TILES after an out-of-memory error)."""
    dtype = next(model.parameters()).dtype

    def fn(t):
        return model.encode(t.to(model.device, dtype)).latent_dist.mode().float().cpu()

    ch = model.config.latent_channels
    return torch.cat([_one_image(x[i:i + 1], fn, tiles, OOM_ENCODE_TILES, 1 / 8, ch, "encoding")
                      for i in range(x.shape[0])])
