"""Parity with a real ComfyUI: sigmas and whole KSampler runs, computed live on both sides.

Runs only when COMFYUI_DIR points at a ComfyUI checkout whose modules import in this
interpreter, e.g.

    COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python -m pytest tests/test_comfy_parity.py

ComfyUI's side goes through its public path (comfy.sample.sample -> KSampler -> CFGGuider ->
BaseModel.apply_model) with a toy diffusion model standing in for the UNet; ours goes
through lora_lab's get_sigmas / prepare_noise / ksample with the same toy. ComfyUI is forced
onto the CPU (its own --cpu switch) when this test is the first to import it.
"""
from __future__ import annotations

import gc
import logging

import pytest
import torch
from comfy_env import comfy_modules_or_skip

from lora_lab.nodes.sampling.samplers import SAMPLER_NAMES, ksample, prepare_noise
from lora_lab.nodes.sampling.schedules import (
    SCHEDULER_NAMES,
    ContinuousEDMSchedule,
    DiscreteSchedule,
    get_sigmas,
    scheduler_sigmas,
)

log = logging.getLogger(__name__)

ATOL = 1e-6  # the brief's bound; in practice the runs agree bit for bit (the max diff is logged)


def _import_comfy():
    names = ("samplers", "sample", "model_base", "model_patcher", "supported_models_base", "model_sampling")
    mods = comfy_modules_or_skip(*(f"comfy.{n}" for n in names), "torchsde", needs="comfy/samplers.py")
    return type("Comfy", (), dict(zip(names, mods)))


# torchsde warns when a query point is a float32 rounding outside the tree's interval; ComfyUI too.
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")


@pytest.fixture(scope="module")
def comfy():
    yield _import_comfy()
    _PATCHERS.clear()  # drop ComfyUI's model patchers while its modules are still alive
    gc.collect()


class ToyUNet(torch.nn.Module):
    """A fixed, elementwise linear function of x, the timestep and the context (no batch coupling,
    so ComfyUI's batching of cond and uncond into one call cannot change a single bit)."""

    def __init__(self, **_unet_config):
        super().__init__()
        self.register_buffer("w", torch.tensor([0.55, 0.6, 0.65, 0.7]).view(1, 4, 1, 1))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # something for ComfyUI's model patcher to hold

    @property
    def dtype(self):
        return torch.float32

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        t = (timesteps / 1000.0).view(-1, 1, 1, 1)
        c = context[:, 0, 0].view(-1, 1, 1, 1)
        return self.w * x + 0.2 * x.roll(1, dims=1) + 0.3 * t - 0.1 * c


_TOY = ToyUNet()


def _our_apply_model(x_in, timestep, cond):
    return _TOY(x_in, timestep, context=cond)


EDM_RANGE = (0.002, 120.0)  # CosXL's edm_vpred.sigma_min / sigma_max


def _comfy_model(comfy, prediction_type):
    mt = comfy.model_base.ModelType
    model_type = {"epsilon": mt.EPS, "v_prediction": mt.V_PREDICTION, "edm_vpred": mt.V_PREDICTION_EDM}[prediction_type]
    config = comfy.supported_models_base.BASE({})  # latent format with scale factor 1: same latent space
    if prediction_type == "edm_vpred":  # as supported_models.SDXL.model_type sets it from the keys
        config.sampling_settings = {"sigma_min": EDM_RANGE[0], "sigma_max": EDM_RANGE[1]}
    model = comfy.model_base.BaseModel(config, model_type=model_type, device=torch.device("cpu"), unet_model=ToyUNet)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


_PATCHERS = {}


def _patcher(comfy, prediction_type):
    if prediction_type not in _PATCHERS:
        _PATCHERS[prediction_type] = _comfy_model(comfy, prediction_type)
    return _PATCHERS[prediction_type]


