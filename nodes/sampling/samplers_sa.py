"""SA-Solver (Xue et al., NeurIPS 2023, arXiv:2309.05019) with ComfyUI's numerics and noise.

The stochastic Adams predictor (order 3) and corrector (order 4) in data prediction over
lambda = -log(sigma); tau = 1 (stochastic) while sigma lies within the model's sigmas at
20 % .. 80 % of sampling (percent_to_sigma), 0 (ODE) outside; orders lowered for the last
steps when the schedule ends at 0. sa_solver_pece evaluates the model again at the corrected
state (Predict-Evaluate-Correct-Evaluate). The b coefficients integrate the Lagrange basis
through the used lambdas against exp((1 + tau^2) lambda), solved from the Vandermonde system.

Signature: fn(denoiser, x, sigmas, seed, callback, schedule) (the schedule for the tau window).
"""
from __future__ import annotations

import math

import torch

from .samplers_kdiff import (
    default_noise_sampler,
    half_log_snr,
    report_step,
    sampling_steps,
)


def exponential_coeffs(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """(1 + tau^2) * integral_s^t exp((1 + tau^2) u) u^p du / exp((1 + tau^2) t), p = 0..order-1,
    by repeated integration by parts (a lower-triangular recursion)."""
    tau_mul = 1 + tau**2
    h = t - s
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    terms = t**p - s**p * (-tau_mul * h).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    coeff = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        coeff = coeff - (depth * math.log(tau_mul))
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (coeff.exp() * signs).tril() @ terms


def b_coefficients(sigma_next: torch.Tensor, lambdas: torch.Tensor, lambda_s: torch.Tensor, lambda_t: torch.Tensor, tau: float) -> torch.Tensor:
    """The weights of the x0 predictions at `lambdas` (N,) for the step lambda_s -> lambda_t."""
    n = lambdas.shape[0]
    integrals = exponential_coeffs(lambda_s, lambda_t, n, tau)
    lagrange = torch.linalg.solve(torch.vander(lambdas, n, increasing=True).T, integrals)
    return (sigma_next * lambda_t.exp()) * lagrange


def tau_window(schedule, eta: float = 1.0):
    """sigma -> tau: eta inside [sigma at 80 %, sigma at 20 %] of the schedule, else 0."""
    start, end = schedule.percent_to_sigma(0.2), schedule.percent_to_sigma(0.8)

    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        value = sigma.item() if isinstance(sigma, torch.Tensor) else sigma
        return eta if start >= value >= end else 0.0

    return tau


def _combine(preds: list, b: torch.Tensor) -> torch.Tensor:
    return torch.tensordot(torch.stack(preds, dim=1), b, dims=([1], [0]))


def sample_sa_solver(denoiser, x, sigmas, seed, callback, schedule, pece: bool = False, s_noise: float = 1.0,
                     predictor_order: int = 3, corrector_order: int = 4):
    if len(sigmas) <= 1:
        return x
    noise_sampler = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    lambdas = half_log_snr(sigmas)
    tau_fn = tau_window(schedule)
    max_order = max(predictor_order, corrector_order)
    x_pred = x
    h, tau_t, noise = 0.0, 0.0, 0.0
    preds: list = []
    lower_order_to_end = sigmas[-1].item() == 0
    for i in sampling_steps(sigmas):
        denoised = denoiser(x_pred, sigmas[i] * s_in)
        report_step(callback, i, x_pred, denoised)
        preds = (preds + [denoised])[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not pece) else min(corrector_order, len(preds))
        if lower_order_to_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        # corrector
        if c_order == 0:
            x = x_pred
        else:
            b = b_coefficients(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t)
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t**2) * h).exp() * x + _combine(preds[-c_order:], b)
            if tau_t > 0 and s_noise > 0:
                x = x + noise  # the previous predictor step's noise
            if pece:
                denoised = denoiser(x, sigmas[i] * s_in)
                preds[-1] = denoised
        # predictor
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        tau_t = tau_fn(sigmas[i + 1])
        b = b_coefficients(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau_t)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t**2) * h).exp() * x + _combine(preds[-p_order:], b)
        if tau_t > 0 and s_noise > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * tau_t**2 * h).expm1().neg().sqrt() * s_noise
            x_pred = x_pred + noise
    return x


def sample_sa_solver_pece(denoiser, x, sigmas, seed, callback, schedule):
    return sample_sa_solver(denoiser, x, sigmas, seed, callback, schedule, pece=True)


# These take the model's schedule as a sixth argument (see samplers.sample).
SA_SAMPLERS = {
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
}
