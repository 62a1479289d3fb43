"""The runner's CLIP and VAE values (ComfyUI's CLIP / VAE edge types), over our model handle.

MODEL is a ModelHandle itself: its UNet side is what KSampler uses, and the LoRA patches it
carries act on the UNet only (their text strength is 0). CLIP is a ClipHandle: a ModelHandle
whose patches act on the text encoder(s) only, plus ComfyUI's clip layer. VAE is a VaeHandle
(the AutoencoderKL, fp32 or bf16, never fp16). All three are immutable; nodes make new ones.

A separate VAE file (ComfyUI's VAELoader, `models/vae/*.safetensors`) holds the LDM VAE keys
without the checkpoint's `first_stage_model.` prefix (some files keep it; both are read).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: the text-encoder side of `handle`; clip_layer as ComfyUI's CLIPSetLastLayer (-1 = last
    layer, -2 = penultimate ...; None = the family's default)."""

    handle: Any
    clip_layer: int | None = None

    def __post_init__(self):
        c = self.clip_layer
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c > -1):
            raise ValueError(f"clip_layer must be None or a negative int (-1 = last layer), got {c!r}")

    @property
    def clip_skip(self) -> int | None:
        """In A1111 terms (1 = last layer), what encode_prompt takes."""
        return None if self.clip_layer is None else -self.clip_layer

    def __repr__(self) -> str:
        return f"ClipHandle({self.handle!r}, clip_layer={self.clip_layer})"


@dataclass(frozen=True)
class VaeHandle:
    """VAE: an AutoencoderKL; LATENT samples are its raw (unscaled) latents, as in ComfyUI."""

    vae: Any
    source: str = ""
    downscale_ratio: int = 8

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def __repr__(self) -> str:
        return f"VaeHandle(source={self.source!r})"


def load_vae_file(path, dtype=torch.float32, device="cpu") -> VaeHandle:
    """A standalone LDM VAE file (.safetensors) -> VaeHandle; refuses files that are no SD VAE."""
    from ..io.errors import CheckpointError
    from ..io.safetensors_io import TensorSource
    from . import ckpt_config, ckpt_keys
    from .checkpoint import _assign, vae_dtype
    from .hf_classes import vae_class

    src = TensorSource(path)
    prefix = ckpt_keys.VAE_PREFIX
    keyed = {k if k.startswith(prefix) else prefix + k: k for k in src.shapes}  # prefixed -> file key
    shapes = {k: src.shapes[v] for k, v in keyed.items()}
    if prefix + "encoder.conv_in.weight" not in shapes or prefix + "post_quant_conv.weight" not in shapes:
        raise CheckpointError(f"{path}: not an SD VAE file (no encoder.conv_in / post_quant_conv keys)")
    cfg = ckpt_config.infer_vae_config(shapes, "sd1")  # sample_size / scaling_factor are not used here
    lazy = {k: src.get(v) for k, v in keyed.items()}
    sd, left = ckpt_keys.ldm_to_diffusers(lazy, ckpt_keys.vae_block_pairs(cfg), prefix)
    left = [k for k in left if not k.startswith(prefix + "loss.")]
    if left:
        log.warning("%s: %d VAE keys not used, e.g. %s", path, len(left), left[:5])
    with torch.device("meta"):
        vae = vae_class()(**cfg)
    return VaeHandle(_assign(vae, sd, "VAE", vae_dtype(dtype), device), source=str(path))
