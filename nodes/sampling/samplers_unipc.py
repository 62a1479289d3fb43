"""UniPC (multistep, data prediction, B(h) variants) as ComfyUI's `uni_pc` / `uni_pc_bh2` run it.

ComfyUI does not use k-diffusion here: it runs UniPC in the variance-preserving (VP) view
with sigma itself as the "time" variable:

    alpha(s) = 1 / sqrt(1 + s^2),  std(s) = s / sqrt(1 + s^2),  lambda(s) = log(alpha / std)
    x_vp = x / sqrt(1 + s^2)

The last sigma 0 is replaced by 0.001 (the solver never takes the final step to sigma 0), the
order is min(3, steps - 1), lowering to 1 at the end, and the result is divided by
alpha(0.001). The arithmetic below follows ComfyUI's `comfy/extra_samplers/uni_pc.py` op for
op so that a deterministic denoiser gives the same latents.
"""
from __future__ import annotations

import torch

from ..io.progress import check_interrupt
from .samplers_kdiff import append_dims

# -- the VP view of sigma (pure functions, sigma: (B,) or ()) -----------------------------------


def vp_log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(vp_log_alpha(sigma))


def vp_std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * vp_log_alpha(sigma)))


def vp_lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = vp_log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _data_prediction(denoiser, x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 predicted at the VP point x_vp (B, C, H, W), sigma (B,): via eps, as ComfyUI does."""
    s = append_dims(sigma, x_vp.ndim)
    x = x_vp * ((s**2 + 1.0) ** 0.5)  # back to the k-diffusion view
    eps = (x - denoiser(x, sigma)) / s
    return (x_vp - append_dims(vp_std(sigma), x_vp.ndim) * eps) / append_dims(vp_alpha(sigma), x_vp.ndim)


def _bh_coefficients(rks: torch.Tensor, hh: torch.Tensor, order: int, variant: str):
    """UniPC's linear system: R (order, order) with rows rks^k, b (order,) from the phi functions."""
    h_phi_1 = torch.expm1(hh)  # h * phi_1(h) = e^h - 1
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(b), h_phi_1, b_h


def unipc_update(denoiser, x, model_prev, t_prev, t, order: int, use_corrector: bool, variant: str):
    """One UniPC-B(h) step from t_prev[-1] to t (data prediction).

    x: (B, C, H, W) VP latent; model_prev / t_prev: the last `order` x0 predictions and their
    sigmas (B,), oldest first. Returns (x at t, x0 predicted at t or None without corrector).
    """
    ndim = x.ndim
    t_prev_0, model_prev_0 = t_prev[-1], model_prev[-1]
    lambda_prev_0, lambda_t = vp_lambda(t_prev_0), vp_lambda(t)
    sigma_prev_0, sigma_t = vp_std(t_prev_0), vp_std(t)
    alpha_t = torch.exp(vp_log_alpha(t))
    h = lambda_t - lambda_prev_0  # (B,)

    rks, d1s = [], []  # step-size ratios and scaled differences of earlier x0 predictions
    for i in range(1, order):
        rk = ((vp_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
    rks.append(torch.ones((), dtype=h.dtype, device=h.device))
    hh = -h[0]
    R, b, h_phi_1, b_h = _bh_coefficients(torch.stack(rks).to(x.device), hh, order, variant)

    d1 = torch.stack(d1s, dim=1) if d1s else None  # (B, K, C, H, W)
    x_t_ = append_dims(sigma_t / sigma_prev_0, ndim) * x - append_dims(alpha_t * h_phi_1, ndim) * model_prev_0
    if d1 is not None:  # predictor
        rhos_p = torch.tensor([0.5], device=b.device) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        pred_res = torch.tensordot(d1, rhos_p, dims=([1], [0]))
    else:
        pred_res = 0
    x_t = x_t_ - append_dims(alpha_t * b_h, ndim) * pred_res
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], device=b.device) if order == 1 else torch.linalg.solve(R, b)
    model_t = _data_prediction(denoiser, x_t, t)
    corr_res = torch.tensordot(d1, rhos_c[:-1], dims=([1], [0])) if d1 is not None else 0
    x_t = x_t_ - append_dims(alpha_t * b_h, ndim) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
    return x_t, model_t


def sample_unipc(denoiser, x, sigmas, seed, callback, variant: str = "bh1"):
    """x (B, C, H, W) noise-scaled at sigmas[0]; returns the k-diffusion-view latent at sigma 0."""
    timesteps = sigmas.clone()
    if timesteps[-1] == 0:
        timesteps[-1] = 0.001  # ComfyUI stops at sigma 0.001 (on its own copy here: input untouched)
    steps = len(timesteps) - 1
    order = min(3, len(timesteps) - 2)
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)  # to the VP view
    batch = x.shape[0]
    model_prev, t_prev = [], []
    for step_index in range(steps):
        check_interrupt()
        if step_index == 0:
            vec_t = timesteps[0].expand(batch)
            model_prev, t_prev = [_data_prediction(denoiser, x, vec_t)], [vec_t]
        elif step_index < order:  # warm-up with lower orders
            vec_t = timesteps[step_index].expand(batch)
            x, model_x = unipc_update(denoiser, x, model_prev, t_prev, vec_t, step_index, True, variant)
            model_prev.append(model_x)
            t_prev.append(vec_t)
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)  # the last index also runs step `steps`
            for step in range(step_index, last):
                vec_t = timesteps[step].expand(batch)
                step_order = min(order, steps + 1 - step)  # lower order at the end
                x, model_x = unipc_update(denoiser, x, model_prev, t_prev, vec_t, step_order, step != steps, variant)
                for i in range(order - 1):
                    t_prev[i], model_prev[i] = t_prev[i + 1], model_prev[i + 1]
                t_prev[-1] = vec_t
                if step < steps:
                    model_prev[-1] = model_x if model_x is not None else _data_prediction(denoiser, x, vec_t)
        if callback is not None:
            callback(step_index, x, model_prev[-1])
    return x / vp_alpha(timesteps[-1])
