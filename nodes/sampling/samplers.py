"""Samplers under ComfyUI's names, its seeded noise, and the whole KSampler path (noise, CFG).

    noise = prepare_noise(latent.shape, seed)                       # ComfyUI's initial noise
    sigmas = get_sigmas(schedule, "karras", 20, sampler_name="dpmpp_2m")
    out = ksample(apply_model, schedule, latent, noise, sigmas, cond, uncond, 7.0, "dpmpp_2m", seed)

With the same model, seed and settings this gives the latent ComfyUI's KSampler gives: the
schedules, the sampler arithmetic and the noise draws all follow ComfyUI (see
schedules.py, samplers_kdiff.py, samplers_sde.py, samplers_unipc.py). Latents are in the model's latent space
(already multiplied by the VAE scaling factor, as diffusers keeps them); ComfyUI's LATENT is
unscaled and its KSampler multiplies by the factor on the way in and divides on the way out.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from .guidance import GuidedDenoiser
from .sampler_names import SAMPLER_NAMES
from .samplers_cfgpp import CFGPP_SAMPLERS
from .samplers_dpm import DPM_SAMPLERS
from .samplers_kdiff import KDIFF_SAMPLERS
from .samplers_multistep import MULTISTEP_SAMPLERS
from .samplers_sa import SA_SAMPLERS
from .samplers_sde import SDE_SAMPLERS, import_torchsde
from .samplers_stochastic import STOCHASTIC_SAMPLERS
from .samplers_unipc import sample_unipc
from .schedules import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    DiscreteSchedule,
    OptionalDependencyError,
)

log = logging.getLogger(__name__)

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "SAMPLER_NAMES",
    "SDE_SAMPLER_NAMES",
    "OptionalDependencyError",
    "cfg_denoiser",
    "ksample",
    "prepare_noise",
    "sample",
]

_SAMPLERS: dict[str, Callable] = {
    **KDIFF_SAMPLERS,
    **SDE_SAMPLERS,
    **CFGPP_SAMPLERS,
    **MULTISTEP_SAMPLERS,
    **DPM_SAMPLERS,
    **STOCHASTIC_SAMPLERS,
    **SA_SAMPLERS,
    "uni_pc": sample_unipc,
    "uni_pc_bh2": lambda denoiser, x, sigmas, seed, callback: sample_unipc(denoiser, x, sigmas, seed, callback, variant="bh2"),
}
assert set(SAMPLER_NAMES) == set(_SAMPLERS) and len(SAMPLER_NAMES) == len(_SAMPLERS)
SCHEDULE_SAMPLER_NAMES = tuple(SA_SAMPLERS)  # these also take the model's schedule (sa_solver's tau window)
SDE_SAMPLER_NAMES = tuple(n for n in SAMPLER_NAMES if n in SDE_SAMPLERS)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_sampler_name(sampler_name: str) -> None:
    if sampler_name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {sampler_name!r}; choose one of {SAMPLER_NAMES}")


def prepare_noise(shape, seed: int) -> torch.Tensor:
    """ComfyUI's initial noise: one CPU generator seeded with `seed`, the whole batch at once, float32.

    (ComfyUI seeds torch's global generator; a private generator gives the same numbers
    without touching global state.)
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return torch.randn(tuple(shape), dtype=torch.float32, generator=generator, device="cpu")


@torch.no_grad()
def sample(sampler_name: str, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, seed: int, callback=None,
           schedule: DiscreteSchedule | None = None) -> torch.Tensor:
    """Run one sampler from x (B, C, H, W), already noise-scaled to sigmas[0], down the sigmas.

    denoiser(x, sigma: (B,)) -> x0 prediction like x. callback(step_index, total, x, denoised)
    is called once per step (for uni_pc, x is in its variance-preserving view). `seed` seeds
    the ancestral noise (a generator on x's device) and the SDE Brownian tree, as ComfyUI
    seeds them with the KSampler seed. `schedule` (the model's) is needed by sa_solver and
    sa_solver_pece only (their stochastic window is 20 %..80 % of the schedule's sigmas).
    The *_cfg_pp samplers read the uncond x0 through denoiser.with_uncond (a GuidedDenoiser);
    a plain denoiser is its own uncond. dpm_fast / dpm_adaptive call back once per solver step.
    """
    _check_sampler_name(sampler_name)
    if sampler_name in SCHEDULE_SAMPLER_NAMES and schedule is None:
        raise ValueError(f"sampler {sampler_name!r} needs the model's schedule (schedule=...)")
    if sampler_name in SDE_SAMPLERS:
        import_torchsde(sampler_name)  # fail before any model call
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    sigmas = sigmas.to(x.device)
    total = len(sigmas) - 1
    step_cb = None
    if callback is not None:
        step_cb = lambda i, xi, denoised: callback(i, total, xi, denoised)
    log.debug("sampling %s: %d steps, sigma %.4g -> %.4g", sampler_name, total, float(sigmas[0]), float(sigmas[-1]))
    # A1111 noise (noise_a1111.ImageNoise) reaches the step noise of every sampler drawing it
    # through default_noise_sampler; SDE samplers get its int (the first image's seed: their tree)
    keep = hasattr(seed, "noise_sampler") and sampler_name not in SDE_SAMPLERS
    seed = seed if keep else int(seed)
    if sampler_name in SCHEDULE_SAMPLER_NAMES:
        return _SAMPLERS[sampler_name](denoiser, x, sigmas, seed, step_cb, schedule)
    return _SAMPLERS[sampler_name](denoiser, x, sigmas, seed, step_cb)


