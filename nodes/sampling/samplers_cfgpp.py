"""CFG++ samplers, res_multistep and gradient estimation, with ComfyUI's numerics and noise.

Same signature and conventions as samplers_kdiff.py. The CFG++ variants (Chung et al. 2024,
"CFG++: manifold-constrained classifier free guidance") step along the *unconditional*
prediction while renoising from the guided one; they get both from one model call through
guidance.denoise_with_uncond (every call runs cond and uncond, even at cfg 1, as ComfyUI's
post-CFG hook with disable_cfg1_optimization does). res_multistep is the second-order
multistep exponential integrator of Zhang et al. (arXiv:2308.02157), its ancestral form
with eta = 1; gradient estimation is Permenter & Yuan's corrected Euler (ge_gamma = 2).
"""
from __future__ import annotations

import torch

from .guidance import denoise_with_uncond
from .samplers_kdiff import (
    ancestral_step,
    default_noise_sampler,
    half_log_snr,
    report_step,
    sampling_steps,
    to_d,
)


def _sigma_of(t: torch.Tensor) -> torch.Tensor:
    """lambda -> sigma = exp(-lambda) (the inverse of half_log_snr)."""
    return t.neg().exp()


def sample_euler_ancestral_cfg_pp(denoiser, x, sigmas, seed, callback, eta: float = 1.0, s_noise: float = 1.0):
    """Euler (DDIM-style) steps from the uncond x0 direction, re-noised from the guided x0."""
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised, uncond = denoise_with_uncond(denoiser, x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        # alpha = sigma * exp(lambda): 1 in the variance-exploding view, kept for ComfyUI's rounding
        alpha_s = sigmas[i] * half_log_snr(sigmas[i]).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1]).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond)
        sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        sigma_down = alpha_t * sigma_down
        x = alpha_t * denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_euler_cfg_pp(denoiser, x, sigmas, seed, callback):
    return sample_euler_ancestral_cfg_pp(denoiser, x, sigmas, seed, callback, eta=0.0, s_noise=0.0)


def sample_dpmpp_2s_ancestral_cfg_pp(denoiser, x, sigmas, seed, callback, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(2S) ancestral on the uncond x0, with the CFG++ shift (denoised - uncond)."""
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised, uncond = denoise_with_uncond(denoiser, x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report_step(callback, i, x, denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
        else:
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma_of(s) / _sigma_of(t)) * (x + (denoised - uncond)) - (-h * 0.5).expm1() * denoised
            denoised_2, uncond_2 = denoise_with_uncond(denoiser, x_2, _sigma_of(s) * s_in)
            # ComfyUI's hook has by now recorded the midpoint call's uncond, and the full step uses it
            x = (_sigma_of(t_next) / _sigma_of(t)) * (x + (denoised - uncond_2)) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_dpmpp_2m_cfg_pp(denoiser, x, sigmas, seed, callback):
    """DPM-Solver++(2M) with CFG++: the multistep correction from the previous uncond x0."""
    s_in = x.new_ones([x.shape[0]])
    old_uncond = None
    for i in sampling_steps(sigmas):
        denoised, uncond = denoise_with_uncond(denoiser, x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def _phi1(t):
    return torch.expm1(t) / t


def _phi2(t):
    return (_phi1(t) - 1.0) / t


def res_multistep(denoiser, x, sigmas, seed, callback, eta: float = 1.0, cfg_pp: bool = False, s_noise: float = 1.0):
    """RES second-order multistep (ancestral for eta > 0): the exponential integrator with the
    previous step's x0 as the second point, its weights b1, b2 from phi_1, phi_2."""
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    old_sigma_down, old_denoised = None, None
    for i in sampling_steps(sigmas):
        if cfg_pp:
            denoised, uncond = denoise_with_uncond(denoiser, x, sigmas[i] * s_in)
        else:
            denoised, uncond = denoiser(x, sigmas[i] * s_in), None
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report_step(callback, i, x, denoised)
        if sigma_down == 0 or old_denoised is None:  # Euler
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old = half_log_snr(sigmas[i]), half_log_snr(old_sigma_down)
            t_next, t_prev = half_log_snr(sigma_down), half_log_snr(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1, phi2 = _phi1(-h), _phi2(-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = _sigma_of(h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = _sigma_of(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0 and eta:  # eta 0: ComfyUI adds noise * 0 (an exact no-op)
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


def sample_gradient_estimation(denoiser, x, sigmas, seed, callback, ge_gamma: float = 2.0, cfg_pp: bool = False):
    """Euler plus a gradient-estimation correction (ge_gamma - 1) * (d - d_previous) * dt."""
    s_in = x.new_ones([x.shape[0]])
    old_d = None
    for i in sampling_steps(sigmas):
        if cfg_pp:
            denoised, uncond = denoise_with_uncond(denoiser, x, sigmas[i] * s_in)
            d = to_d(x, sigmas[i], uncond)
        else:
            denoised = denoiser(x, sigmas[i] * s_in)
            d = to_d(x, sigmas[i], denoised)
        report_step(callback, i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + ((ge_gamma - 1) * (d - old_d)) * dt
        old_d = d
    return x


def _partial(fn, **kw):
    return lambda denoiser, x, sigmas, seed, callback: fn(denoiser, x, sigmas, seed, callback, **kw)


CFGPP_SAMPLERS = {
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "res_multistep": _partial(res_multistep, eta=0.0),
    "res_multistep_cfg_pp": _partial(res_multistep, eta=0.0, cfg_pp=True),
    "res_multistep_ancestral": _partial(res_multistep, eta=1.0),
    "res_multistep_ancestral_cfg_pp": _partial(res_multistep, eta=1.0, cfg_pp=True),
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": _partial(sample_gradient_estimation, cfg_pp=True),
}
