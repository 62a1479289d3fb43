"""Parity with a real ComfyUI 0.3.64 for the runner's LatentComposite, ImagePadForOutpaint,
ModelSamplingDiscrete and ModelSamplingContinuousEDM: ComfyUI's own node classes run on the same
inputs, compared bit for bit. Runs only where COMFYUI_DIR points at a checkout whose modules
import in this interpreter, e.g.

    COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python -m pytest tests/test_comfy_node_parity.py
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from comfy_env import comfy_modules_or_skip
from lora_lab.nodes.defs import core_extra as cx
from lora_lab.nodes.sampling.schedules import scheduler_sigmas


@pytest.fixture(scope="module")
def comfy():
    nodes, advanced, samplers = comfy_modules_or_skip("nodes", "comfy_extras.nodes_model_advanced", "comfy.samplers")
    return SimpleNamespace(nodes=nodes, advanced=advanced, samplers=samplers)


@pytest.mark.parametrize("x,y,feather", [(0, 0, 0), (16, 8, 0), (40, 24, 0), (16, 8, 16), (0, 16, 24), (8, 8, 8),
                                         (24, 0, 40), (56, 48, 8)])
def test_latent_composite(comfy, x, y, feather):
    g = torch.Generator().manual_seed(x + y + feather)
    to = {"samples": torch.randn(2, 4, 6, 7, generator=g)}
    src = {"samples": torch.randn(2, 4, 4, 5, generator=g)}
    (want,) = comfy.nodes.LatentComposite().composite(to, src, x, y, feather=feather)
    (got,) = cx.LatentComposite().composite(to, src, x, y, feather=feather)
    assert torch.equal(got["samples"], want["samples"])


@pytest.mark.parametrize("sides,feathering", [((8, 0, 16, 0), 5), ((0, 8, 0, 24), 3), ((8, 8, 8, 8), 0),
                                               ((16, 0, 0, 8), 12), ((8, 8, 8, 8), 40), ((0, 0, 64, 0), 7)])
def test_image_pad_for_outpaint(comfy, sides, feathering):
    img = torch.rand(1, 30, 36, 3, generator=torch.Generator().manual_seed(feathering))
    want = comfy.nodes.ImagePadForOutpaint().expand_image(img, *sides, feathering)
    got = cx.ImagePadForOutpaint().expand_image(img, *sides, feathering)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


class _Patcher:
    """What ModelSampling* touch of ComfyUI's ModelPatcher: clone, add_object_patch, the model config."""

    def __init__(self):
        self.model = SimpleNamespace(model_config=SimpleNamespace(sampling_settings={}))
        self.objects = {}

    def clone(self):
        return _Patcher()

    def add_object_patch(self, name, obj):
        self.objects[name] = obj


def _compare(comfy, ms, ours, schedulers):
    assert torch.equal(ours.sigmas, ms.sigmas.float()) and torch.equal(ours.log_sigmas, ms.log_sigmas.float())
    g = torch.Generator().manual_seed(0)
    sig = ours.sigmas[[0, len(ours.sigmas) // 3, -1]].clone()
    assert torch.equal(ours.timestep(sig).float(), ms.timestep(sig).float())
    t = ms.timestep(sig).float()
    assert torch.equal(ours.sigma(t), ms.sigma(t))
    for p in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert ours.percent_to_sigma(p) == ms.percent_to_sigma(p)
    x, out = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    assert torch.equal(ours.calculate_input(sig, x), ms.calculate_input(sig, x))
    assert torch.equal(ours.calculate_denoised(sig, out, x), ms.calculate_denoised(sig, out, x))
    for name in schedulers:
        assert torch.equal(scheduler_sigmas(ours, name, 6), comfy.samplers.calculate_sigmas(ms, name, 6).float()), name


@pytest.mark.parametrize("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"])
@pytest.mark.parametrize("zsnr", [False, True])
def test_model_sampling_discrete(comfy, tiny_handles, sampling, zsnr):
    (m,) = comfy.advanced.ModelSamplingDiscrete().patch(_Patcher(), sampling, zsnr)
    ours = cx.ModelSamplingDiscrete().patch(tiny_handles["sd1"], sampling, zsnr)[0].model_sampling
    _compare(comfy, m.objects["model_sampling"], ours, ["normal", "karras", "simple", "sgm_uniform", "ddim_uniform",
                                                         "exponential", "beta"])


@pytest.mark.parametrize("sampling", ["v_prediction", "edm", "eps"])
def test_model_sampling_continuous_edm(comfy, tiny_handles, sampling):
    (m,) = comfy.advanced.ModelSamplingContinuousEDM().patch(_Patcher(), sampling, 80.0, 0.03)
    ours = cx.ModelSamplingContinuousEDM().patch(tiny_handles["sdxl"], sampling, 80.0, 0.03)[0].model_sampling
    assert ours.sigma_data == m.objects["model_sampling"].sigma_data
    _compare(comfy, m.objects["model_sampling"], ours, ["normal", "karras", "exponential", "sgm_uniform"])