def cfg_denoiser(apply_model, schedule: DiscreteSchedule, cond, uncond, cfg: float, concat=None) -> Denoiser:
    """The denoiser ComfyUI's CFGGuider gives a sampler.

    apply_model(x_in, timestep: (B,) float, cond) -> raw model output (eps or v), where
    x_in = schedule.calculate_input(sigma, x) and timestep = the nearest training index.
    Guidance mixes the x0 predictions: uncond + (cond - uncond) * cfg; at cfg == 1 the
    uncond pass is skipped (ComfyUI's cfg1 optimisation, its result is cond * cfg exactly).

    concat(cond, uncond) -> one conditioning for a doubled batch (the first B rows cond, the
    last B uncond), or None when the two cannot share a batch. Given, cond and uncond run as
    one model call on [x_in; x_in] (as ComfyUI and diffusers do: one UNet pass of batch 2B
    instead of two of B); the result equals the two-call one within fp32 rounding.

    Returns a GuidedDenoiser: its `with_uncond` (used by the CFG++ samplers) runs both sides
    even at cfg 1 and also returns the uncond x0.
    """
    skip_uncond = math.isclose(cfg, 1.0)
    both = None if (concat is None or skip_uncond) else concat(cond, uncond)

    def predict(x, sigma, c):
        x_in = schedule.calculate_input(sigma, x)
        timestep = schedule.timestep(sigma).float()
        return schedule.calculate_denoised(sigma, apply_model(x_in, timestep, c).float(), x)

    def predict_both(x, sigma, conds):
        x_in = schedule.calculate_input(sigma, x)
        timestep = schedule.timestep(sigma).float()
        out = apply_model(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]), conds).float()
        b = x.shape[0]
        return (schedule.calculate_denoised(sigma, out[:b], x), schedule.calculate_denoised(sigma, out[b:], x))

    def guided(x, sigma):
        if both is not None:
            cond_x0, uncond_x0 = predict_both(x, sigma, both)
            return uncond_x0 + (cond_x0 - uncond_x0) * cfg
        cond_x0 = predict(x, sigma, cond)
        if skip_uncond:
            return cond_x0 * cfg
        uncond_x0 = predict(x, sigma, uncond)
        return uncond_x0 + (cond_x0 - uncond_x0) * cfg

    batched = [both]  # split's batched conditioning (at cfg 1 built on first use)

    def split(x, sigma):  # both sides whatever the cfg: the model calls of the CFG++ samplers
        if batched[0] is None and concat is not None:
            batched[0] = concat(cond, uncond)
        if batched[0] is not None:
            cond_x0, uncond_x0 = predict_both(x, sigma, batched[0])
        else:
            cond_x0, uncond_x0 = predict(x, sigma, cond), predict(x, sigma, uncond)
        return uncond_x0 + (cond_x0 - uncond_x0) * cfg, uncond_x0

    return GuidedDenoiser(guided, split)


def ksample(
    apply_model,
    schedule: DiscreteSchedule,
    latent: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond,
    uncond,
    cfg: float,
    sampler_name: str,
    seed: int,
    callback=None,
    concat=None,
) -> torch.Tensor:
    """ComfyUI's KSampler from the sigmas on: noise the latent, sample with CFG, return x0.

    latent, noise: (B, C, H, W); noise as from prepare_noise. The start is
    latent + noise * sigma, or latent + noise * sqrt(1 + sigma^2) when sigmas[0] is the
    schedule's sigma_max (ComfyUI's max_denoise rule). Empty sigmas (denoise 0) return the
    latent unchanged. cond / uncond are passed through to apply_model untouched; `concat`
    batches them into one model call per step (see cfg_denoiser).
    """
    _check_sampler_name(sampler_name)
    if latent.shape != noise.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match latent shape {tuple(latent.shape)}")
    if sigmas.shape[-1] == 0:
        return latent
    device = latent.device
    noise, sigmas = noise.to(device), sigmas.to(device)
    # A1111 noise: x = noise * sigma unless its "SGM noise multiplier" (noise_a1111.ImageNoise.max_denoise)
    max_denoise = schedule.max_denoise(sigmas) and getattr(seed, "max_denoise", True)
    x = schedule.noise_scaling(sigmas[0], noise, latent, max_denoise)
    denoiser = cfg_denoiser(apply_model, schedule, cond, uncond, float(cfg), concat=concat)
    samples = sample(sampler_name, denoiser, x, sigmas, seed, callback, schedule=schedule)
    return schedule.inverse_noise_scaling(sigmas[-1], samples)