def _conds():
    gen = torch.Generator().manual_seed(7)
    pos = torch.randn(1, 3, 8, generator=gen)
    neg = torch.randn(1, 3, 8, generator=gen)
    return pos, neg


def _run_both(comfy, sampler, scheduler, *, steps=6, cfg=5.0, denoise=1.0, seed=1234, prediction_type="epsilon", latent=None):
    if latent is None:
        latent = torch.zeros(2, 4, 8, 8)
    pos, neg = _conds()
    mp = _patcher(comfy, prediction_type)
    comfy_noise = comfy.sample.prepare_noise(latent, seed)
    theirs = comfy.sample.sample(
        mp, comfy_noise.clone(), steps, cfg, sampler, scheduler, [[pos, {}]], [[neg, {}]], latent.clone(),
        denoise=denoise, seed=seed, disable_pbar=True,
    )
    schedule = _our_schedule(prediction_type)
    noise = prepare_noise(latent.shape, seed)
    assert torch.equal(noise, comfy_noise)
    sigmas = get_sigmas(schedule, scheduler, steps, denoise, sampler_name=sampler)
    ours = ksample(_our_apply_model, schedule, latent, noise, sigmas, pos, neg, cfg, sampler, seed)
    return ours, theirs


def _our_schedule(prediction_type):
    if prediction_type == "edm_vpred":
        return ContinuousEDMSchedule("v_prediction", edm_sigma_min=EDM_RANGE[0], edm_sigma_max=EDM_RANGE[1])
    return DiscreteSchedule(prediction_type)


def _assert_parity(ours, theirs, label):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.isfinite(theirs).all(), f"{label}: ComfyUI's result is not finite; the case is not informative"
    diff = (ours - theirs).abs().max().item()
    log.info("%s: max abs diff %.3g (bitwise equal: %s)", label, diff, torch.equal(ours, theirs))
    assert diff <= ATOL, f"{label}: max abs diff {diff:.3g} > {ATOL}"


# -- the schedule and the sigmas -------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_schedule_tables_and_conversions(comfy, prediction_type):
    ms = _patcher(comfy, prediction_type).get_model_object("model_sampling")
    ours = DiscreteSchedule(prediction_type)
    assert torch.equal(ours.sigmas, ms.sigmas) and torch.equal(ours.log_sigmas, ms.log_sigmas)
    sig = torch.rand(64, generator=torch.Generator().manual_seed(0)) * 16 + 0.01
    assert torch.equal(ours.timestep(sig), ms.timestep(sig))
    ts = torch.linspace(-3, 1003, 97)
    assert torch.equal(ours.sigma(ts), ms.sigma(ts))
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    s = torch.tensor([14.6, 0.3])
    assert torch.equal(ours.calculate_input(s, x), ms.calculate_input(s, x))
    assert torch.equal(ours.calculate_denoised(s, out, x), ms.calculate_denoised(s, out, x))
    for max_denoise in (False, True):
        assert torch.equal(ours.noise_scaling(s, out, x, max_denoise), ms.noise_scaling(s, out.clone(), x, max_denoise))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_scheduler_sigmas_equal_calculate_sigmas(comfy, scheduler):
    ms = _patcher(comfy, "epsilon").get_model_object("model_sampling")
    schedule = DiscreteSchedule()
    for steps in (1, 2, 3, 4, 7, 10, 20, 33, 50, 150):
        theirs = comfy.samplers.calculate_sigmas(ms, scheduler, steps)
        if scheduler == "kl_optimal" and steps == 1:  # ComfyUI: [nan, 0]; we refuse
            assert torch.isnan(theirs[0])
            with pytest.raises(ValueError, match="kl_optimal"):
                scheduler_sigmas(schedule, scheduler, steps)
            continue
        ours = scheduler_sigmas(schedule, scheduler, steps)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=f"{scheduler} steps={steps}")


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_ksampler_sigmas_with_denoise_and_discard(comfy, scheduler):
    mp = _patcher(comfy, "epsilon")
    schedule = DiscreteSchedule()
    for sampler in ("euler", "dpm_2", "uni_pc"):
        for steps in (1, 3, 8, 25):
            for denoise in (1.0, 0.99995, 0.75, 0.5, 0.13, 0.0):
                theirs = comfy.samplers.KSampler(mp, steps, "cpu", sampler, scheduler, denoise).sigmas
                if torch.isnan(theirs).any():  # kl_optimal asked for 1 step: we refuse (tested above)
                    continue
                ours = get_sigmas(schedule, scheduler, steps, denoise, sampler_name=sampler)
                label = f"{scheduler}/{sampler} steps={steps} denoise={denoise}"
                torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=label)


