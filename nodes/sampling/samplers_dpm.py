"""DPM-Solver (Lu et al., arXiv:2206.00927) in its fast and adaptive forms, with ComfyUI's numerics.

Both integrate the ODE in t = -log(sigma) with the noise-prediction solver of orders 1-3,
from the first sigma down to the smallest non-zero one (the schedule's inner sigmas are not
used; the result is left at that sigma, not denoised, as in ComfyUI):
- dpm_fast: len(sigmas) - 1 model calls on equal t-steps, orders 3, ..., 3, then 2, 1 or
  the remainder (DPM-Solver-fast);
- dpm_adaptive: DPM-Solver-23 with a PID step-size controller on the error between the
  orders 2 and 3 (rtol 0.05, atol 0.0078, first h 0.05), so the number of calls depends
  on the model.
The callback is called once per solver step (accepted or not for dpm_adaptive), with i
counting those steps. Same signature as samplers_kdiff.py; no noise (eta 0, ComfyUI's default).
"""
from __future__ import annotations

import math

import torch

from .samplers_kdiff import interrupt_point, report_step


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma.log()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


class _Eps:
    """The model's noise prediction at (x, t), cached per step under a key as DPM-Solver does."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.cache: dict = {}

    def __call__(self, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in self.cache:
            sigma = _sigma(t) * x.new_ones([x.shape[0]])
            self.cache[key] = (x - self.denoiser(x, sigma)) / _sigma(t)
        return self.cache[key]


def _step1(eps: _Eps, x, t, t_next):
    h = t_next - t
    return x - _sigma(t_next) * h.expm1() * eps("eps", x, t)


def _step2(eps: _Eps, x, t, t_next, r1: float = 1 / 2):
    h = t_next - t
    e = eps("eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * e
    e_r1 = eps("eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * e - _sigma(t_next) / (2 * r1) * h.expm1() * (e_r1 - e)


def _step3(eps: _Eps, x, t, t_next, r1: float = 1 / 3, r2: float = 2 / 3):
    h = t_next - t
    e = eps("eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * e
    e_r1 = eps("eps_r1", u1, s1)
    u2 = x - _sigma(s2) * (r2 * h).expm1() * e - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (e_r1 - e)
    e_r2 = eps("eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * e - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (e_r2 - e)


_STEPS = {1: _step1, 2: _step2, 3: _step3}


def _range(sigmas: torch.Tensor, name: str):
    """(sigma_max, sigma_min) ComfyUI integrates between: the first and the last non-zero sigma."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise ValueError(f"sampler {name!r} needs non-zero sigmas to integrate between, got {sigmas.tolist()}")
    return sigmas[0], sigma_min


def fast_orders(nfe: int) -> list[int]:
    """DPM-Solver-fast's orders for `nfe` model calls (they sum to nfe)."""
    m = math.floor(nfe / 3) + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


def sample_dpm_fast(denoiser, x, sigmas, seed, callback):
    if len(sigmas) <= 1:
        return x
    sigma_max, sigma_min = _range(sigmas, "dpm_fast")
    orders = fast_orders(len(sigmas) - 1)
    ts = torch.linspace(_t(sigma_max), _t(sigma_min), len(orders) + 1, device=x.device)
    for i, order in enumerate(orders):
        interrupt_point()
        eps = _Eps(denoiser)
        t, t_next = ts[i], ts[i + 1]
        denoised = x - _sigma(t) * eps("eps", x, t)
        report_step(callback, i, x, denoised)
        x = _STEPS[order](eps, x, t, t_next)
    return x


class PIDController:
    """The PID step-size controller of k-diffusion's DPM-Solver-adaptive (errors as 1 / error)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float, eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(denoiser, x, sigmas, seed, callback, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81):
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive order {order!r} must be 2 or 3")
    sigma_max, sigma_min = _range(sigmas, "dpm_adaptive")
    t_end = _t(sigma_min)
    s = _t(sigma_max)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = PIDController(abs(h_init), pcoeff, icoeff, dcoeff, order, accept_safety)
    x_prev = x
    steps = 0
    while s < t_end - 1e-5:
        interrupt_point()
        eps = _Eps(denoiser)
        t = torch.minimum(t_end, s + pid.h)
        denoised = x - _sigma(s) * eps("eps", x, s)
        if order == 2:
            x_low, x_high = _step1(eps, x, s, t), _step2(eps, x, s, t)
        else:
            x_low, x_high = _step2(eps, x, s, t, r1=1 / 3), _step3(eps, x, s, t)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high
            s = t
        report_step(callback, steps, x, denoised)
        steps += 1
    return x


DPM_SAMPLERS = {
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
}
