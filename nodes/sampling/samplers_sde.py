"""The DPM-Solver++ SDE samplers, with Brownian-tree noise as ComfyUI draws it.

Same signature and conventions as samplers_kdiff.py. The noise is a torchsde BrownianTree
over [smallest non-zero sigma, largest sigma] seeded with the sampler seed, queried per step
as ComfyUI's BrownianTreeNoiseSampler queries it. torchsde is an optional dependency
(pip install 'lora-lab[sde]'); without it these samplers raise OptionalDependencyError.
"""
from __future__ import annotations

import functools

import torch

from .samplers_kdiff import ancestral_step, half_log_snr, report_step, sampling_steps
from .schedules import OptionalDependencyError


def import_torchsde(sampler_name: str):
    try:
        import torchsde
    except ImportError as e:
        raise OptionalDependencyError(
            f"sampler {sampler_name!r} needs the optional package torchsde: pip install 'lora-lab[sde]' (or pip install torchsde)"
        ) from e
    return torchsde


class BrownianNoise:
    """Brownian-tree increments W(sigma_next) - W(sigma), scaled to unit variance.

    One torchsde.BrownianTree over [sigma_min, sigma_max] seeded with the sampler seed
    (ComfyUI's `BrownianTreeNoiseSampler` with a single seed); the tree lives on the CPU
    unless cpu=False (the *_gpu samplers), then on x's device.
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int, sampler_name: str, cpu: bool = True):
        torchsde = import_torchsde(sampler_name)
        self.cpu = cpu
        t0, t1, self.sign = self._sort(torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        w0 = torch.zeros_like(x)
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    @staticmethod
    def _sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        s0, s1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        t0, t1, sign = self._sort(s0, s1)
        device, dtype = t0.device, t0.dtype
        if self.cpu:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        w = self.tree(t0, t1).to(device=device, dtype=dtype) * (self.sign * sign)
        return w / (s1 - s0).abs().sqrt()


def brownian_noise(x, sigmas, seed, sampler_name, cpu=True) -> BrownianNoise:
    return BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed, sampler_name, cpu=cpu)


def sample_dpmpp_sde(denoiser, x, sigmas, seed, callback, cpu_tree=True, name="dpmpp_sde", eta=1.0, r=0.5):
    """DPM-Solver++ (stochastic): a midpoint step in lambda, each half with Brownian noise."""
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, seed, name, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    fac = 1 / (2 * r)
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = lambda_s_1.neg().exp()
        alpha_s = sigmas[i] * lambda_s.exp()  # == 1 in the VE view; kept for ComfyUI's rounding
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        # step 1: to the midpoint sigma_s_1, ancestral split of the noise
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        x_2 = x_2 + alpha_s_1 * noise(sigmas[i], sigma_s_1) * su
        denoised_2 = denoiser(x_2, sigma_s_1 * s_in)
        # step 2: the full step with the blended x0
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * su
    return x


def _sde_first_order(x, denoised, sigma, sigma_next, h, eta):
    """Exact SDE step for a constant x0 prediction; returns (x, alpha_t, h_eta)."""
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * half_log_snr(sigma_next).exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return x, alpha_t, h_eta


def _sde_noise(noise, sigma, sigma_next, h, eta):
    return noise(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt()


def sample_dpmpp_2m_sde(denoiser, x, sigmas, seed, callback, solver_type="midpoint", cpu_tree=True, name="dpmpp_2m_sde", eta=1.0):
    """DPM-Solver++(2M) SDE: multistep x0 extrapolation plus Brownian noise."""
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, seed, name, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = half_log_snr(sigmas[i + 1]) - half_log_snr(sigmas[i])
            x, alpha_t, h_eta = _sde_first_order(x, denoised, sigmas[i], sigmas[i + 1], h, eta)
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:  # midpoint
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + _sde_noise(noise, sigmas[i], sigmas[i + 1], h, eta)
        old_denoised, h_last = denoised, h
    return x


def sample_dpmpp_3m_sde(denoiser, x, sigmas, seed, callback, cpu_tree=True, name="dpmpp_3m_sde", eta=1.0):
    """DPM-Solver++(3M) SDE: like 2M SDE with a second-order x0 extrapolation from 3 steps."""
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, seed, name, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2, h, h_1, h_2 = None, None, None, None, None
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = half_log_snr(sigmas[i + 1]) - half_log_snr(sigmas[i])
            x, alpha_t, h_eta = _sde_first_order(x, denoised, sigmas[i], sigmas[i + 1], h, eta)
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            x = x + _sde_noise(noise, sigmas[i], sigmas[i + 1], h, eta)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


SDE_SAMPLERS = {
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": functools.partial(sample_dpmpp_sde, cpu_tree=False, name="dpmpp_sde_gpu"),
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": functools.partial(sample_dpmpp_2m_sde, cpu_tree=False, name="dpmpp_2m_sde_gpu"),
    "dpmpp_2m_sde_heun": functools.partial(sample_dpmpp_2m_sde, solver_type="heun", name="dpmpp_2m_sde_heun"),
    "dpmpp_2m_sde_heun_gpu": functools.partial(
        sample_dpmpp_2m_sde, solver_type="heun", cpu_tree=False, name="dpmpp_2m_sde_heun_gpu"
    ),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": functools.partial(sample_dpmpp_3m_sde, cpu_tree=False, name="dpmpp_3m_sde_gpu"),
}
