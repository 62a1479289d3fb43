"""The discrete SD noise schedule and the schedulers, under ComfyUI's names and with its numerics.

`DiscreteSchedule` is the schedule an SD 1.x/2.x/SDXL UNet was trained on, as ComfyUI's
`ModelSamplingDiscrete` keeps it: 1000 scaled-linear betas (0.00085 -> 0.012) computed in
float64, sigmas and log-sigmas stored as float32. It also converts between the sampler's
k-diffusion view (x = x0 + sigma * eps) and the model's raw output (eps or v).

`get_sigmas` turns a scheduler name + step count + denoise into the float32 sigma list a
sampler walks (ending in 0), exactly as ComfyUI's KSampler builds it, so that the same
settings give the same sigmas bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..io.errors import LoraLabError
from .sampler_names import SAMPLER_NAMES, SCHEDULER_NAMES

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "PREDICTION_TYPES",
    "SCHEDULER_NAMES",
    "ContinuousEDMSchedule",
    "DiscreteSchedule",
    "OptionalDependencyError",
    "get_sigmas",
    "scheduler_sigmas",
]

# What the UNet predicts (ComfyUI's EPS, V_PREDICTION, X0, IMG_TO_IMG, EDM): a checkpoint's is one
# of the first two; ModelSamplingDiscrete / ModelSamplingContinuousEDM can set the others.
PREDICTION_TYPES = ("epsilon", "v_prediction", "x0", "img_to_img", "edm")

# ComfyUI's KSampler asks these samplers for one step more and drops the second-to-last sigma
# (they take a half step towards the next sigma, which is wasted on the final sigma->0 step).
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


class OptionalDependencyError(LoraLabError, ImportError):
    """A feature needs a package that is an optional dependency of lora-lab."""


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Lin et al.'s zero-terminal-SNR rescale of sqrt(alpha_bar), in sigma terms (ComfyUI's
    rescale_zero_terminal_snr_sigmas): shift so the last step has alpha_bar 0, scale so the first
    keeps its value; the last alpha_bar is then set to 4.897e-8 (a finite sigma_max, ~4519)."""
    ab_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
    ab_sqrt = (ab_sqrt - last) * (first / (first - last))
    ab = ab_sqrt**2
    ab[-1] = 4.8973451890853435e-08
    return ((1 - ab) / ab) ** 0.5


def schedule_for(handle) -> DiscreteSchedule:
    """The model's schedule: the one a ModelSampling* node set (handle.model_sampling), else its
    prediction type and markers (ztsnr; edm_vpred -> continuous EDM)."""
    if getattr(handle, "model_sampling", None) is not None:
        return handle.model_sampling
    if getattr(handle, "edm_vpred", None):
        lo, hi = handle.edm_vpred
        return ContinuousEDMSchedule(handle.prediction_type, edm_sigma_min=float(lo), edm_sigma_max=float(hi))
    return DiscreteSchedule(handle.prediction_type, zsnr=bool(getattr(handle, "zsnr", False)))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _view_sigma(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over a latent; a one-element sigma becomes a 0-d scalar."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """SD's discrete noise schedule plus the eps / v-prediction parameterisation.

    sigmas: (T,) float32, increasing with the timestep index; log_sigmas: (T,) float32.
    """

    prediction_type: str = "epsilon"
    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000
    sigma_data: float = 1.0
    zsnr: bool = False  # zero terminal SNR (a checkpoint's `ztsnr` marker), as ComfyUI rescales it
    sigmas: torch.Tensor = field(init=False, repr=False)
    log_sigmas: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        if not (isinstance(self.num_timesteps, int) and self.num_timesteps >= 2):
            raise ValueError(f"num_timesteps {self.num_timesteps!r} must be an int >= 2")
        if not (0.0 < self.linear_start < self.linear_end < 1.0):
            raise ValueError(
                f"linear_start {self.linear_start!r} / linear_end {self.linear_end!r} must satisfy 0 < start < end < 1"
            )
        # "scaled linear": linear in sqrt(beta), squared; float64 like the LDM code, then float32.
        betas = torch.linspace(self.linear_start**0.5, self.linear_end**0.5, self.num_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # (T,) float64
        if self.zsnr:
            sigmas = rescale_zero_terminal_snr(sigmas)
        object.__setattr__(self, "sigmas", sigmas.float())
        object.__setattr__(self, "log_sigmas", sigmas.log().float())  # log taken in float64

    # -- the schedule ---------------------------------------------------------------------
    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest training timestep index in log-sigma (int64, same shape as sigma)."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]  # (T, N)
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep: linear interpolation of log-sigma, clamped to [0, T-1]."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def max_denoise(self, sigmas: torch.Tensor) -> bool:
        """ComfyUI's rule: the run starts from pure noise when its first sigma is (at least) sigma_max."""
        max_sigma, sigma = float(self.sigma_max), float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    def percent_to_sigma(self, percent: float) -> float:
        """ModelSamplingDiscrete.percent_to_sigma: 0 -> above any sigma, 1 -> 0."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))

    # -- parameterisation -----------------------------------------------------------------
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """k-diffusion x (B, C, H, W) -> the UNet's input, scaled to unit variance."""
        if self.prediction_type == "img_to_img":
            return x
        sigma = _view_sigma(sigma, x.ndim)
        return x / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Raw UNet output (eps, v, x0 or EDM's F) at x -> the predicted clean latent x0."""
        if self.prediction_type in ("x0", "img_to_img"):
            return model_output
        sigma = _view_sigma(sigma, model_output.ndim)
        if self.prediction_type == "epsilon":
            return x - model_output * sigma
        sd2 = self.sigma_data**2
        if self.prediction_type == "edm":
            return x * sd2 / (sigma**2 + sd2) + model_output * sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        return x * sd2 / (sigma**2 + sd2) - model_output * sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False) -> torch.Tensor:
        """Starting point x = latent + noise * sigma; from pure noise ComfyUI scales by sqrt(1 + sigma^2)."""
        sigma = _view_sigma(sigma, noise.ndim)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma**2.0)
        else:
            noise = noise * sigma
        return noise + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent


