"""VAE encode / decode and latent / image resizing with ComfyUI's semantics (nodes.py, comfy/sd.py,
comfy/utils.common_upscale).

IMAGE [B, H, W, 3] float 0..1; MASK [B, H, W] (or [H, W]) float 0..1; LATENT samples are the
VAE's raw latents [B, 4, H/8, W/8] (no scaling factor: KSampler applies the model's).
"""
from __future__ import annotations

import math

import torch

from ..io.errors import NodeInputError

LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")


def _check_image(node: str, name: str, image) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise NodeInputError(node, name, shape, "expected an IMAGE tensor [batch, height, width, 3]")


def crop_pixels(pixels: torch.Tensor, ratio: int = 8) -> torch.Tensor:
    """VAE.vae_encode_crop_pixels: centre-crop H and W down to multiples of the VAE's ratio."""
    for d in (1, 2):
        size = pixels.shape[d]
        keep = (size // ratio) * ratio
        if keep != size:
            pixels = pixels.narrow(d, (size % ratio) // 2, keep)
    return pixels


@torch.no_grad()
def vae_encode(vae, pixels: torch.Tensor, node: str = "VAEEncode", tiles=None) -> torch.Tensor:
    """IMAGE -> raw latents [B, 4, h, w] float32: the posterior's mode (ComfyUI's regulariser).
    One image at a time; `tiles` (vae_tiling.Tiles, in pixels): each image in overlapping tiles."""
    from .vae_tiling import encode

    _check_image(node, "pixels", pixels)
    px = crop_pixels(pixels[..., :3], vae.downscale_ratio)
    if px.shape[1] == 0 or px.shape[2] == 0:
        raise NodeInputError(node, "pixels", tuple(pixels.shape), "the image is smaller than 8 px")
    return encode(vae.vae, px.movedim(-1, 1) * 2.0 - 1.0, tiles)


@torch.no_grad()
def vae_decode(vae, samples: torch.Tensor, node: str = "VAEDecode", tiles=None) -> torch.Tensor:
    """Raw latents [B, 4, h, w] -> IMAGE [B, 8h, 8w, 3] in 0..1. One image at a time (decode memory
    grows fast with size); `tiles` (vae_tiling.Tiles, in latent cells): each in overlapping tiles."""
    from .vae_tiling import decode

    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != vae.latent_channels:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise NodeInputError(node, "samples", shape, f"expected latents [B, {vae.latent_channels}, h, w]")
    x = decode(vae.vae, samples, tiles)
    return torch.clamp((x + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)


def encode_for_inpaint(vae, pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int = 6, tiles=None) -> dict:
    """VAEEncodeForInpaint: masked pixels set to grey, encoded (in `tiles` when given, as vae_encode);
    noise_mask = the mask grown and rounded."""
    node = "VAEEncodeForInpaint"
    _check_image(node, "pixels", pixels)
    r = vae.downscale_ratio
    h, w = (pixels.shape[1] // r) * r, (pixels.shape[2] // r) * r
    m = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float(),
                                        size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
    px = pixels[..., :3].clone()
    if pixels.shape[1] != h or pixels.shape[2] != w:
        oy, ox = (pixels.shape[1] % r) // 2, (pixels.shape[2] % r) // 2
        px = px[:, oy:h + oy, ox:w + ox, :]
        m = m[:, :, oy:h + oy, ox:w + ox]
    if grow_mask_by == 0:
        grown = m
    else:
        kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
        pad = math.ceil((grow_mask_by - 1) / 2)
        grown = torch.clamp(torch.nn.functional.conv2d(m.round(), kernel, padding=pad), 0, 1)
    keep = (1.0 - m.round()).squeeze(1)  # [B, H, W]
    for c in range(3):
        px[:, :, :, c] -= 0.5
        px[:, :, :, c] *= keep
        px[:, :, :, c] += 0.5
    return {"samples": vae_encode(vae, px, node, tiles), "noise_mask": grown[:, :, :h, :w].round()}


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    out = []
    for img in samples:
        arr = np.clip(255.0 * img.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr).resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str, node: str) -> torch.Tensor:
    """comfy.utils.common_upscale on [B, C, H, W]: optional centre crop to the new aspect, then resize."""
    if method not in LATENT_UPSCALE_METHODS + IMAGE_UPSCALE_METHODS:
        raise NodeInputError(node, "upscale_method", method, f"one of {LATENT_UPSCALE_METHODS + ('lanczos',)}")
    if crop not in CROP_METHODS:
        raise NodeInputError(node, "crop", crop, f"one of {CROP_METHODS}")
    if width < 1 or height < 1:
        raise NodeInputError(node, "width/height", (width, height), "the new size must be at least 1x1")
    s = samples
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "bislerp":
        from .bislerp import bislerp

        return bislerp(s, width, height)
    if method == "lanczos":
        return _lanczos(s, width, height)
    return torch.nn.functional.interpolate(s, size=(height, width), mode=method)


def latent_upscale(latent: dict, method: str, width: int, height: int, crop: str) -> dict:
    """LatentUpscale: width/height in pixels (0 keeps the aspect from the other; both 0 = unchanged)."""
    if width == 0 and height == 0:
        return latent
    s = latent["samples"]
    if width == 0:
        height = max(64, height)
        width = max(64, round(s.shape[-1] * height / s.shape[-2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(s.shape[-2] * width / s.shape[-1]))
    else:
        width, height = max(64, width), max(64, height)
    return {**latent, "samples": common_upscale(s, width // 8, height // 8, method, crop, "LatentUpscale")}


def latent_upscale_by(latent: dict, method: str, scale_by: float) -> dict:
    s = latent["samples"]
    w, h = round(s.shape[-1] * scale_by), round(s.shape[-2] * scale_by)
    return {**latent, "samples": common_upscale(s, w, h, method, "disabled", "LatentUpscaleBy")}


def image_scale(image: torch.Tensor, method: str, width: int, height: int, crop: str) -> torch.Tensor:
    _check_image("ImageScale", "image", image)
    if width == 0 and height == 0:
        return image
    s = image.movedim(-1, 1)
    if width == 0:
        width = max(1, round(s.shape[3] * height / s.shape[2]))
    elif height == 0:
        height = max(1, round(s.shape[2] * width / s.shape[3]))
    return common_upscale(s, width, height, method, crop, "ImageScale").movedim(1, -1)


def image_scale_by(image: torch.Tensor, method: str, scale_by: float) -> torch.Tensor:
    _check_image("ImageScaleBy", "image", image)
    s = image.movedim(-1, 1)
    w, h = round(s.shape[3] * scale_by), round(s.shape[2] * scale_by)
    return common_upscale(s, w, h, method, "disabled", "ImageScaleBy").movedim(1, -1)


def repeat_latent_batch(latent: dict, amount: int) -> dict:
    s = dict(latent)
    x = latent["samples"]
    s["samples"] = x.repeat((amount,) + (1,) * (x.ndim - 1))
    mask = latent.get("noise_mask")
    if mask is not None and mask.shape[0] > 1:  # ComfyUI repeats the masks as given
        s["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
    if "batch_index" in s:
        idx = list(s["batch_index"])
        offset = max(idx) - min(idx) + 1
        s["batch_index"] = idx + [x + i * offset for i in range(1, amount) for x in idx]
    return s


def latent_from_batch(latent: dict, batch_index: int, length: int) -> dict:
    s = dict(latent)
    x = latent["samples"]
    batch_index = min(x.shape[0] - 1, batch_index)
    length = min(x.shape[0] - batch_index, length)
    s["samples"] = x[batch_index:batch_index + length].clone()
    mask = latent.get("noise_mask")
    if mask is not None:
        if mask.shape[0] == 1:
            s["noise_mask"] = mask.clone()
        else:
            if mask.shape[0] < x.shape[0]:
                mask = mask.repeat(math.ceil(x.shape[0] / mask.shape[0]), 1, 1, 1)[: x.shape[0]]
            s["noise_mask"] = mask[batch_index:batch_index + length].clone()
    if "batch_index" not in latent:
        s["batch_index"] = list(range(batch_index, batch_index + length))
    else:
        s["batch_index"] = list(latent["batch_index"])[batch_index:batch_index + length]
    return s
