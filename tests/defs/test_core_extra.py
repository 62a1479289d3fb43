"""LatentComposite, ImagePadForOutpaint, ModelSamplingDiscrete, ModelSamplingContinuousEDM in the runner:
against ComfyUI 0.3.64's formulas written out cell by cell, and against our own handles / schedules."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_lab.nodes.defs import core_conditioning as cc
from lora_lab.nodes.defs import core_extra as cx
from lora_lab.nodes.defs import core_latent as cl
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.model.runner_types import ClipHandle
from lora_lab.nodes.sampling.schedules import (
    ContinuousEDMSchedule,
    DiscreteSchedule,
    get_sigmas,
    schedule_for,
)
from lora_lab.nodes.sampling.schedules_lcm import LCMSchedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- LatentComposite ------------------------------------------------------------------------------
def ref_weight(i, j, rows, cols, feather, edges):
    """The blend weight of cell (i, j) of the pasted part: each edge's factor (t + 1) / feather for the
    t-th row / column from it, float32 products in ComfyUI's order (top, bottom, left, right)."""
    w = torch.tensor(1.0)
    top, bottom, left, right = edges
    for on, t in ((top, i), (bottom, rows - 1 - i), (left, j), (right, cols - 1 - j)):
        if on and t < feather:
            w = w * torch.tensor((1.0 / feather) * (t + 1), dtype=torch.float64).float()
    return w


@pytest.mark.parametrize("x,y,feather", [(0, 0, 0), (16, 8, 0), (40, 24, 0), (16, 8, 16), (0, 16, 24), (8, 8, 8)])
def test_latent_composite_is_comfyuis_formula(x, y, feather):
    g = torch.Generator().manual_seed(0)
    to = {"samples": torch.randn(2, 4, 6, 7, generator=g), "noise_mask": torch.ones(1, 1, 6, 7)}
    src = {"samples": torch.randn(2, 4, 4, 5, generator=g)}
    before = to["samples"].clone()
    (out,) = cx.LatentComposite().composite(to, src, x, y, feather=feather)
    assert torch.equal(to["samples"], before) and out["noise_mask"] is to["noise_mask"]
    ox, cy, f = x // 8, y // 8, feather // 8
    want = before.clone()
    rows, cols = min(4, 6 - cy), min(5, 7 - ox)
    edges = (cy != 0, cy + 4 < 6, ox != 0, ox + 5 < 7)
    for i in range(rows):
        for j in range(cols):
            a = src["samples"][:, :, i, j]
            if f == 0:
                want[:, :, cy + i, ox + j] = a
            else:
                m = ref_weight(i, j, rows, cols, f, edges)
                want[:, :, cy + i, ox + j] = a * m + before[:, :, cy + i, ox + j] * (1 - m)
    assert torch.equal(out["samples"], want), (out["samples"] != want).nonzero().tolist()


def test_latent_composite_edges():
    to, src = {"samples": torch.zeros(1, 4, 4, 4)}, {"samples": torch.ones(1, 4, 2, 2)}
    assert torch.equal(cx.LatentComposite().composite(to, src, 32, 0, feather=0)[0]["samples"], to["samples"])  # off the edge
    one = {"samples": torch.ones(1, 4, 2, 2)}
    many = {"samples": torch.zeros(3, 4, 4, 4)}
    assert cx.LatentComposite().composite(many, one, 0, 0)[0]["samples"][:, :, :2, :2].eq(1).all()  # batch 1 broadcasts
    with pytest.raises(NodeInputError, match="LatentComposite.*samples_from"):
        cx.LatentComposite().composite({"samples": torch.zeros(2, 4, 4, 4)}, {"samples": torch.ones(3, 4, 2, 2)}, 0, 0)


# -- ImagePadForOutpaint ----------------------------------------------------------------------------
def ref_pad_mask(h, w, left, top, right, bottom, feathering):
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                d = min(i if top else h, h - i if bottom else h, j if left else w, w - j if right else w)
                if d < feathering:
                    v = (feathering - d) / feathering
                    inner[i, j] = v * v
    mask[top:top + h, left:left + w] = inner
    return mask[None]


@pytest.mark.parametrize("sides,feathering", [((8, 0, 16, 0), 5), ((0, 8, 0, 24), 3), ((8, 8, 8, 8), 0),
                                               ((16, 0, 0, 8), 12), ((8, 8, 8, 8), 11)])
def test_image_pad_for_outpaint_is_comfyuis_formula(sides, feathering):
    left, top, right, bottom = sides
    img = torch.rand(2, 20, 24, 3)
    before = img.clone()
    new, mask = cx.ImagePadForOutpaint().expand_image(img, left, top, right, bottom, feathering)
    assert torch.equal(img, before)
    assert new.shape == (2, 20 + top + bottom, 24 + left + right, 3) and new.dtype == torch.float32
    assert torch.equal(new[:, top:top + 20, left:left + 24], img)
    border = torch.ones(new.shape[1:3], dtype=torch.bool)
    border[top:top + 20, left:left + 24] = False
    assert new[:, border].eq(0.5).all()
    assert torch.equal(mask, ref_pad_mask(20, 24, left, top, right, bottom, feathering))
    if feathering == 11:  # 2 * 11 >= 20: no ramp at all
        assert mask[0, top:top + 20, left:left + 24].eq(0).all()


