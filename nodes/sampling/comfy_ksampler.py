"""ComfyUI's KSampler / KSamplerAdvanced on its own edge values, run by our samplers.

    LATENT        {"samples": [B, 4, h, w] raw VAE latents (unscaled), optional "noise_mask"
                   [B|1, 1, H, W] in 0..1 (1 = repaint), optional "batch_index": [int, ...]}
    CONDITIONING  [[cond [1, T, D], {"pooled_output": [1, P] | None, "area", "strength",
                   "start_percent", "end_percent", "width", "height", "crop_w", "crop_h",
                   "target_width", "target_height", "concat_latent_image", ...}], ...]

What follows ComfyUI 0.3.64 (comfy/samplers.py, comfy/sample.py, nodes.common_ksampler):
noise from the seed (per batch_index when the latent has one), sigmas with denoise and
start/end steps, the latent multiplied by the VAE factor on the way in (an all-zero latent
left as is) and divided on the way out, and per step, for each side of CFG, every active
entry of its list run on its area and averaged with weights (strength, feathered area
edges; calc_cond_batch), an area on one side given a twin on the other, timestep ranges
as percent_to_sigma bounds, uncond skipped at cfg 1, and a noise mask blending the
re-noised input latent outside the mask before and after each model call
(KSamplerX0Inpaint). A 9-channel inpainting UNet gets [mask, masked latent] concatenated
to its input (BaseModel.concat_cond).

Not supported (a clear error): conditioning masks (ConditioningSetMask), ControlNet, GLIGEN,
hooks. Each entry is its own UNet call where ComfyUI batches cond and uncond; the arithmetic
is the same, CPU GEMMs may differ in the last bits between batch sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..io.errors import NodeInputError
from .guidance import GuidedDenoiser
from .samplers import prepare_noise, sample
from .schedules import DiscreteSchedule, get_sigmas, schedule_for

UNSUPPORTED_COND_KEYS = ("mask", "control", "gligen", "hooks")
FUZZ = 8  # feathered rows at an area's inner edges (ComfyUI's get_area_and_mult)


@dataclass(frozen=True)
class KSamplerSettings:
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0
    add_noise: bool = True
    start_step: int | None = None
    last_step: int | None = None
    force_full_denoise: bool = False
    node: str = "KSampler"
    a1111_noise: object = None  # noise_a1111.A1111Noise: A1111's noise (a new ImageRNG per pass)

    def __post_init__(self):
        from .sampler_names import SAMPLER_NAMES, SCHEDULER_NAMES

        if self.sampler_name not in SAMPLER_NAMES:
            raise NodeInputError(self.node, "sampler_name", self.sampler_name, f"unknown sampler; one of {SAMPLER_NAMES}")
        if self.scheduler not in SCHEDULER_NAMES:
            raise NodeInputError(self.node, "scheduler", self.scheduler, f"unknown scheduler; one of {SCHEDULER_NAMES}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise NodeInputError(self.node, "steps", self.steps, "must be an int >= 1")
        if not (0.0 <= float(self.denoise) <= 1.0):
            raise NodeInputError(self.node, "denoise", self.denoise, "must be between 0 and 1")
        for name in ("start_step", "last_step"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise NodeInputError(self.node, name, v, "must be an int >= 0")


def prepare_noise_indexed(shape, seed: int, batch_index=None) -> torch.Tensor:
    """comfy.sample.prepare_noise: with batch_index, one draw per index up to the largest, so latent i
    of a batch gets the noise it would get as entry batch_index[i] of the full batch."""
    if batch_index is None:
        return prepare_noise(shape, seed)
    inds = [int(i) for i in batch_index]
    if not inds or min(inds) < 0:
        raise ValueError(f"batch_index must be non-negative ints, got {batch_index!r}")
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    one = (1,) + tuple(shape[1:])
    draws = {}
    for i in range(max(inds) + 1):
        n = torch.randn(one, dtype=torch.float32, generator=g, device="cpu")
        if i in inds:
            draws[i] = n
    return torch.cat([draws[i] for i in inds], dim=0)


def ksampler_sigmas(schedule: DiscreteSchedule, s: KSamplerSettings) -> torch.Tensor | None:
    """The sigmas KSampler.sample walks; None when start_step is past the end (latent returned)."""
    sigmas = get_sigmas(schedule, s.scheduler, s.steps, s.denoise, sampler_name=s.sampler_name)
    if s.last_step is not None and s.last_step < len(sigmas) - 1:
        sigmas = sigmas[: s.last_step + 1].clone()
        if s.force_full_denoise:
            sigmas[-1] = 0
    if s.start_step is not None:
        if s.start_step < len(sigmas) - 1:
            sigmas = sigmas[s.start_step:]
        else:
            return None
    return sigmas


def reshape_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    """comfy.utils.reshape_mask: [.., H, W] -> [B, C, h, w], bilinear, channels and batch repeated."""
    m = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    m = torch.nn.functional.interpolate(m, size=tuple(shape[2:]), mode="bilinear")
    if m.shape[1] < shape[1]:
        m = m.repeat((1, shape[1], 1, 1))[:, : shape[1]]
    return _to_batch(m, shape[0])


def _to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """comfy.utils.repeat_to_batch_size."""
    if t.shape[0] > batch:
        return t[:batch]
    if t.shape[0] < batch:
        return t.repeat((math.ceil(batch / t.shape[0]),) + (1,) * (t.ndim - 1))[:batch]
    return t


# --------------------------------------------------------------------------- conditioning
@dataclass(frozen=True, eq=False)
class _Entry:
    """One conditioning entry, ready for the UNet. area: (h, w, y, x) in latent cells or None."""

    context: torch.Tensor  # [1, T, D] in the UNet's dtype
    adm: dict | None  # SDXL added_cond_kwargs
    area: tuple | None
    strength: float
    sigma_start: float | None  # the entry is off while sigma > sigma_start
    sigma_end: float | None  # ... and while sigma < sigma_end
    concat_latent: torch.Tensor | None  # inpainting UNets: a latent of the masked image (scaled)


def percent_to_sigma(schedule: DiscreteSchedule, percent: float) -> float:
    """ModelSamplingDiscrete.percent_to_sigma: 0 -> above any sigma, 1 -> 0."""
    return schedule.percent_to_sigma(percent)


def _resolve_area(opts: dict, hw: tuple) -> tuple | None:
    area = opts.get("area")
    if area is None:
        return None
    if area[0] == "percentage":  # ConditioningSetAreaPercentage
        a = area[1:]
        return (max(1, round(a[0] * hw[0])), max(1, round(a[1] * hw[1])), round(a[2] * hw[0]), round(a[3] * hw[1]))
    return tuple(int(v) for v in area[:4])


def _entries(node: str, name: str, conditioning, handle, schedule, hw, device, dtype) -> list[dict]:
    if not isinstance(conditioning, list) or not conditioning:
        raise NodeInputError(node, name, type(conditioning).__name__, "expected a CONDITIONING list [[tensor, dict], ...]")
    out = []
    for item in conditioning:
        try:
            cond, opts = item
        except (TypeError, ValueError):
            raise NodeInputError(node, name, type(item).__name__, "each CONDITIONING entry is [tensor, dict]") from None
        bad = [k for k in UNSUPPORTED_COND_KEYS if opts.get(k) is not None]
        if bad:
            raise NodeInputError(node, name, bad, "conditioning masks, ControlNet, GLIGEN and hooks need ComfyUI")
        adm = None
        if handle.family == "sdxl":
            pooled = opts.get("pooled_output")
            if pooled is None:
                raise NodeInputError(node, name, "pooled_output", "SDXL needs a pooled output (encode with an SDXL CLIP)")
            w = opts.get("width", hw[1] * 8)
            h = opts.get("height", hw[0] * 8)
            ids = [h, w, opts.get("crop_h", 0), opts.get("crop_w", 0), opts.get("target_height", h),
                   opts.get("target_width", w)]
            adm = {"text_embeds": pooled.to(device, dtype),
                   "time_ids": torch.tensor([ids], dtype=torch.float32, device=device)}
        start = percent_to_sigma(schedule, opts["start_percent"]) if "start_percent" in opts else None
        end = percent_to_sigma(schedule, opts["end_percent"]) if "end_percent" in opts else None
        concat = opts.get("concat_latent_image")
        out.append({"model": (cond.to(device, dtype), adm), "area": _resolve_area(opts, hw),
                    "strength": float(opts.get("strength", 1.0)), "sigma_start": start, "sigma_end": end,
                    "concat": concat})
    return out


def _area_inside(a: tuple, b: tuple) -> bool:
    """a (h, w, y, x) lies within b."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def _add_twins(conds: list[dict], other: list[dict]) -> None:
    """create_cond_with_same_area_if_none: an area entry of `other` gets a twin in `conds` with the
    model inputs of the smallest entry of `conds` enclosing it (an area-less one counts as enclosing)."""
    for c in list(other):
        if c["area"] is None:
            continue
        smallest = None
        for x in conds:
            if x["area"] is not None:
                if _area_inside(c["area"], x["area"]) and (
                        smallest is None or smallest["area"] is None
                        or math.prod(smallest["area"][:2]) > math.prod(x["area"][:2])):
                    smallest = x
            elif smallest is None:
                smallest = x
        if smallest is None or smallest["area"] == c["area"]:
            continue
        conds.append({**c, "model": smallest["model"]})