@dataclass(frozen=True, eq=False)
class ContinuousEDMSchedule(DiscreteSchedule):
    """ComfyUI's ModelSamplingContinuousEDM (with V_PREDICTION: ModelType.V_PREDICTION_EDM, the
    `edm_vpred.sigma_min/max` checkpoints such as CosXL): a continuous sigma range instead of
    SD's 1000 training steps. `sigmas` is 1000 log-spaced values over [sigma_min, sigma_max]
    (what the table-based schedulers walk), the UNet's timestep is 0.25 * log(sigma), and the
    parameterisation (v-prediction, sigma_data 1) is DiscreteSchedule's.
    """

    prediction_type: str = "v_prediction"
    edm_sigma_min: float = 0.002
    edm_sigma_max: float = 120.0  # ComfyUI's defaults

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        lo, hi = self.edm_sigma_min, self.edm_sigma_max
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
            raise ValueError(f"EDM sigma range {lo!r} .. {hi!r} must satisfy 0 < sigma_min < sigma_max (finite)")
        sigmas = torch.linspace(math.log(lo), math.log(hi), 1000).exp()  # float32, as ComfyUI builds it
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", sigmas.log())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The UNet's (continuous) timestep: 0.25 * log(sigma)."""
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Log-linear from sigma_max (0) to sigma_min (1); 0 -> above any sigma, 1 -> 0."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)


