"""Checkpoint markers ComfyUI honours: `ztsnr` (zero terminal SNR) and `edm_vpred.*` (EDM v-prediction)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_lab.nodes.model.checkpoint import load_single_file
from lora_lab.nodes.sampling.schedules import (
    ContinuousEDMSchedule,
    DiscreteSchedule,
    get_sigmas,
    rescale_zero_terminal_snr,
    schedule_for,
)
from lora_lab.nodes.sampling.txt2img import SampleSettings, generate
from safetensors.torch import load_file, save_file


def test_zero_terminal_snr_formula():
    plain, z = DiscreteSchedule("v_prediction"), DiscreteSchedule("v_prediction", zsnr=True)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ab = torch.cumprod(1 - betas, 0)  # alpha_bar, float64 as the LDM code
    s0, sT = ab[0].sqrt(), ab[-1].sqrt()
    want = (ab.sqrt() - sT) * s0 / (s0 - sT)
    want = want**2
    want[-1] = 4.8973451890853435e-08
    assert torch.allclose(z.sigmas.double(), ((1 - want) / want) ** 0.5, rtol=1e-6)
    assert torch.allclose(z.sigmas[0], plain.sigmas[0], rtol=1e-5)  # the first step keeps its noise level
    assert 4500 < float(z.sigma_max) < 4540  # alpha_bar 4.9e-8 at the end instead of ~0.0047
    assert float(get_sigmas(z, "karras", 5)[0]) == pytest.approx(float(z.sigma_max), rel=1e-5)
    first = rescale_zero_terminal_snr(torch.tensor([1.0, 2.0], dtype=torch.float64))[0]
    assert float(first) == pytest.approx(1.0, rel=1e-12)


def marked(tmp_path, tiny_checkpoints, **extra):
    sd = load_file(tiny_checkpoints["sdxl"])
    sd.update({k: torch.tensor(v) if not isinstance(v, torch.Tensor) else v for k, v in extra.items()})
    path = tmp_path / "marked.safetensors"
    save_file(sd, path)
    return load_single_file(path)


def test_ztsnr_with_v_pred_changes_sampling(tmp_path, tiny_checkpoints):
    h = marked(tmp_path, tiny_checkpoints, v_pred=torch.tensor([]), ztsnr=torch.tensor([]))
    assert h.zsnr and h.prediction_type == "v_prediction" and schedule_for(h).zsnr
    s = SampleSettings("a fox", steps=2, width=64, height=64, scheduler="karras")
    assert not torch.equal(generate(h, s), generate(dataclasses.replace(h, zsnr=False), s))


def test_continuous_edm_schedule_formula():
    e = ContinuousEDMSchedule("v_prediction", edm_sigma_min=0.002, edm_sigma_max=120.0)
    assert e.sigmas.shape == (1000,) and e.sigmas.dtype == torch.float32
    steps = e.log_sigmas[1:] - e.log_sigmas[:-1]  # log-spaced
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-3)
    assert float(e.sigma_min) == pytest.approx(0.002, rel=1e-5) and float(e.sigma_max) == pytest.approx(120.0, rel=1e-5)
    s = torch.tensor([0.01, 1.0, 80.0])
    assert torch.allclose(e.timestep(s), 0.25 * s.log()) and torch.allclose(e.sigma(e.timestep(s)), s, rtol=1e-6)
    assert e.percent_to_sigma(0.0) > 1e8 and e.percent_to_sigma(1.0) == 0.0
    assert e.percent_to_sigma(0.5) == pytest.approx((0.002 * 120.0) ** 0.5, rel=1e-5)  # the geometric middle
    karras = get_sigmas(e, "karras", 6)
    assert float(karras[0]) == pytest.approx(120.0, rel=1e-5) and float(karras[-2]) == pytest.approx(0.002, rel=1e-4)
    normal = get_sigmas(e, "normal", 6)  # uniform in 0.25 log sigma: log-uniform sigmas
    assert torch.allclose(normal[:-1].log(), torch.linspace(e.log_sigmas[-1], e.log_sigmas[0], 6), atol=1e-4)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ContinuousEDMSchedule(edm_sigma_min=1.0, edm_sigma_max=0.5)


def test_edm_vpred_samples_on_the_continuous_schedule(tmp_path, tiny_checkpoints):
    h = marked(tmp_path, tiny_checkpoints, **{"edm_vpred.sigma_max": torch.tensor(120.0),
                                              "edm_vpred.sigma_min": torch.tensor(0.002)})
    assert h.edm_vpred == (pytest.approx(0.002), 120.0) and h.prediction_type == "v_prediction"
    sched = schedule_for(h)
    assert isinstance(sched, ContinuousEDMSchedule) and float(sched.sigma_max) == pytest.approx(120.0, rel=1e-5)
    seen = []
    hook = h.unet.register_forward_pre_hook(lambda mod, args, kw: seen.append(float(args[1].reshape(-1)[0])), with_kwargs=True)
    try:
        s = SampleSettings("a fox", steps=2, width=64, height=64, scheduler="karras")
        img = generate(h, s)
    finally:
        hook.remove()
    assert torch.isfinite(img).all()
    sigmas = get_sigmas(sched, "karras", 2)
    # the UNet sees 0.25 * log(sigma) (cond and uncond batched: one call per model evaluation)
    assert seen == pytest.approx([0.25 * float(sigmas[0].log()), 0.25 * float(sigmas[1].log())], rel=1e-6)
    discrete = dataclasses.replace(h, edm_vpred=None)  # the same weights on SD's discrete v-prediction schedule
    assert not torch.equal(img, generate(discrete, s))


def test_edm_vpred_only_sigma_max_takes_comfyuis_default_min(tmp_path, tiny_checkpoints):
    h = marked(tmp_path, tiny_checkpoints, **{"edm_vpred.sigma_max": torch.tensor(80.0)})
    sched = schedule_for(h)
    assert float(sched.sigma_min) == pytest.approx(0.002, rel=1e-5) and float(sched.sigma_max) == pytest.approx(80.0, rel=1e-5)


def test_edm_vpred_core_ksampler_equals_our_sample(tmp_path, tiny_checkpoints):
    from lora_lab.nodes.defs import core_conditioning as cc
    from lora_lab.nodes.defs import core_latent as cl
    from lora_lab.nodes.model.runner_types import ClipHandle
    from lora_lab.nodes.sampling.txt2img import txt2img_latents

    h = marked(tmp_path, tiny_checkpoints, **{"edm_vpred.sigma_max": torch.tensor(120.0)})
    clip = ClipHandle(h)
    (pos,), (neg,) = cc.CLIPTextEncode().encode(clip, "a fox"), cc.CLIPTextEncode().encode(clip, "blurry")
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    (core,) = cl.KSampler().sample(h, 5, 3, 4.0, "dpmpp_2m_cfg_pp", "normal", pos, neg, lat)
    s = SampleSettings("a fox", "blurry", seed=5, steps=3, cfg=4.0, sampler_name="dpmpp_2m_cfg_pp", scheduler="normal",
                       width=64, height=64, batch_cfg=False)
    assert torch.equal(core["samples"], (txt2img_latents(h, s) / h.vae_scaling_factor).float().cpu())
