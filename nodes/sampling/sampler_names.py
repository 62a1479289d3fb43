"""The sampler names KSampler offers, in ComfyUI's order: a leaf module, so that schedules
(which checks a sampler name) and samplers (which maps names to functions) share one list."""
from __future__ import annotations

# ComfyUI's order (its KSAMPLER_NAMES, then ddim / uni_pc / uni_pc_bh2), for the node's combo box.
SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