# -- schedulers: (schedule, steps) -> float32 sigmas, decreasing, usually ending in 0 ------------
def _simple(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    stride = len(s.sigmas) / steps  # evenly spaced training sigmas, from the top
    sigs = [float(s.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor(sigs + [0.0], dtype=torch.float32)


def _ddim_uniform(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    stride = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):  # every stride-th training sigma from index 1 up
        sigs.append(float(s.sigmas[x]))
        x += stride
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def _normal(s: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)  # 0-d: 999, 0 (EDM: 0.25 log sigma)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)  # float32 timesteps, uniform in t
    sigs = [float(s.sigma(t)) for t in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def _exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def _kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    if n < 2:  # ComfyUI divides by n - 1 and returns [nan, 0], a black image; refuse instead
        raise ValueError(f"scheduler 'kl_optimal' needs at least 2 steps, got {n}")
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)  # (n,) 0..1, linear in atan(sigma)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


def _beta(s: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    try:
        import numpy
        import scipy.stats
    except ImportError as e:
        raise OptionalDependencyError(
            "scheduler 'beta' needs the optional package scipy: pip install scipy"
        ) from e
    last = len(s.sigmas) - 1
    ts = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    ts = numpy.rint(scipy.stats.beta.ppf(ts, alpha, beta) * last)  # timesteps from the beta quantiles
    sigs, prev = [], -1
    for t in ts:
        if t != prev:  # repeated timesteps collapse, so there can be fewer than `steps` sigmas
            sigs.append(float(s.sigmas[int(t)]))
        prev = t
    return torch.tensor(sigs + [0.0], dtype=torch.float32)


def _linear_quadratic(s: DiscreteSchedule, steps: int, threshold_noise: float = 0.025, linear_steps=None) -> torch.Tensor:
    # Linear in "noise fraction" up to threshold_noise for the first half, quadratic after.
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quad_coef = step_diff / (linear_steps * quadratic_steps**2)
        lin_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quad_coef * (linear_steps**2)
        quadratic = [quad_coef * (i**2) + lin_coef * i + const for i in range(linear_steps, steps)]
        fractions = [1.0 - f for f in linear + quadratic + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * s.sigma_max.cpu()


# name -> (function, takes the schedule (True) or (n, sigma_min, sigma_max) (False)); ComfyUI's order.
_SCHEDULERS: dict[str, tuple[Callable[..., torch.Tensor], bool]] = {
    "simple": (_simple, True),
    "sgm_uniform": (lambda s, steps: _normal(s, steps, sgm=True), True),
    "karras": (_karras, False),
    "exponential": (_exponential, False),
    "ddim_uniform": (_ddim_uniform, True),
    "beta": (_beta, True),
    "normal": (_normal, True),
    "linear_quadratic": (_linear_quadratic, True),
    "kl_optimal": (_kl_optimal, False),
}
if tuple(_SCHEDULERS) != SCHEDULER_NAMES:  # the torch-free list in sampler_names must name these, in order
    raise AssertionError(f"sampler_names.SCHEDULER_NAMES {SCHEDULER_NAMES} != {tuple(_SCHEDULERS)}")


def scheduler_sigmas(schedule: DiscreteSchedule, scheduler_name: str, steps: int) -> torch.Tensor:
    """The raw scheduler output for `steps` steps (ComfyUI's `calculate_sigmas`)."""
    if scheduler_name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler_name!r}; choose one of {SCHEDULER_NAMES}")
    fn, takes_schedule = _SCHEDULERS[scheduler_name]
    if takes_schedule:
        return fn(schedule, steps)
    return fn(n=steps, sigma_min=float(schedule.sigma_min), sigma_max=float(schedule.sigma_max))


def _sampler_sigmas(schedule: DiscreteSchedule, scheduler_name: str, steps: int, sampler_name: str | None) -> torch.Tensor:
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = scheduler_sigmas(schedule, scheduler_name, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return scheduler_sigmas(schedule, scheduler_name, steps)


def get_sigmas(
    schedule: DiscreteSchedule,
    scheduler_name: str,
    steps: int,
    denoise: float = 1.0,
    sampler_name: str | None = None,
) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler walks: (n + 1,) float32, decreasing, ending in 0.

    denoise < 1 schedules int(steps / denoise) steps and keeps the last steps + 1 sigmas
    (img2img starts part-way down). denoise == 0 gives an empty tensor: nothing to sample,
    the latent passes through unchanged. Pass `sampler_name` to apply ComfyUI's extra step
    for dpm_2 / dpm_2_ancestral / uni_pc / uni_pc_bh2.
    """
    if scheduler_name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler_name!r}; choose one of {SCHEDULER_NAMES}")
    if sampler_name is not None:
        if sampler_name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {sampler_name!r}; choose one of {SAMPLER_NAMES}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps {steps!r} must be an int >= 1")
    denoise = float(denoise)
    if not (0.0 <= denoise <= 1.0):  # also refuses nan
        raise ValueError(f"denoise {denoise!r} must be between 0 and 1")
    if denoise > 0.9999:
        return _sampler_sigmas(schedule, scheduler_name, steps, sampler_name)
    if denoise <= 0.0:
        return torch.zeros([0], dtype=torch.float32)
    sigmas = _sampler_sigmas(schedule, scheduler_name, int(steps / denoise), sampler_name)
    return sigmas[-(steps + 1):]
