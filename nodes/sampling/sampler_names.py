"""The sampler names KSampler offers, in ComfyUI's order: a leaf module, so that schedules
(which checks a sampler name) and samplers (which maps names to functions) share one list."""
from __future__ import annotations

# ComfyUI's order (its KSAMPLER_NAMES, then ddim / uni_pc / uni_pc_bh2), for the node's combo box.
SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral",
    "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu",
    "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip

# Samplers that read the uncond prediction of every model call (guidance.GuidedDenoiser.with_uncond).
CFG_PP_SAMPLER_NAMES: tuple[str, ...] = tuple(n for n in SAMPLER_NAMES if n.endswith("_cfg_pp"))

# ComfyUI's SCHEDULER_NAMES order; schedules.py maps each to its function (and checks the two agree).
# Here, torch-free, so listing node inputs and validating a graph do not import torch.
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)  # fmt: skip

# A1111 Noise's RNG sources (noise_a1111.py draws them), torch-free for the node's inputs.
RNG_SOURCES: tuple[str, ...] = ("CPU", "NV")