# -- ModelSampling* ---------------------------------------------------------------------------------
def ksample(model, clip, sampler="euler", scheduler="normal", steps=3, cfg=5.0):
    (pos,), (neg,) = cc.CLIPTextEncode().encode(clip, "a fox"), cc.CLIPTextEncode().encode(clip, "")
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    return cl.KSampler().sample(model, 3, steps, cfg, sampler, scheduler, pos, neg, lat)[0]["samples"]


@pytest.mark.parametrize("sampling,zsnr", [("v_prediction", False), ("v_prediction", True), ("eps", True)])
def test_model_sampling_discrete_equals_a_checkpoint_of_that_kind(tiny_handles, sampling, zsnr):
    """The node on an eps model == the same weights loaded as a v-prediction / ztsnr checkpoint."""
    h = tiny_handles["sd1"]
    (m,) = cx.ModelSamplingDiscrete().patch(h, sampling, zsnr)
    assert h.model_sampling is None and m.unet is h.unet  # input unchanged, modules shared
    kind = "v_prediction" if sampling == "v_prediction" else "epsilon"
    as_ckpt = dataclasses.replace(h, prediction_type=kind, zsnr=zsnr)
    assert torch.equal(schedule_for(m).sigmas, schedule_for(as_ckpt).sigmas)
    clip = ClipHandle(h)
    assert torch.equal(ksample(m, clip), ksample(as_ckpt, clip))


def test_model_sampling_discrete_overrides_the_checkpoints_markers(tiny_handles):
    z = dataclasses.replace(tiny_handles["sd1"], prediction_type="v_prediction", zsnr=True)
    (m,) = cx.ModelSamplingDiscrete().patch(z, "v_prediction", False)  # ComfyUI passes zsnr=False explicitly
    assert not schedule_for(m).zsnr and schedule_for(z).zsnr


def test_x0_and_edm_parameterisations_formula():
    sigma, out, x = torch.tensor([2.0]), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.equal(DiscreteSchedule("x0").calculate_denoised(sigma, out, x), out)
    i2i = DiscreteSchedule("img_to_img")
    assert torch.equal(i2i.calculate_input(sigma, x), x) and torch.equal(i2i.calculate_denoised(sigma, out, x), out)
    e = ContinuousEDMSchedule("edm", sigma_data=0.5)
    s = 2.0
    want = x * 0.25 / (s**2 + 0.25) + out * s * 0.5 / (s**2 + 0.25) ** 0.5
    assert torch.allclose(e.calculate_denoised(sigma, out, x), want, rtol=1e-6)
    assert torch.allclose(e.calculate_input(sigma, x), x / (s**2 + 0.25) ** 0.5, rtol=1e-6)


def test_lcm_schedule_formula():
    full, lcm = DiscreteSchedule(), LCMSchedule()
    assert lcm.sigmas.shape == (50,)
    assert torch.equal(lcm.sigmas, full.sigmas[19::20])  # indices 999 - 20 k, increasing
    ts = lcm.timestep(lcm.sigmas)
    assert torch.equal(ts, torch.arange(50) * 20 + 19)
    assert torch.allclose(lcm.sigma(ts.float()), lcm.sigmas, rtol=1e-5)
    sigma, eps, x = lcm.sigmas[[10]], torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t = 10 * 20 + 19
    c_skip = 0.25 / ((t * 10.0) ** 2 + 0.25)
    c_out = (t * 10.0) / ((t * 10.0) ** 2 + 0.25) ** 0.5
    want = c_out * (x - eps * sigma) + c_skip * x
    assert torch.allclose(lcm.calculate_denoised(sigma, eps, x), want, rtol=1e-6)
    assert float(get_sigmas(lcm, "simple", 4)[0]) == pytest.approx(float(full.sigma_max), rel=1e-6)


def test_lcm_sampling_runs_on_the_distilled_schedule(tiny_handles):
    h = tiny_handles["sd1"]
    (m,) = cx.ModelSamplingDiscrete().patch(h, "lcm", False)
    seen = []
    hook = h.unet.register_forward_pre_hook(lambda mod, args, kw: seen.append(float(args[1].reshape(-1)[0])),
                                            with_kwargs=True)
    try:
        out = ksample(m, ClipHandle(h), sampler="lcm", scheduler="sgm_uniform", steps=4, cfg=1.0)
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    assert seen and all(t % 20 == 19 for t in seen)  # the UNet sees the distilled timesteps only


def test_model_sampling_continuous_edm(tiny_handles):
    h = tiny_handles["sdxl"]
    (m,) = cx.ModelSamplingContinuousEDM().patch(h, "v_prediction", 120.0, 0.002)
    marked = dataclasses.replace(h, prediction_type="v_prediction", edm_vpred=(0.002, 120.0))
    assert isinstance(schedule_for(m), ContinuousEDMSchedule)
    assert torch.equal(schedule_for(m).sigmas, schedule_for(marked).sigmas)
    clip = ClipHandle(h)
    assert torch.equal(ksample(m, clip, steps=2), ksample(marked, clip, steps=2))
    (e,) = cx.ModelSamplingContinuousEDM().patch(h, "edm", 80.0, 0.002)
    assert schedule_for(e).prediction_type == "edm" and schedule_for(e).sigma_data == 0.5
    with pytest.raises(NodeInputError, match="edm_playground_v2.5.*latent format"):
        cx.ModelSamplingContinuousEDM().patch(h, "edm_playground_v2.5", 80.0, 0.002)
    with pytest.raises(NodeInputError, match="sigma_min"):
        cx.ModelSamplingContinuousEDM().patch(h, "eps", 80.0, 0.0)
