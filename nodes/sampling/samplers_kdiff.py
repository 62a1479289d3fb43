"""k-diffusion-style samplers with ComfyUI's numerics and noise.

Every sampler here has the signature
    fn(denoiser, x, sigmas, seed, callback) -> x
where x (B, C, H, W) is already noise-scaled (x = x0 + sigma * eps), `sigmas` (n + 1,) is
the float32 schedule on x's device, `denoiser(x, sigma: (B,)) -> x0` and `callback(i, x,
denoised)` is called once per step before the update. The arithmetic follows ComfyUI's
`comfy/k_diffusion/sampling.py` operation by operation (same order, same dtypes), so a
deterministic denoiser gives the same latents bit for bit. Noise is drawn exactly where and
as ComfyUI draws it: one generator on x's device seeded with the sampler seed. (The SDE
samplers, with their Brownian-tree noise, are in samplers_sde.py.)
"""
from __future__ import annotations

import functools

import numpy
import torch

from ..io.progress import check_interrupt

# -- small pure rules ---------------------------------------------------------------------


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) or () -> (B, 1, 1, 1) / (1, 1, 1, 1) to broadcast over a latent."""
    return v[(...,) + (None,) * (ndim - v.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - x0) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """Split the step sigma_from -> sigma_to into a deterministic step to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def euler_step(x, d, dt):
    return x + d * dt


def log_midpoint(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """Geometric mean of two sigmas (DPM-Solver-2's midpoint)."""
    return sigma_a.log().lerp(sigma_b.log(), 0.5).exp()


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = -log(sigma) in the variance-exploding view."""
    return sigma.log().neg()


# QUADPACK's 21-point Gauss-Kronrod rule on [-1, 1]: nodes x_k >= 0 (the centre last) and weights.
_QK21_NODES = (
    0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508,
    0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
    0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866,
    0.148874338981631210884826001129720, 0.0,
)
_QK21_WEIGHTS = (
    0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580,
    0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
    0.123491976262065851077208814726910, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717,
    0.147739104901338491374841515972068, 0.149445554002916905664936468389821,
)


def qk21(f, a: float, b: float) -> float:
    """Integral of f over [a, b] by the 21-point Kronrod rule, summed in QUADPACK's order
    (centre, then the Gauss nodes, then the Kronrod-only nodes), all in float64."""
    centre, half = 0.5 * (a + b), 0.5 * (b - a)
    total = _QK21_WEIGHTS[10] * f(centre)
    for k in (1, 3, 5, 7, 9, 0, 2, 4, 6, 8):
        absc = half * _QK21_NODES[k]
        total += _QK21_WEIGHTS[k] * (f(centre - absc) + f(centre + absc))
    return total * half


def lms_basis(t: numpy.ndarray, i: int, j: int, order: int):
    """tau -> the j-th Lagrange basis polynomial through t[i], t[i-1], ..., t[i-order+1].

    Evaluated in float32, as ComfyUI's integrand evaluates under NumPy >= 2 (t holds float32
    sigmas and the Python-float tau is cast to float32): that rounding is visible in the
    LMS coefficients, so it is reproduced rather than improved on.
    """

    def f(tau: float) -> float:
        tau32 = numpy.float32(tau)
        prod = numpy.float32(1.0)
        for k in range(order):
            if k != j:
                prod = prod * ((tau32 - t[i - k]) / (t[i - j] - t[i - k]))
        return float(prod)

    return f


@functools.lru_cache(maxsize=1)
def _scipy_quad():
    try:
        from scipy.integrate import quad
    except ImportError:
        return None
    return quad


def lms_coefficient(order: int, t: numpy.ndarray, i: int, j: int) -> float:
    """Weight of the slope from step i - j in the LMS step t[i] -> t[i+1]: the integral over
    [t[i], t[i+1]] of the j-th Lagrange basis polynomial. t: (n + 1,) float32 sigmas.

    ComfyUI integrates with scipy's adaptive quad (epsrel 1e-4); with scipy installed the same
    call is made here. Without it a single 21-point Kronrod pass gives the same bits whenever
    quad needs only its first pass, i.e. for all but nearly coincident sigmas.
    """
    if order - 1 > i:
        raise ValueError(f"LMS order {order} too high for step {i}")
    f = lms_basis(t, i, j, order)
    quad = _scipy_quad()
    if quad is not None:
        return quad(f, float(t[i]), float(t[i + 1]), epsrel=1e-4)[0]
    return qk21(f, float(t[i]), float(t[i + 1]))


# -- noise ----------------------------------------------------------------------------------


def default_noise_sampler(x: torch.Tensor, seed: int):
    """Fresh N(0, 1) like x from one generator on x's device, seeded with the sampler seed.

    A seed object with its own noise_sampler (noise_a1111.ImageNoise: A1111's per-image
    generators) draws the step noise instead."""
    if hasattr(seed, "noise_sampler"):
        return seed.noise_sampler(x)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)


# -- loops -------------------------------------------------------------------------------------


def sampling_steps(sigmas: torch.Tensor):
    """Step indices 0..n-1, checking ComfyUI's interrupt flag before each."""
    for i in range(len(sigmas) - 1):
        check_interrupt()
        yield i


