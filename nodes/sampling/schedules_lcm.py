"""LCM sampling (ComfyUI 0.3.64's ModelSamplingDiscrete with sampling="lcm": the
ModelSamplingDiscreteDistilled schedule with the LCM parameterisation of
comfy_extras/nodes_model_advanced.py), for LCM-distilled SD 1.x / SDXL UNets and LCM LoRAs.

The schedule keeps 50 of the 1000 training sigmas (every 20th from the top); the UNet's
timestep for a sigma is the nearest kept index * 20 + 19. The denoised latent is LCM's
boundary-condition blend c_out * x0 + c_skip * x of the eps prediction x0, with sigma_data
0.5 and timestep scaling 10.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import DiscreteSchedule

ORIGINAL_TIMESTEPS = 50


@dataclass(frozen=True, eq=False)
class LCMSchedule(DiscreteSchedule):
    """DiscreteSchedule (eps, optionally zero terminal SNR) distilled to 50 sigmas, LCM's denoise."""

    prediction_type: str = "epsilon"

    def __post_init__(self):
        if self.prediction_type != "epsilon":
            raise ValueError(f"LCM sampling predicts eps; prediction_type {self.prediction_type!r} is not 'epsilon'")
        super().__post_init__()
        if self.num_timesteps % ORIGINAL_TIMESTEPS:
            raise ValueError(f"num_timesteps {self.num_timesteps} is not a multiple of {ORIGINAL_TIMESTEPS}")
        full = self.sigmas  # (T,) float32
        kept = full[self.num_timesteps - 1 - torch.arange(ORIGINAL_TIMESTEPS - 1, -1, -1) * self.skip_steps]
        object.__setattr__(self, "sigmas", kept.float())  # (50,), increasing
        object.__setattr__(self, "log_sigmas", kept.log().float())  # log of the float32 values

    @property
    def skip_steps(self) -> int:
        return self.num_timesteps // ORIGINAL_TIMESTEPS

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]  # (50, N)
        idx = dists.abs().argmin(dim=0).view(sigma.shape)
        return (idx * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        k = self.skip_steps
        t = torch.clamp(((timestep.float().to(self.log_sigmas.device) - (k - 1)) / k).float(),
                        min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """LCM: c_out * (x - eps * sigma) + c_skip * x, c_* from the scaled timestep (B, 1, 1, 1)."""
        shape = sigma.shape[:1] + (1,) * (model_output.ndim - 1)
        timestep = self.timestep(sigma).view(shape)
        sig = sigma.view(shape)
        x0 = x - model_output * sig
        sigma_data = 0.5
        scaled = timestep * 10.0
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        return c_out * x0 + c_skip * x


__all__ = ["ORIGINAL_TIMESTEPS", "LCMSchedule"]
