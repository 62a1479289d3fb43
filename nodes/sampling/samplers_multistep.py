"""Deterministic multistep ODE samplers: Heun++ 2, iPNDM, iPNDM-v and DEIS, with ComfyUI's numerics.

Same signature and conventions as samplers_kdiff.py. They walk the probability-flow ODE
dx/dsigma = (x - x0) / sigma; the multistep ones reuse the slopes of earlier steps:
- heunpp2: Heun with the slopes at the next one or two sigmas, weighted by sigma / sigma_0;
- ipndm: improved pseudo-numerical (Adams-Bashforth of order <= 4 on equal-step weights,
  Zhang & Chen / Zhou et al.'s diff-solvers);
- ipndm_v: the same with variable-step Adams-Bashforth weights;
- deis: the exponential integrator of Zhang & Chen (arXiv:2204.13902), "tAB" form: the
  Lagrange polynomials through the last <= 3 slopes integrated against the VP integrand on
  a 10000-point rule, in the VP time of an EDM sigma range (0.002 .. 80), as ComfyUI does.
"""
from __future__ import annotations

import numpy
import torch

from .samplers_kdiff import report_step, sampling_steps, to_d


def sample_heunpp2(denoiser, x, sigmas, seed, callback):
    """Heun++ (s_churn 0): Euler into the last sigma, Heun into the one before, else the slopes
    at sigma_i, sigma_{i+1} and sigma_{i+2}, averaged with weights 1 - w2 - w3, w2, w3."""
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in sampling_steps(sigmas):
        sigma_hat = sigmas[i] * 1.0  # (gamma + 1) with ComfyUI's gamma 0
        denoised = denoiser(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        report_step(callback, i, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], denoiser(x_2, sigmas[i + 1] * s_in))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], denoiser(x_3, sigmas[i + 2] * s_in))
            w = 3 * sigmas[0]
            w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def _push(history: list, d: torch.Tensor, keep: int) -> None:
    """Keep the last `keep` slopes, oldest first."""
    history.append(d)
    if len(history) > keep:
        history.pop(0)


def _ipndm_v_coeffs(sig: torch.Tensor, i: int, order: int) -> tuple:
    """Variable-step Adams-Bashforth weights of the slopes at steps i, i-1, ... (newest first)."""
    h = sig[i + 1] - sig[i]
    h1 = sig[i] - sig[i - 1]
    if order == 2:
        return ((2 + (h / h1)) / 2, -(h / h1) / 2)
    h2 = sig[i - 1] - sig[i - 2]
    temp1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        c1 = (2 + (h / h1)) / 2 + temp1
        c2 = -(h / h1) / 2 - (1 + h1 / h2) * temp1
        return (c1, c2, temp1 * h1 / h2)
    h3 = sig[i - 2] - sig[i - 3]
    temp2 = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) \
        * (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    c1 = (2 + (h / h1)) / 2 + temp1 + temp2
    c2 = -(h / h1) / 2 - (1 + h1 / h2) * temp1 - (1 + (h1 / h2) + ratio) * temp2
    c3 = temp1 * h1 / h2 + ((h1 / h2) + ratio * (1 + h2 / h3)) * temp2
    c4 = -temp2 * ratio * h1 / h2
    return (c1, c2, c3, c4)


def _ipndm_fixed_step(h, sigmas, i: int, order: int, d, ds):
    """iPNDM's fixed-step Adams-Bashforth step of order 2..4, h * (...) / n in ComfyUI's order."""
    if order == 2:
        return h * (3 * d - ds[-1]) / 2
    if order == 3:
        return h * (23 * d - 16 * ds[-1] + 5 * ds[-2]) / 12
    return h * (55 * d - 59 * ds[-1] + 37 * ds[-2] - 9 * ds[-3]) / 24


def _ipndm_variable_step(h, sigmas, i: int, order: int, d, ds):
    """iPNDM-v's variable-step step of order 2..4 (weights from _ipndm_v_coeffs)."""
    c = _ipndm_v_coeffs(sigmas, i, order)
    slope = c[0] * d
    for k in range(1, order):
        slope = slope + c[k] * ds[-k]
    return h * slope


def _ipndm_loop(denoiser, x, sigmas, callback, max_order: int, step_of):
    """The iPNDM step loop: Euler at order 1, `step_of(h, sigmas, i, order, d, ds)` above it."""
    s_in = x.new_ones([x.shape[0]])
    ds: list = []  # earlier slopes, oldest first
    for i in sampling_steps(sigmas):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, t_cur * s_in)
        report_step(callback, i, x, denoised)
        d = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d
        else:
            x_next = x + step_of(t_next - t_cur, sigmas, i, order, d, ds)
        _push(ds, d, max_order - 1)
        x = x_next
    return x


