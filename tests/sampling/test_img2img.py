"""img2img, inpainting and second passes: our Sample and ComfyUI's KSampler from a latent."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_lab.nodes.defs import core_conditioning as cc
from lora_lab.nodes.defs import core_latent as cl
from lora_lab.nodes.defs.node_defs import LoraLabSampler
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.model.runner_types import ClipHandle, VaeHandle
from lora_lab.nodes.sampling.comfy_ksampler import prepare_noise_indexed, reshape_mask
from lora_lab.nodes.sampling.latent_ops import (
    crop_pixels,
    encode_for_inpaint,
    vae_encode,
)
from lora_lab.nodes.sampling.samplers import prepare_noise
from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ("a fox", "blurry", 4, 3, 5.0, "euler", "normal", 64, 64, 1)


def a_picture(h=64, w=64, b=1):
    g = torch.Generator().manual_seed(0)
    return torch.rand((b, h, w, 3), generator=g)


def test_sample_node_txt2img_unchanged_and_returns_latent(tiny_handles):
    h = tiny_handles["sd1"]
    img, lat = LoraLabSampler().sample(h, *ARGS)
    ref = generate(h, SampleSettings(*ARGS))
    assert torch.equal(img, ref)
    assert lat["samples"].shape == (1, 4, 8, 8)
    (dec,) = cl.VAEDecode().decode(VaeHandle(h.vae), lat)  # ComfyUI's VAE Decode reads our LATENT
    assert torch.equal(dec, img)


def test_denoise_one_from_empty_latent_is_txt2img(tiny_handles):
    h = tiny_handles["sd1"]
    (empty,) = cl.EmptyLatentImage().generate(64, 64, 1)
    img, _ = LoraLabSampler().sample(h, *ARGS, denoise=1.0, latent=empty)
    # the latent path calls the UNet for cond and uncond separately (ComfyUI's KSampler path):
    # bit for bit the two-call text-to-image, and the batched default within fp32 rounding
    assert torch.equal(img, generate(h, SampleSettings(*ARGS, batch_cfg=False)))
    torch.testing.assert_close(img, generate(h, SampleSettings(*ARGS)), rtol=0, atol=1e-4)


def test_denoise_zero_returns_the_input_latent(tiny_handles):
    h = tiny_handles["sd1"]
    lat = {"samples": vae_encode(VaeHandle(h.vae), a_picture())}
    _, out = LoraLabSampler().sample(h, *ARGS, denoise=0.0, latent=lat)
    assert torch.equal(out["samples"], lat["samples"])
    m, clip = h, ClipHandle(h)
    (pos,) = cc.CLIPTextEncode().encode(clip, "a fox")
    (core,) = cl.KSampler().sample(m, 4, 3, 5.0, "euler", "normal", pos, pos, lat, 0.0)
    assert core["samples"] is lat["samples"]


def test_our_img2img_equals_core_graph(tiny_handles):
    """Sample(image, denoise 0.6) == VAEEncode -> KSampler(denoise 0.6) -> VAEDecode, bit for bit."""
    h = tiny_handles["sd1"]
    pic = a_picture()
    img, lat = LoraLabSampler().sample(h, *ARGS, denoise=0.6, image=pic)
    vae, clip = VaeHandle(h.vae), ClipHandle(h)
    (enc,) = cl.VAEEncode().encode(vae, pic)
    (pos,) = cc.CLIPTextEncode().encode(clip, "a fox")
    (neg,) = cc.CLIPTextEncode().encode(clip, "blurry")
    (out,) = cl.KSampler().sample(h, 4, 3, 5.0, "euler", "normal", pos, neg, enc, 0.6)
    assert torch.equal(out["samples"], lat["samples"])
    assert torch.equal(cl.VAEDecode().decode(vae, out)[0], img)
    full, _ = LoraLabSampler().sample(h, *ARGS)
    assert not torch.equal(img, full)


def test_mask_keeps_the_unmasked_latent(tiny_handles):
    """Inpainting: where the mask is 0 the output latent is the input latent (up to the last step's rounding)."""
    h = tiny_handles["sd1"]
    lat = {"samples": vae_encode(VaeHandle(h.vae), a_picture())}
    mask = torch.zeros((1, 64, 64))
    mask[:, :, 32:] = 1.0  # repaint the right half
    _, out = LoraLabSampler().sample(h, *ARGS, denoise=1.0, latent=lat, mask=mask)
    kept, redrawn = out["samples"][..., :4], out["samples"][..., 4:]
    assert torch.allclose(kept, lat["samples"][..., :4], atol=1e-5)
    assert not torch.allclose(redrawn, lat["samples"][..., 4:], atol=1e-2)
    (core_lat,) = cl.SetLatentNoiseMask().set_mask(lat, mask)
    (pos,) = cc.CLIPTextEncode().encode(ClipHandle(h), "a fox")
    (neg,) = cc.CLIPTextEncode().encode(ClipHandle(h), "blurry")
    (core,) = cl.KSampler().sample(h, 4, 3, 5.0, "euler", "normal", pos, neg, core_lat, 1.0)
    assert torch.equal(core["samples"], out["samples"])
    assert "noise_mask" in core and "noise_mask" not in lat


def inpainting_handle(h):
    """The tiny SD1 model with a 9-channel UNet (an inpainting checkpoint's layout)."""
    from diffusers import UNet2DConditionModel

    cfg = dict(h.unet.config)
    cfg["in_channels"] = 9
    torch.manual_seed(11)
    unet = UNet2DConditionModel.from_config(cfg).eval().requires_grad_(False)
    return dataclasses.replace(h, unet=unet, source="tiny-inpaint")


def test_nine_channel_unet_gets_mask_and_masked_latent(tiny_handles):
    h = inpainting_handle(tiny_handles["sd1"])
    vae = VaeHandle(h.vae)
    pic = a_picture()
    mask = torch.zeros((1, 64, 64))
    mask[:, 16:48, 16:48] = 1.0
    (lat,) = cl.VAEEncodeForInpaint().encode(vae, pic, mask, 6)
    seen = []
    hook = h.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0].clone()), with_kwargs=True)
    try:
        (pos,) = cc.CLIPTextEncode().encode(ClipHandle(h), "a fox")
        (out,) = cl.KSampler().sample(h, 1, 2, 1.0, "euler", "normal", pos, pos, lat, 1.0)
    finally:
        hook.remove()
    x_in = seen[0]
    assert x_in.shape == (1, 9, 8, 8)
    want_mask = torch.nn.functional.interpolate(lat["noise_mask"], size=(8, 8), mode="bilinear").round()
    assert torch.equal(x_in[:, 4:5], want_mask)
    assert torch.allclose(x_in[:, 5:], lat["samples"] * h.vae_scaling_factor)
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    img, _ = LoraLabSampler().sample(h, "a fox", "a fox", 1, 2, 1.0, "euler", "normal", 64, 64, 1, image=pic,
                                     mask=mask)
    assert torch.equal(img, cl.VAEDecode().decode(vae, out)[0])  # Sample uses VAEEncodeForInpaint's latent


