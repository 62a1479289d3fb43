"""Stochastic exponential-integrator samplers: ER-SDE and SEEDS-2/3, with ComfyUI's numerics and noise.

Same signature and conventions as samplers_kdiff.py; the noise is ComfyUI's default noise
sampler (one generator on x's device seeded with the sampler seed), drawn where ComfyUI draws it.
- er_sde: Cui et al.'s extended reverse-time SDE solver (arXiv:2309.06169), VP form, up to
  3 stages, noise scaler x * (exp(x^0.3) + 10), 200-point integrals;
- seeds_2 / seeds_3: Gonzalez et al.'s stochastic explicit exponential derivative-free
  solvers (arXiv:2305.14267), data prediction, eta 1, stages at r = 1/2 and r = 1/3, 2/3.
For SD's eps / v models lambda = -log(sigma) and alpha = sigma * exp(lambda) (1 up to rounding).
"""
from __future__ import annotations

import torch

from .samplers_kdiff import (
    default_noise_sampler,
    half_log_snr,
    report_step,
    sampling_steps,
)


def _er_noise_scaler(x: torch.Tensor) -> torch.Tensor:
    return x * ((x**0.3).exp() + 10.0)


def sample_er_sde(denoiser, x, sigmas, seed, callback, s_noise: float = 1.0, max_stage: int = 3):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    n_points = 200.0
    point_index = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    er_lambdas = half_log_snr(sigmas).neg().exp()  # sigma / alpha
    old_denoised, old_denoised_d = None, None
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s, alpha_t = sigmas[i] / lam_s, sigmas[i + 1] / lam_t
            r_alpha = alpha_t / alpha_s
            r = _er_noise_scaler(lam_t) / _er_noise_scaler(lam_s)
            x = r_alpha * r * x + alpha_t * (1 - r) * denoised  # stage 1: Euler
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / n_points
                lam_pos = lam_t + point_index * step
                scaled = _er_noise_scaler(lam_pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (lam_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * _er_noise_scaler(lam_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((lam_pos - lam_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * _er_noise_scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                std = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * std
        old_denoised = denoised
    return x


def _sigma_of(lam: torch.Tensor) -> torch.Tensor:
    return lam.neg().exp()


def _phi1(h: torch.Tensor) -> torch.Tensor:  # h * phi_1(h)
    return torch.expm1(h)


def _phi2(h: torch.Tensor) -> torch.Tensor:  # h * phi_2(h)
    return (torch.expm1(h) - h) / h


def _renoise(sde_noise, factor, noise, s_from, s_to):
    """Carry the stage noise over a segment (decay exp(factor)) and add the segment's own."""
    return sde_noise * factor.exp() + factor.mul(2).expm1().neg().sqrt() * noise(s_from, s_to)


def sample_seeds_2(denoiser, x, sigmas, seed, callback, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    fac = 1 / (2 * r)
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = _sigma_of(lam_1)
        alpha_1, alpha_t = sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * _phi1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = denoiser(x_2, sigma_1 * s_in)
        denoised_d = torch.lerp(denoised, denoised_2, fac)
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * _phi1(-h_eta) * denoised_d
        if inject:
            sde_noise = _renoise(sde_noise, (r - 1) * h * eta, noise, sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def sample_seeds_3(denoiser, x, sigmas, seed, callback, eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1.0 / 3, r_2: float = 2.0 / 3):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = _sigma_of(lam_1), _sigma_of(lam_2)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * _phi1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = denoiser(x_2, sigma_1 * s_in)
        # stage 2
        a3_2 = r_2 / r_1 * _phi2(-r_2 * h_eta)
        a3_1 = _phi1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            sde_noise = _renoise(sde_noise, (r_1 - r_2) * h * eta, noise, sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = denoiser(x_3, sigma_2 * s_in)
        # stage 3
        b3 = _phi2(-h_eta) / r_2
        b1 = _phi1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            sde_noise = _renoise(sde_noise, (r_2 - 1) * h * eta, noise, sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


STOCHASTIC_SAMPLERS = {
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
}