def sample_ipndm(denoiser, x, sigmas, seed, callback, max_order: int = 4):
    return _ipndm_loop(denoiser, x, sigmas, callback, max_order, _ipndm_fixed_step)


def sample_ipndm_v(denoiser, x, sigmas, seed, callback, max_order: int = 4):
    return _ipndm_loop(denoiser, x, sigmas, callback, max_order, _ipndm_variable_step)


# -- DEIS -------------------------------------------------------------------------------------------


def _np_log1p_sq(sigma) -> torch.Tensor:
    """log(sigma^2 + 1) taken by NumPy as ComfyUI's deis.py takes it: in float32 for a float sigma,
    in float64 for an int one (its sigma_max is the int 80), and the dtype carries on from there."""
    v = (torch.tensor(sigma) ** 2 + 1).numpy()
    return torch.from_numpy(numpy.asarray(numpy.log(v)))


def edm_to_vp_time(sigmas: torch.Tensor, epsilon_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: int = 80):
    """EDM sigmas -> VP times t (float32, CPU) and the VP beta_0, beta_1 (float64 0-d, see
    _np_log1p_sq) of the VP-SDE whose marginals have sigma_min .. sigma_max at t = epsilon_s .. 1."""
    log_min, log_max = _np_log1p_sq(sigma_min), _np_log1p_sq(sigma_max)
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    beta_min = log_max - 0.5 * beta_d
    sig = sigmas.detach().cpu()
    t = ((beta_min**2 + 2 * beta_d * (sig**2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _vp_integrand(beta_0: torch.Tensor, beta_1: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """-0.5 * d log(alpha)/dtau / sqrt(alpha (1 - alpha)), alpha = exp(-tau^2 (b1 - b0) / 2 - tau b0);
    the derivative by autograd, as ComfyUI takes it (same bits)."""
    with torch.inference_mode(False), torch.enable_grad():
        tau = taus.clone().requires_grad_(True)
        alpha = torch.exp(-0.5 * tau**2 * (beta_1.clone() - beta_0.clone()) - tau * beta_0.clone())
        (grad,) = torch.autograd.grad(alpha.log().sum(), tau)
    alpha = alpha.detach()
    return -0.5 * grad / torch.sqrt(alpha * (1 - alpha))


def deis_coefficients(sigmas: torch.Tensor, max_order: int = 3, n_points: int = 10000) -> list:
    """Per step i, the weights of the slopes at steps i, i-1, ... (tAB-DEIS); [] for first-order
    steps and for the last step into sigma 0 (taken as Euler)."""
    t, beta_0, beta_1 = edm_to_vp_time(sigmas)
    coeffs = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1 or not sigmas[i + 1] > 0:
            coeffs.append([])
            continue
        taus = torch.linspace(t[i], t[i + 1], n_points)
        dtau = (t[i + 1] - t[i]) / n_points
        prev = t[[i - k for k in range(order)]]
        integrand = _vp_integrand(beta_0, beta_1, taus)
        row = []
        for j in range(order):
            poly = 1
            for k in range(order):
                if k != j:
                    poly = poly * ((taus - prev[k]) / (prev[j] - prev[k]))
            row.append(torch.sum(integrand * poly) * dtau)
        coeffs.append(row)
    return coeffs


def sample_deis(denoiser, x, sigmas, seed, callback, max_order: int = 3):
    s_in = x.new_ones([x.shape[0]])
    coeffs = deis_coefficients(sigmas, max_order)
    ds: list = []
    for i in sampling_steps(sigmas):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, t_cur * s_in)
        report_step(callback, i, x, denoised)
        d = (x - denoised) / t_cur
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (t_next - t_cur) * d
        else:
            c = coeffs[i]
            x_next = x + c[0] * d
            for k in range(1, order):
                x_next = x_next + c[k] * ds[-k]
        _push(ds, d, max_order - 1)
        x = x_next
    return x


MULTISTEP_SAMPLERS = {
    "heunpp2": sample_heunpp2,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
}