def test_encode_for_inpaint_formula(tiny_handles):
    vae = VaeHandle(tiny_handles["sd1"].vae)
    pic = a_picture(70, 66)
    mask = torch.zeros((1, 70, 66))
    mask[:, 10:20, 10:20] = 1.0
    out = encode_for_inpaint(vae, pic, mask, 0)
    px = pic[:, 3:67, 1:65].clone()
    px[:, 7:17, 9:19] = 0.5  # masked pixels become grey (mask cropped like the pixels)
    assert torch.equal(out["samples"], vae_encode(vae, px))
    assert out["noise_mask"].shape == (1, 1, 64, 64) and float(out["noise_mask"].sum()) == 100.0
    assert crop_pixels(pic).shape == (1, 64, 64, 3)


def test_hires_second_pass_on_upscaled_latent(tiny_handles):
    h = tiny_handles["sd1"]
    _, lat = LoraLabSampler().sample(h, *ARGS)
    (up,) = cl.LatentUpscaleBy().upscale(lat, "nearest-exact", 2.0)
    assert torch.equal(up["samples"], torch.nn.functional.interpolate(lat["samples"], size=(16, 16),
                                                                      mode="nearest-exact"))
    img, out = LoraLabSampler().sample(h, *ARGS, denoise=0.5, latent=up)
    assert img.shape == (1, 128, 128, 3) and out["samples"].shape == (1, 4, 16, 16)


def test_batch_index_noise_matches_comfy_rule():
    """One draw per index up to the largest; with no index, the whole batch at once."""
    a = prepare_noise_indexed((2, 4, 8, 8), 3, [0, 2])
    g = torch.Generator().manual_seed(3)
    draws = [torch.randn((1, 4, 8, 8), generator=g) for _ in range(3)]
    assert torch.equal(a, torch.cat([draws[0], draws[2]]))
    assert torch.equal(prepare_noise_indexed((2, 4, 8, 8), 3), prepare_noise((2, 4, 8, 8), 3))


def test_latent_batch_nodes():
    lat = {"samples": torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)}
    (rep,) = cl.RepeatLatentBatch().repeat(lat, 3)
    assert rep["samples"].shape[0] == 6 and torch.equal(rep["samples"][2:4], lat["samples"])
    (one,) = cl.LatentFromBatch().frombatch(rep, 3, 2)
    assert one["batch_index"] == [3, 4] and torch.equal(one["samples"], rep["samples"][3:5])
    (again,) = cl.RepeatLatentBatch().repeat(one, 2)
    assert again["batch_index"] == [3, 4, 5, 6]
    assert reshape_mask(torch.ones(1, 16, 16), (2, 4, 8, 8)).shape == (2, 4, 8, 8)


def test_sample_input_errors(tiny_handles):
    h = tiny_handles["sd1"]
    with pytest.raises(NodeInputError, match="LoraLabSampler: input 'mask'"):
        LoraLabSampler().sample(h, *ARGS, mask=torch.ones(1, 64, 64))
    with pytest.raises(NodeInputError, match="LoraLabSampler: input 'image'"):
        LoraLabSampler().sample(h, *ARGS, image=a_picture(), latent={"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(NodeInputError, match="LoraLabSampler: input 'denoise'"):
        LoraLabSampler().sample(h, *ARGS, denoise=1.5, latent={"samples": torch.zeros(1, 4, 8, 8)})
