"""The samplers added for ComfyUI 0.3.64's KSampler list, through our nodes on the tiny models:
core KSampler == our Sample (two different CFG denoisers, so the uncond the CFG++ samplers
read must agree), inpainting keeps the unmasked latent, and the node's sampler list is ComfyUI's."""
from __future__ import annotations

import pytest
import torch
from lora_lab.nodes.defs import core_conditioning as cc
from lora_lab.nodes.defs import core_latent as cl
from lora_lab.nodes.model.runner_types import ClipHandle, VaeHandle
from lora_lab.nodes.sampling.latent_ops import vae_encode
from lora_lab.nodes.sampling.sampler_names import SAMPLER_NAMES
from lora_lab.nodes.sampling.txt2img import SampleSettings, txt2img_latents

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLERS = ("euler_cfg_pp", "dpmpp_2m_cfg_pp", "res_multistep_ancestral_cfg_pp", "sa_solver", "deis", "dpm_fast", "er_sde")


def _conds(h):
    clip = ClipHandle(h)
    return cc.CLIPTextEncode().encode(clip, "a fox")[0], cc.CLIPTextEncode().encode(clip, "blurry")[0]


def test_ksampler_offers_comfyuis_list():
    for node in (cl.KSampler, cl.KSamplerAdvanced):
        (names,) = node.INPUT_TYPES()["required"]["sampler_name"]
        assert tuple(names) == SAMPLER_NAMES and len(names) == 42


@pytest.mark.parametrize("cfg", [1.0, 5.0])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_core_ksampler_equals_our_sample(tiny_handles, sampler, cfg):
    h = tiny_handles["sd1"]
    pos, neg = _conds(h)
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    (core,) = cl.KSampler().sample(h, 7, 4, cfg, sampler, "karras", pos, neg, lat)
    s = SampleSettings("a fox", "blurry", seed=7, steps=4, cfg=cfg, sampler_name=sampler, scheduler="karras",
                       width=64, height=64, batch_size=1, batch_cfg=False)
    ours = txt2img_latents(h, s) / h.vae_scaling_factor
    assert torch.isfinite(core["samples"]).all()
    assert torch.equal(core["samples"], ours.float().cpu())  # bit for bit (cond and uncond as two calls on both sides)


@pytest.mark.parametrize("sampler", ["euler_ancestral_cfg_pp", "seeds_2", "ipndm"])
def test_inpainting_keeps_the_unmasked_latent(tiny_handles, sampler):
    h = tiny_handles["sd1"]
    pic = torch.rand((1, 64, 64, 3), generator=torch.Generator().manual_seed(0))
    lat = {"samples": vae_encode(VaeHandle(h.vae), pic)}
    mask = torch.zeros((1, 64, 64))
    mask[:, :, 32:] = 1.0
    (masked,) = cl.SetLatentNoiseMask().set_mask(lat, mask)
    pos, neg = _conds(h)
    (out,) = cl.KSampler().sample(h, 3, 4, 5.0, sampler, "normal", pos, neg, masked, 1.0)
    kept, redrawn = out["samples"][..., :4], out["samples"][..., 4:]
    assert torch.allclose(kept, lat["samples"][..., :4], atol=1e-5)
    assert not torch.allclose(redrawn, lat["samples"][..., 4:], atol=1e-2)