# -- whole sampler runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_ksample_matches_comfy(comfy, sampler, scheduler):
    ours, theirs = _run_both(comfy, sampler, scheduler)
    _assert_parity(ours, theirs, f"{sampler}/{scheduler}")


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_ksample_img2img_vpred_cfg1(comfy, sampler):
    # v-prediction, partial denoise of a non-zero latent (no max_denoise), cfg 1 (no uncond pass), batch 1
    latent = torch.randn(1, 4, 6, 10, generator=torch.Generator().manual_seed(3))
    ours, theirs = _run_both(
        comfy, sampler, "karras", steps=7, cfg=1.0, denoise=0.6, seed=2**63 + 12345, prediction_type="v_prediction", latent=latent
    )
    _assert_parity(ours, theirs, f"{sampler}/karras v-pred img2img")


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde", "uni_pc", "lms", "deis", "ipndm_v", "dpm_adaptive",
                                     "dpmpp_2m_cfg_pp", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_3", "sa_solver_pece"])
def test_ksample_long_run(comfy, sampler):
    ours, theirs = _run_both(comfy, sampler, "normal", steps=30, cfg=7.5, seed=0)
    _assert_parity(ours, theirs, f"{sampler}/normal 30 steps")


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_lms_without_scipy_matches_comfy(comfy, scheduler, monkeypatch):
    # lora-lab does not require scipy: its own 21-point Kronrod pass must give ComfyUI's numbers too
    from lora_lab.nodes.sampling import samplers_kdiff

    monkeypatch.setattr(samplers_kdiff, "_scipy_quad", lambda: None)
    ours, theirs = _run_both(comfy, "lms", scheduler, steps=12)
    _assert_parity(ours, theirs, f"lms/{scheduler} without scipy")


# -- EDM v-prediction (edm_vpred.* checkpoints, CosXL): ModelSamplingContinuousEDM ------------------


