"""The model handle: an immutable value passed along LORA_LAB_MODEL edges.

A handle holds the diffusers components of one checkpoint (shared, never mutated by nodes),
the family facts needed to drive them, and an ordered tuple of patches (LoRAs) to apply when
the model is used. Adding a LoRA returns a new handle that shares the base modules.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}

# Latent scaling of the VAE (the LDM configs' `scale_factor`).
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
# Default clip skip per family in A1111 terms (1 = last layer, 2 = penultimate), the
# choice ComfyUI makes for each family when no CLIPSetLastLayer is used.
DEFAULT_CLIP_SKIP = {"sd1": 1, "sd2": 2, "sdxl": 2}


@dataclass(frozen=True)
class ModelHandle:
    """Diffusers components + family + patches. Never mutated after creation.

    text_encoders / tokenizers: one entry for sd1/sd2 (CLIP-L / OpenCLIP-H as CLIPTextModel),
    two for sdxl (CLIP-L CLIPTextModel, OpenCLIP-bigG CLIPTextModelWithProjection).
    """

    family: str
    prediction_type: str
    unet: Any
    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    source: str = ""
    patches: tuple = field(default=())
    # diffusers' SD 2.x folders drop the text encoder's last layer (they only ever need the
    # penultimate one); clip skip counts from the full tower, so it is shifted by this much.
    text_layers_dropped: int = 0
    # Sampling markers ComfyUI honours (SDXL v-prediction checkpoints): `ztsnr` = zero terminal SNR;
    # `edm_vpred.sigma_min/max` = EDM v-prediction (CosXL), kept as (sigma_min, sigma_max).
    zsnr: bool = False
    edm_vpred: tuple | None = None
    # A schedule object (sampling.schedules) that replaces the one the checkpoint implies, set by
    # ComfyUI's ModelSamplingDiscrete / ModelSamplingContinuousEDM nodes; None = the checkpoint's.
    model_sampling: Any = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}"
            )
        want = 2 if self.family == "sdxl" else 1
        if len(self.text_encoders) != want or len(self.tokenizers) != want:
            raise ValueError(
                f"{self.family} needs {want} text encoder(s) and tokenizer(s), got "
                f"{len(self.text_encoders)} and {len(self.tokenizers)}"
            )

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family]

    @property
    def vae_scaling_factor(self) -> float:
        return VAE_SCALING[self.family]

    @property
    def default_clip_skip(self) -> int:
        return DEFAULT_CLIP_SKIP[self.family]

    def with_patches(self, patches: tuple) -> "ModelHandle":
        """A new handle sharing every module, with another patch tuple."""
        return dataclasses.replace(self, patches=tuple(patches))

    def __repr__(self) -> str:  # keep logs short: no module dumps
        return (
            f"ModelHandle({self.family}, {self.prediction_type}, source={self.source!r}, "
            f"patches={len(self.patches)})"
        )


def is_skeleton(handle: ModelHandle) -> bool:
    """The handle has module structure but no weights (built on the meta device)."""
    return handle.unet.device.type == "meta"


def held_below_fp32(handle: ModelHandle) -> bool:
    """The modules hold rounded weights (a GPU's bf16/fp16) or none at all (a skeleton)."""
    import torch

    p = next(handle.unet.parameters())
    return p.device.type == "meta" or p.dtype != torch.float32