def interrupt_point() -> None:
    """ComfyUI's interrupt check, for loops that are not one step per sigma (dpm_fast / dpm_adaptive)."""
    check_interrupt()


def report_step(callback, i, x, denoised):
    if callback is not None:
        callback(i, x, denoised)


def sample_euler(denoiser, x, sigmas, seed, callback):
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        report_step(callback, i, x, denoised)
        x = euler_step(x, d, sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(denoiser, x, sigmas, seed, callback):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        report_step(callback, i, x, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = euler_step(x, d, sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_heun(denoiser, x, sigmas, seed, callback):
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        report_step(callback, i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = euler_step(x, d, dt)
        else:  # trapezoid: average the slopes at both ends of an Euler step
            x_2 = euler_step(x, d, dt)
            d_2 = to_d(x_2, sigmas[i + 1], denoiser(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x


def _dpm2_update(denoiser, x, d, sigma, sigma_to, s_in):
    """DPM-Solver-2: slope at the log-midpoint, applied over the whole step sigma -> sigma_to."""
    sigma_mid = log_midpoint(sigma, sigma_to)
    x_2 = euler_step(x, d, sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid * s_in))
    return euler_step(x, d_2, sigma_to - sigma)


def sample_dpm_2(denoiser, x, sigmas, seed, callback):
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = euler_step(x, d, sigmas[i + 1] - sigmas[i])
        else:
            x = _dpm2_update(denoiser, x, d, sigmas[i], sigmas[i + 1], s_in)
    return x


def sample_dpm_2_ancestral(denoiser, x, sigmas, seed, callback):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        report_step(callback, i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = euler_step(x, d, sigma_down - sigmas[i])
        else:
            x = _dpm2_update(denoiser, x, d, sigmas[i], sigma_down, s_in)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_lms(denoiser, x, sigmas, seed, callback, order: int = 4):
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.detach().cpu().numpy()  # (n + 1,) float32
    ds = []  # the last `order` slopes, oldest first
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        report_step(callback, i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [lms_coefficient(cur_order, t, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, seed, callback):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        report_step(callback, i, x, denoised)
        if sigma_down == 0:
            x = euler_step(x, to_d(x, sigmas[i], denoised), sigma_down - sigmas[i])
        else:  # DPM-Solver++(2S): data prediction at the lambda-midpoint
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = denoiser(x_2, s.neg().exp() * s_in)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, seed, callback):
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:  # second order: extrapolate x0 linearly in lambda from this and the previous step
            r = (t - half_log_snr(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def ddpm_step(x_vp, sigma, sigma_next, eps, noise):
    """One DDPM posterior step in the variance-preserving view (x_vp = x / sqrt(1 + sigma^2))."""
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_next * sigma_next) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
    if sigma_next > 0:
        mu += ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise(sigma, sigma_next)
    return mu


def sample_ddpm(denoiser, x, sigmas, seed, callback):
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        eps = (x - denoised) / sigmas[i]
        x = ddpm_step(x / torch.sqrt(1.0 + sigmas[i] ** 2.0), sigmas[i], sigmas[i + 1], eps, noise)
        if sigmas[i + 1] != 0:
            x *= torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


def sample_lcm(denoiser, x, sigmas, seed, callback):
    """Latent-consistency sampling: jump to x0, re-noise to the next sigma with fresh noise."""
    noise = default_noise_sampler(x, seed)
    s_in = x.new_ones([x.shape[0]])
    for i in sampling_steps(sigmas):
        denoised = denoiser(x, sigmas[i] * s_in)
        report_step(callback, i, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] + x  # eps/v noise_scaling
    return x


# name -> sampler function; ComfyUI's "ddim" is its euler sampler (the difference is inpainting only).
KDIFF_SAMPLERS = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ddim": sample_euler,
}