def test_edm_schedule_equals_model_sampling_continuous_edm(comfy):
    ms = _patcher(comfy, "edm_vpred").get_model_object("model_sampling")
    assert type(ms).__mro__[1].__name__ == "ModelSamplingContinuousEDM" and isinstance(ms, comfy.model_sampling.V_PREDICTION)
    ours = _our_schedule("edm_vpred")
    assert torch.equal(ours.sigmas, ms.sigmas) and torch.equal(ours.log_sigmas, ms.log_sigmas)
    sig = torch.rand(64, generator=torch.Generator().manual_seed(0)) * 100 + 0.002
    assert torch.equal(ours.timestep(sig), ms.timestep(sig))
    ts = torch.linspace(-1.6, 1.2, 97)
    assert torch.equal(ours.sigma(ts), ms.sigma(ts))
    for p in (0.0, 0.2, 0.5, 0.8, 1.0, 0.013):
        assert ours.percent_to_sigma(p) == ms.percent_to_sigma(p), p
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    s = torch.tensor([119.0, 0.3])
    assert torch.equal(ours.calculate_input(s, x), ms.calculate_input(s, x))
    assert torch.equal(ours.calculate_denoised(s, out, x), ms.calculate_denoised(s, out, x))
    for scheduler in SCHEDULER_NAMES:
        for steps in (2, 3, 7, 20):
            theirs = comfy.samplers.calculate_sigmas(ms, scheduler, steps)
            torch.testing.assert_close(scheduler_sigmas(ours, scheduler, steps), theirs, rtol=0, atol=0, msg=f"{scheduler} {steps}")
    mp = _patcher(comfy, "edm_vpred")
    for scheduler in SCHEDULER_NAMES:
        for denoise in (1.0, 0.6):
            theirs = comfy.samplers.KSampler(mp, 8, "cpu", "dpm_2", scheduler, denoise).sigmas
            ours_s = get_sigmas(ours, scheduler, 8, denoise, sampler_name="dpm_2")
            torch.testing.assert_close(ours_s, theirs, rtol=0, atol=0, msg=f"{scheduler} denoise={denoise}")


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_edm_vpred_ksample_matches_comfy(comfy, sampler):
    ours, theirs = _run_both(comfy, sampler, "karras", steps=6, prediction_type="edm_vpred")
    _assert_parity(ours, theirs, f"{sampler}/karras EDM v-pred")


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_edm_vpred_ksample_schedulers_match_comfy(comfy, scheduler):
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    for sampler, cfg, denoise in (("euler", 5.0, 1.0), ("dpmpp_2m", 1.0, 0.7), ("sa_solver", 3.0, 1.0)):
        ours, theirs = _run_both(comfy, sampler, scheduler, steps=5, cfg=cfg, denoise=denoise, prediction_type="edm_vpred",
                                 latent=latent)
        _assert_parity(ours, theirs, f"{sampler}/{scheduler} EDM v-pred cfg {cfg} denoise {denoise}")


# -- the runner's KSampler path (comfy_ksampler) with a noise mask ---------------------------------


class _DiffusersToy(torch.nn.Module):
    """ToyUNet behind the diffusers UNet call the runner's KSampler makes."""

    def __init__(self):
        super().__init__()
        self.toy = ToyUNet()
        self.config = type("Config", (), {"in_channels": 4})()

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, x, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        return (self.toy(x, t, context=encoder_hidden_states),)


@pytest.mark.parametrize("cfg", [4.0, 1.0])
@pytest.mark.parametrize("sampler", ["euler", "sa_solver", *(n for n in SAMPLER_NAMES if n.endswith("_cfg_pp"))])
def test_runner_ksampler_with_noise_mask_matches_comfy(comfy, sampler, cfg, monkeypatch):
    # KSamplerX0Inpaint blends the guided x0 outside the mask; the uncond a CFG++ sampler reads is
    # the unblended one (ComfyUI's post-cfg hook sees it before the blend)
    from lora_lab.nodes.sampling.comfy_ksampler import KSamplerSettings, ksampler

    monkeypatch.setattr("lora_lab.nodes.lora.patcher.activate", lambda handle: 0)  # no LoRA patches on a toy
    handle = type("ToyHandle", (), {"unet": _DiffusersToy(), "vae_scaling_factor": 1.0, "family": "sd1",
                                    "prediction_type": "epsilon", "edm_vpred": None, "zsnr": False, "source": "toy"})()
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:50, 8:40] = 1.0
    pos, neg = _conds()
    seed = 77
    mp = _patcher(comfy, "epsilon")
    theirs = comfy.sample.sample(
        mp, comfy.sample.prepare_noise(latent, seed), 5, cfg, sampler, "karras", [[pos, {}]], [[neg, {}]], latent.clone(),
        denoise=0.8, noise_mask=mask, seed=seed, disable_pbar=True,
    )
    s = KSamplerSettings(seed, 5, cfg, sampler, "karras", denoise=0.8)
    ours = ksampler(handle, s, [[pos, {}]], [[neg, {}]], {"samples": latent.clone(), "noise_mask": mask})["samples"]
    _assert_parity(ours, theirs, f"{sampler} runner KSampler, noise mask, cfg {cfg}")
