"""Our Sample from a given latent: img2img (denoise < 1), inpainting (a noise mask; 9-channel
inpainting UNets get ComfyUI's concat inputs), second passes (hires fix).

The same path as ComfyUI's KSampler (comfy_ksampler.ksampler) with our prompt handling
(<lora:...> tags applied for this sample, weights, clip skip): prompt + negative become
one-entry CONDITIONING lists and the latent is a ComfyUI LATENT dict, so a LoRA Lab Sample
and a core KSampler given the same inputs give the same latent.
"""
from __future__ import annotations

import torch

from ..io.errors import NodeInputError
from .txt2img import NODE, SampleSettings


def conditioning_for(handle, text: str, clip_skip: int | None) -> list:
    """[[cond, {"pooled_output": ...}]] as CLIPTextEncode builds it (the caller activated the handle)."""
    from .prompt import encode_prompt

    c = encode_prompt(handle, text, clip_skip=clip_skip)
    return [[c.cond.float().cpu(), {"pooled_output": None if c.pooled is None else c.pooled.float().cpu()}]]


def empty_latent(s: SampleSettings) -> dict:
    return {"samples": torch.zeros([s.batch_size, 4, s.height // 8, s.width // 8])}


def with_mask(latent: dict, mask: torch.Tensor | None) -> dict:
    """SetLatentNoiseMask: mask [B|1, H, W] (1 = repaint) attached as [B, 1, H, W]."""
    if mask is None:
        return latent
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise NodeInputError(NODE, "mask", shape, "expected a MASK [batch, height, width]")
    return {**latent, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))}


@torch.no_grad()
def sample_latent(handle, s: SampleSettings, latent: dict | None = None, denoise: float = 1.0,
                  progress=None) -> dict:
    """KSampler semantics on our settings; returns a LATENT dict (raw VAE latents)."""
    from ..lora.lora_stack import add_loras, strip_prompt_loras
    from ..lora.patcher import activate
    from .comfy_ksampler import KSamplerSettings, ksampler

    prompt, prompt_loras = strip_prompt_loras(s.prompt)
    negative, _ = strip_prompt_loras(s.negative_prompt)
    if prompt_loras:
        handle, _ = add_loras(handle, prompt_loras, NODE, "prompt")
    activate(handle)
    clip_skip = s.clip_skip or None
    pos = conditioning_for(handle, prompt, clip_skip)
    neg = conditioning_for(handle, negative, clip_skip)
    ks = KSamplerSettings(s.seed, s.steps, s.cfg, s.sampler_name, s.scheduler, denoise=float(denoise), node=NODE,
                          a1111_noise=s.a1111_noise)
    callback = None if progress is None else (lambda *a: progress.update(1))
    return ksampler(handle, ks, pos, neg, latent if latent is not None else empty_latent(s), callback=callback)


def inpaint_model(handle) -> bool:
    return handle.unet.config.in_channels == 9
