"""Text to image on a model handle, with ComfyUI's KSampler semantics.

prompt -> conditioning (prompt.encode_prompt) -> seeded noise and sigmas (samplers/schedules)
-> UNet denoising with CFG -> VAE decode -> IMAGE [B, H, W, C] in 0..1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..io.errors import LoraLabError, NodeInputError

NODE = "LoraLabSampler"


@dataclass(frozen=True)
class SampleSettings:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    batch_size: int = 1
    clip_skip: int = 0  # 0 = the family's default (A1111 terms: 1 = last layer, 2 = penultimate)
    batch_cfg: bool = True  # cond and uncond in one UNet call per step (False: two calls, less memory)
    a1111_noise: object = None  # noise_a1111.A1111Noise: A1111's noise instead of ComfyUI's

    def __post_init__(self):
        from .sampler_names import SAMPLER_NAMES, SCHEDULER_NAMES

        if self.sampler_name not in SAMPLER_NAMES:
            raise NodeInputError(NODE, "sampler_name", self.sampler_name, f"unknown sampler; one of {SAMPLER_NAMES}")
        if self.scheduler not in SCHEDULER_NAMES:
            raise NodeInputError(NODE, "scheduler", self.scheduler, f"unknown scheduler; one of {SCHEDULER_NAMES}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v < 8 or v % 8:
                raise NodeInputError(NODE, name, v, "must be a positive multiple of 8")
        if self.steps < 1:
            raise NodeInputError(NODE, "steps", self.steps, "must be at least 1")
        if self.batch_size < 1:
            raise NodeInputError(NODE, "batch_size", self.batch_size, "must be at least 1")
        if self.clip_skip < 0:
            raise NodeInputError(NODE, "clip_skip", self.clip_skip, "must be 0 (model default) or more")
        if isinstance(self.cfg, bool) or not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg):
            raise NodeInputError(NODE, "cfg", self.cfg, "must be a finite number")
        for name in ("prompt", "negative_prompt"):
            check_text(getattr(self, name), NODE, name)


def check_text(text, node: str, input_name: str) -> None:
    """A prompt must be a str of valid Unicode: a lone surrogate (from a broken paste or a
    JSON "\\ud800") has no UTF-8 form and makes the tokenizer fail with a TypeError."""
    if not isinstance(text, str):
        raise NodeInputError(node, input_name, type(text).__name__, "expected text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NodeInputError(node, input_name, text[max(0, e.start - 20):e.end + 20],
                             f"holds a lone surrogate U+{ord(text[e.start]):04X} at character {e.start}, "
                             "which is not text (re-type or re-paste it)") from None


@dataclass(frozen=True)
class _Cond:
    """What apply_model needs for one side of CFG: context [1, T, D] and SDXL extras."""

    context: torch.Tensor
    added: dict | None


# A longer context than this is not made by repeating both sides to a common length.
_MAX_CONCAT_TOKENS = 77 * 8


def concat_conds(cond: _Cond, uncond: _Cond) -> _Cond | None:
    """cond and uncond as one conditioning of 2 rows (for a batch [x; x], see cfg_denoiser).

    Prompts of different lengths (77 vs 154 tokens) are each repeated to their least common
    multiple, as ComfyUI does: attention over a context repeated k times is the same
    attention (every key and value k times: the same softmax weights, split k ways), so the
    result equals the separate calls within rounding. None when that length would exceed
    _MAX_CONCAT_TOKENS (then the two run as separate calls).
    """
    ta, tb = cond.context.shape[1], uncond.context.shape[1]
    t = math.lcm(ta, tb)
    if t > _MAX_CONCAT_TOKENS or cond.context.shape[0] != 1 or uncond.context.shape[0] != 1:
        return None
    ctx = torch.cat([cond.context.repeat(1, t // ta, 1), uncond.context.repeat(1, t // tb, 1)])
    added = None
    if cond.added is not None:
        added = {k: torch.cat([cond.added[k], uncond.added[k]]) for k in cond.added}
    return _Cond(ctx, added)


def _conditioning(handle, text: str, clip_skip: int | None, width: int, height: int, device, dtype,
                  input_name: str = "prompt") -> _Cond:
    from .embeddings import a1111_to_comfy, lookups_for
    from .prompt import encode_prompt

    try:  # embeddings in either syntax: A1111's bare file names become embedding:name
        c = encode_prompt(handle, a1111_to_comfy(text), clip_skip=clip_skip, lookups=lookups_for(handle))
    except LoraLabError as e:
        raise NodeInputError(NODE, input_name, text, str(e)) from None
    added = None
    if handle.family == "sdxl":
        # (original h, w, crop top, crop left, target h, w): the latent's size, as ComfyUI defaults.
        # fp32 whatever the UNet's dtype: bf16 would round 667 to 668 (the UNet embeds them in fp32).
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device)
        added = {"text_embeds": c.pooled.to(device, dtype), "time_ids": time_ids}
    return _Cond(c.cond.to(device, dtype), added)


def _apply_model_fn(unet):
    """apply_model(x_in [B,4,h,w], timestep [B], cond) -> raw UNet output (eps or v)."""

    def apply_model(x_in: torch.Tensor, timestep: torch.Tensor, cond: _Cond) -> torch.Tensor:
        b = x_in.shape[0]
        n = cond.context.shape[0]  # 1, or 2 for a concat_conds pair: each row for b // n items
        ctx = cond.context.repeat_interleave(b // n, dim=0) if n > 1 else cond.context.expand(b, -1, -1)
        added = None
        if cond.added is not None:
            added = {k: v.repeat_interleave(b // n, dim=0) if n > 1 else v.expand(b, -1) for k, v in cond.added.items()}
        dtype = next(unet.parameters()).dtype
        out = unet(x_in.to(dtype), timestep.to(x_in.device), encoder_hidden_states=ctx,
                   added_cond_kwargs=added, return_dict=False)[0]
        return out.float()

    return apply_model


@torch.no_grad()
def decode_latents(handle, latents: torch.Tensor) -> torch.Tensor:
    """latents [B,4,h,w] -> IMAGE [B, 8h, 8w, 3] float in 0..1 (ComfyUI's convention)."""
    vae = handle.vae
    dtype = next(vae.parameters()).dtype
    images = []
    for i in range(latents.shape[0]):  # one at a time: VAE decode memory grows fast with size
        z = latents[i:i + 1].to(vae.device, dtype) / handle.vae_scaling_factor
        images.append(vae.decode(z, return_dict=False)[0].float().cpu())
    x = torch.cat(images)
    return torch.clamp((x + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)


@torch.no_grad()
def generate(handle, s: SampleSettings, progress=None) -> torch.Tensor:
    """Run the whole text-to-image path; returns IMAGE [batch, height, width, 3]."""
    return decode_latents(handle, txt2img_latents(handle, s, progress))


@torch.no_grad()
def txt2img_latents(handle, s: SampleSettings, progress=None) -> torch.Tensor:
    """The sampled latents [B, 4, h, w] in the model's (scaled) latent space."""
    from ..lora.lora_stack import add_loras, strip_prompt_loras
    from ..lora.patcher import activate
    from .noise_a1111 import initial_noise
    from .samplers import ksample
    from .schedules import get_sigmas, schedule_for

    if handle.unet.config.in_channels != 4:
        raise NodeInputError(NODE, "model", handle.source,
                             f"a UNet with {handle.unet.config.in_channels} input channels (inpainting?) "
                             "cannot do plain text-to-image")
    # <lora:name:w> in the prompt applies that LoRA for this sample only (A1111 semantics).
    prompt, prompt_loras = strip_prompt_loras(s.prompt)
    negative, _ = strip_prompt_loras(s.negative_prompt, input_name="negative_prompt")
    if prompt_loras:
        handle, _ = add_loras(handle, prompt_loras, NODE, "prompt")
    activate(handle)  # the shared modules now hold base + this handle's LoRAs

    device = handle.unet.device
    dtype = next(handle.unet.parameters()).dtype
    clip_skip = s.clip_skip or None
    cond = _conditioning(handle, prompt, clip_skip, s.width, s.height, device, dtype)
    uncond = _conditioning(handle, negative, clip_skip, s.width, s.height, device, dtype, "negative_prompt")

    shape = (s.batch_size, handle.unet.config.out_channels, s.height // 8, s.width // 8)
    latent = torch.zeros(shape)  # ComfyUI's EmptyLatentImage
    noise, step_seed = initial_noise(shape, s.seed, s.a1111_noise)  # ComfyUI's, or A1111's
    schedule = schedule_for(handle)
    sigmas = get_sigmas(schedule, s.scheduler, s.steps, sampler_name=s.sampler_name)

    def callback(step, total, x, denoised):
        if progress is not None:
            progress.update(1)

    return ksample(_apply_model_fn(handle.unet), schedule, latent.to(device), noise.to(device),
                   sigmas.to(device), cond, uncond, s.cfg, s.sampler_name, step_seed, callback=callback,
                   concat=concat_conds if s.batch_cfg else None)
