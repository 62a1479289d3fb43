"""Pasting one latent into another and padding an image for outpainting, with ComfyUI 0.3.64's
arithmetic (nodes.py LatentComposite.composite, ImagePadForOutpaint.expand_image), so that
the runner's nodes give the same tensors bit for bit. Pure functions; inputs are not changed.
"""
from __future__ import annotations

import torch


def feather_mask(shape: tuple, feather: int, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """(B, C, h, w) float32 blend weights: 1 inside, ramping to 1/feather over `feather` rows /
    columns at each edge that lies inside the target (edges = top, bottom, left, right). A ramp
    value is (t + 1) / feather for the t-th row from the edge, multiplied in the order top,
    bottom, left, right (corners and overlapping ramps multiply), as ComfyUI does."""
    top, bottom, left, right = edges
    mask = torch.ones(shape, dtype=torch.float32)
    h, w = shape[2], shape[3]
    for t in range(feather):
        f = (1.0 / feather) * (t + 1)
        if top:
            mask[:, :, t:t + 1, :] *= f
        if bottom:
            mask[:, :, h - 1 - t:h - t, :] *= f
        if left:
            mask[:, :, :, t:t + 1] *= f
        if right:
            mask[:, :, :, w - 1 - t:w - t] *= f
    return mask


def composite_latent(to: torch.Tensor, src: torch.Tensor, x: int, y: int, feather: int = 0) -> torch.Tensor:
    """`src` (B', C, h', w') pasted into a copy of `to` (B, C, h, w) with its top-left corner at
    latent cell (y // 8, x // 8) of pixel position (x, y), cropped at the far edges; with a
    feather (pixels, // 8 cells) blended in by feather_mask on the edges inside `to`. An offset
    at or past the far edge pastes nothing (an unchanged copy). Raises ValueError when the
    two do not fit (batch sizes that do not broadcast, other channel counts)."""
    x, y, feather = x // 8, y // 8, feather // 8
    out = to.clone()
    if y >= to.shape[2] or x >= to.shape[3]:
        return out
    part = src[:, :, :to.shape[2] - y, :to.shape[3] - x]  # (B', C, rows, cols) that fit
    rows, cols = part.shape[2], part.shape[3]
    region = (slice(None), slice(None), slice(y, y + rows), slice(x, x + cols))
    try:
        if feather == 0:
            out[region] = part
        else:
            edges = (y != 0, y + src.shape[2] < to.shape[2], x != 0, x + src.shape[3] < to.shape[3])
            mask = feather_mask(tuple(part.shape), feather, edges)
            out[region] = part * mask + out[region] * (torch.ones_like(mask) - mask)
    except RuntimeError as e:  # batch sizes or channels that do not broadcast
        raise ValueError(f"cannot paste a {tuple(src.shape)} latent into a {tuple(to.shape)} one ({e})") from None
    return out


def pad_for_outpaint(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE (B, H+top+bottom, W+left+right, C) float32 with the new border grey 0.5, MASK
    (1, H', W') float32: 1 on the border; inside, 0 except a ramp ((feathering - d) /
    feathering)^2 within `feathering` px of a padded side (d = distance to the nearest padded
    side; sides not padded count as the full size away)). No ramp when feathering is 0 or not
    below half the image's height and width, as in ComfyUI."""
    b, h, w, c = image.shape
    new = torch.ones((b, h + top + bottom, w + left + right, c), dtype=torch.float32) * 0.5
    new[:, top:top + h, left:left + w, :] = image
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    inner = torch.zeros((h, w), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        i = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
        j = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
        full_h, full_w = torch.full_like(i, h), torch.full_like(j, w)
        d = torch.minimum(torch.minimum(i if top else full_h, h - i if bottom else full_h),
                          torch.minimum(j if left else full_w, w - j if right else full_w))
        v = (feathering - d) / feathering  # float64, as Python's float division of ints
        inner = torch.where(d < feathering, v * v, torch.zeros_like(v)).float()
    mask[top:top + h, left:left + w] = inner
    return new, mask.unsqueeze(0)