def _finish(d: dict, scale: float) -> _Entry:
    concat = d["concat"]
    return _Entry(d["model"][0], d["model"][1], d["area"], d["strength"], d["sigma_start"], d["sigma_end"],
                  None if concat is None else concat.float() * scale)


# --------------------------------------------------------------------------- the denoiser
def _mult(x_region: torch.Tensor, area, strength: float, full_hw) -> torch.Tensor:
    mult = torch.ones_like(x_region) * strength
    if area is None:
        return mult
    for i in range(2):  # feather the edges that are inside the latent
        rr = min(FUZZ, mult.shape[2 + i] // 4)
        if area[2 + i] != 0:
            for t in range(rr):
                mult.narrow(i + 2, t, 1).mul_((1.0 / rr) * (t + 1))
        if area[i] + area[2 + i] < full_hw[i]:
            for t in range(rr):
                mult.narrow(i + 2, area[i] - 1 - t, 1).mul_((1.0 / rr) * (t + 1))
    return mult


def _narrow(t: torch.Tensor, area) -> torch.Tensor:
    return t.narrow(2, area[2], area[0]).narrow(3, area[1 + 2], area[1])


def _side(entries, x, sigma, predict) -> torch.Tensor:
    """calc_cond_batch for one side: weighted average of the active entries' x0 predictions."""
    out = torch.zeros_like(x)
    counts = torch.ones_like(x) * 1e-37
    s = float(sigma.reshape(-1)[0])
    hw = tuple(x.shape[2:])
    for e in entries:
        if e.sigma_start is not None and s > e.sigma_start:
            continue
        if e.sigma_end is not None and s < e.sigma_end:
            continue
        area = None
        if e.area is not None:
            h = min(hw[0] - e.area[2], e.area[0])
            w = min(hw[1] - e.area[3], e.area[1])
            area = (h, w, e.area[2], e.area[3])
        x_in = x if area is None else _narrow(x, area)
        mult = _mult(x_in, area, e.strength, hw)
        o = predict(x_in, sigma, e, area)
        if area is None:
            out += o * mult
            counts += mult
        else:
            _narrow(out, area).add_(o * mult)
            _narrow(counts, area).add_(mult)
    return out / counts


def _predictor(handle, schedule, concat):
    """predict(x, sigma, entry, area) -> x0, as BaseModel.apply_model; concat: [B, 5, h, w] or None."""
    unet = handle.unet
    dtype = next(unet.parameters()).dtype

    def predict(x, sigma, e: _Entry, area):
        b = x.shape[0]
        x_in = schedule.calculate_input(sigma, x)
        if concat is not None:
            c = concat if e.concat_latent is None else _entry_concat(concat, e.concat_latent, x)
            x_in = torch.cat([x_in, c if area is None else _narrow(c, area)], dim=1)
        ctx = e.context.expand(b, -1, -1)
        added = None if e.adm is None else {k: v.expand(b, -1) for k, v in e.adm.items()}
        t = schedule.timestep(sigma).float().reshape(-1).expand(b)
        out = unet(x_in.to(dtype), t.to(x.device), encoder_hidden_states=ctx, added_cond_kwargs=added,
                   return_dict=False)[0]
        return schedule.calculate_denoised(sigma, out.float(), x)

    return predict


def _entry_concat(concat, latent, x):
    """InpaintModelConditioning's concat_latent_image replaces the masked latent half of concat."""
    lat = latent
    if lat.shape[-2:] != x.shape[-2:]:
        lat = torch.nn.functional.interpolate(lat, size=tuple(x.shape[-2:]), mode="bilinear")
    return torch.cat([concat[:, :1], _to_batch(lat.to(x.device), x.shape[0])], dim=1)


# Latent-space values of a 0.5-grey image for SD's VAE (BaseModel.blank_inpaint_image_like).
BLANK_INPAINT = (0.8223, -0.6876, 0.6364, 0.1380)


def _inpaint_concat(handle, latent_in, denoise_mask, shape) -> torch.Tensor | None:
    if handle.unet.config.in_channels == shape[1]:
        return None
    if handle.unet.config.in_channels != shape[1] + 5:
        raise NodeInputError("KSampler", "model", handle.source,
                             f"a UNet with {handle.unet.config.in_channels} input channels is not supported")
    if denoise_mask is not None:
        mask = _to_batch(denoise_mask[:, :1].round(), shape[0])
        image = _to_batch(latent_in, shape[0])
    else:
        mask = torch.ones(shape[0], 1, *shape[2:])
        image = torch.tensor(BLANK_INPAINT).view(1, 4, 1, 1).expand(shape[0], 4, *shape[2:]).clone()
    return torch.cat([mask, image], dim=1)  # [B, 5, h, w]


@torch.no_grad()
def ksampler(handle, s: KSamplerSettings, positive, negative, latent: dict, callback=None) -> dict:
    """common_ksampler: a new LATENT dict with the sampled "samples" (other keys kept)."""
    from ..lora.patcher import activate

    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise NodeInputError(s.node, "latent_image", type(latent).__name__, 'expected a LATENT {"samples": tensor}')
    samples = latent["samples"].float()
    if samples.ndim != 4 or samples.shape[1] != 4:
        raise NodeInputError(s.node, "latent_image", tuple(samples.shape), "expected SD latents [B, 4, h, w]")
    shape = tuple(samples.shape)
    step_seed = s.seed
    if s.add_noise and s.a1111_noise is not None:
        from .noise_a1111 import initial_noise

        noise, step_seed = initial_noise(shape, s.seed, s.a1111_noise)
    elif s.add_noise:
        noise = prepare_noise_indexed(shape, s.seed, latent.get("batch_index"))
    else:
        noise = torch.zeros(shape)
    schedule = schedule_for(handle)
    sigmas = ksampler_sigmas(schedule, s)
    if sigmas is None or sigmas.shape[-1] == 0:
        return {**latent, "samples": latent["samples"]}

    activate(handle)
    device = handle.unet.device
    dtype = next(handle.unet.parameters()).dtype
    scale = handle.vae_scaling_factor
    latent_in = samples * scale if torch.count_nonzero(samples) > 0 else samples
    mask = latent.get("noise_mask")
    denoise_mask = None if mask is None else reshape_mask(mask, shape).to(device)
    hw = shape[2:]
    pos = _entries(s.node, "positive", positive, handle, schedule, hw, device, dtype)
    neg = _entries(s.node, "negative", negative, handle, schedule, hw, device, dtype)
    _add_twins(neg, pos)
    _add_twins(pos, neg)
    pos = [_finish(d, scale) for d in pos]
    neg = [_finish(d, scale) for d in neg]
    concat = _inpaint_concat(handle, latent_in, denoise_mask, shape)
    predict = _predictor(handle, schedule, None if concat is None else concat.to(device))
    skip_uncond = math.isclose(s.cfg, 1.0)
    cfg = float(s.cfg)
    noise, latent_in, sigmas = noise.to(device), latent_in.to(device), sigmas.to(device)

    def guided_pair(x, sigma, with_uncond):
        if denoise_mask is not None:  # KSamplerX0Inpaint
            keep = 1.0 - denoise_mask
            x = x * denoise_mask + schedule.noise_scaling(sigma, noise, latent_in) * keep
        cond = _side(pos, x, sigma, predict)
        uncond = torch.zeros_like(x) if skip_uncond and not with_uncond else _side(neg, x, sigma, predict)
        out = uncond + (cond - uncond) * cfg
        if denoise_mask is not None:  # the uncond a CFG++ sampler reads is not blended (ComfyUI's post-cfg hook)
            out = out * denoise_mask + latent_in * keep
        return out, uncond

    denoiser = GuidedDenoiser(lambda x, sigma: guided_pair(x, sigma, False)[0], lambda x, sigma: guided_pair(x, sigma, True))

    # A1111 noise: x = noise * sigma unless its "SGM noise multiplier" (noise_a1111.ImageNoise.max_denoise)
    max_denoise = schedule.max_denoise(sigmas) and getattr(step_seed, "max_denoise", True)
    x = schedule.noise_scaling(sigmas[0], noise, latent_in, max_denoise)
    step_cb = None if callback is None else (lambda i, total, xi, d: callback(i, total, xi, d))
    out = sample(s.sampler_name, denoiser, x, sigmas, step_seed, step_cb, schedule=schedule)
    out = schedule.inverse_noise_scaling(sigmas[-1], out).float().cpu()
    return {**latent, "samples": out / scale}
