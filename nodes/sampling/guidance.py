"""A CFG denoiser that can also give its unconditional prediction (for the CFG++ samplers).

ComfyUI's CFG++ samplers (`*_cfg_pp`) read the uncond x0 of each model call through a
post-CFG hook and switch ComfyUI's cfg-1 shortcut off (uncond is computed even at cfg 1).
Here the denoisers that do guidance (samplers.cfg_denoiser, comfy_ksampler's KSampler) are
`GuidedDenoiser`s: called as usual they may take the shortcut; `with_uncond` runs both sides
and returns (guided x0, uncond x0). A plain function denoiser (no guidance: one prediction)
is its own uncond, as a guided one at cfg 1 with cond == uncond would be.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Pair = tuple[torch.Tensor, torch.Tensor]


class GuidedDenoiser:
    """guided(x, sigma) -> x0 (the cfg-1 shortcut allowed); split(x, sigma) -> (x0, uncond x0),
    both sides computed whatever the cfg (ComfyUI's disable_cfg1_optimization)."""

    __slots__ = ("_guided", "_split")

    def __init__(self, guided: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], split: Callable[[torch.Tensor, torch.Tensor], Pair]):
        if not (callable(guided) and callable(split)):
            raise TypeError("GuidedDenoiser needs two callables (guided, split)")
        self._guided, self._split = guided, split

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._guided(x, sigma)

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> Pair:
        return self._split(x, sigma)


def denoise_with_uncond(denoiser, x: torch.Tensor, sigma: torch.Tensor) -> Pair:
    """(x0, uncond x0) for one model call; a plain denoiser gives its prediction twice."""
    split = getattr(denoiser, "with_uncond", None)
    if split is None:
        denoised = denoiser(x, sigma)
        return denoised, denoised
    return split(x, sigma)

