"""A1111 nodes: A1111 Noise, the settings of stable-diffusion-webui's noise for Sample (its
`a1111_noise` input), so a graph draws the numbers A1111 draws (sampling/noise_a1111.py)."""
from __future__ import annotations

from .common import CATEGORY

A1111_NOISE = "LORA_LAB_A1111_NOISE"


class LoraLabA1111Noise:
    """A1111 Noise: RNG source, variation seed and strength, seed resize, eta noise seed delta."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (A1111_NOISE,)
    RETURN_NAMES = ("a1111_noise",)
    FUNCTION = "make"
    DESCRIPTION = ("Sample with this draws its noise as A1111 does: per image from seed + i, with A1111's "
                   "variation seed, seed resize and ENSD, from its CPU or NV (Philox) generator.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..sampling.sampler_names import RNG_SOURCES

        return {"required": {
            "rng": (list(RNG_SOURCES), {"tooltip": "A1111's 'Random number generator source' (RNG: in the "
                                                   "parameters); GPU cannot be drawn on another machine, NV is "
                                                   "A1111's imitation of NVIDIA's"}),
            "variation_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
            "variation_strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            "resize_seed_from_width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8}),
            "resize_seed_from_height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8}),
            "eta_noise_seed_delta": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                             "tooltip": "ENSD: the ancestral samplers' step noise restarts "
                                                        "from seed + this"}),
            "sgm_noise_multiplier": ("BOOLEAN", {"default": False, "tooltip": "A1111's 'SGM noise multiplier': "
                                                 "start at noise * sqrt(1 + sigma^2) as ComfyUI does; off: "
                                                 "noise * sigma, A1111's default"}),
        }}

    def make(self, rng, variation_seed, variation_strength, resize_seed_from_width, resize_seed_from_height,
             eta_noise_seed_delta, sgm_noise_multiplier=False):
        from ..sampling.noise_a1111 import A1111Noise

        return (A1111Noise(rng, int(variation_seed), float(variation_strength), int(resize_seed_from_width),
                           int(resize_seed_from_height), int(eta_noise_seed_delta), bool(sgm_noise_multiplier)),)


NODE_CLASS_MAPPINGS = {"LoraLabA1111Noise": LoraLabA1111Noise}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabA1111Noise": "A1111 Noise (LoRA Lab)"}
