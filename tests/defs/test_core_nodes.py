"""ComfyUI's core node ids in the runner: each against our own nodes or the formula, on tiny models."""
from __future__ import annotations

import pytest
import torch
from lora_lab.nodes.defs import core_conditioning as cc
from lora_lab.nodes.defs import core_latent as cl
from lora_lab.nodes.defs import core_loaders as cload
from lora_lab.nodes.defs.node_defs import LoraLabLoraLoader
from lora_lab.nodes.io import paths
from lora_lab.nodes.lora.patcher import activate, restore
from lora_lab.nodes.model.runner_types import ClipHandle, VaeHandle
from lora_lab.nodes.sampling.prompt import encode_prompt
from lora_lab.nodes.sampling.txt2img import SampleSettings, generate
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# batch_cfg=False: the runner's KSampler path calls the UNet for cond and uncond separately, so
# the reference Sample does too (bit for bit); batched guidance equals it within fp32 rounding
# (tests/sampling/test_txt2img.py)
SET = {"steps": 3, "cfg": 6.0, "sampler_name": "euler_ancestral", "scheduler": "karras", "batch_cfg": False}


def core_txt2img(model, clip, vae, prompt, negative, seed, width=64, height=64, batch=1, **kw):
    s = {**SET, **kw}
    (pos,) = cc.CLIPTextEncode().encode(clip, prompt)
    (neg,) = cc.CLIPTextEncode().encode(clip, negative)
    (lat,) = cl.EmptyLatentImage().generate(width, height, batch)
    (out,) = cl.KSampler().sample(model, seed, s["steps"], s["cfg"], s["sampler_name"], s["scheduler"], pos, neg, lat)
    return cl.VAEDecode().decode(vae, out)[0], out


def parts(h):
    return h, ClipHandle(h), VaeHandle(h.vae, h.source)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_default_graph_equals_our_sample(family, tiny_handles):
    """CheckpointLoader -> CLIPTextEncode x2 -> EmptyLatent -> KSampler -> VAEDecode == LoraLabSampler, bit for bit."""
    h = tiny_handles[family]
    img, _ = core_txt2img(*parts(h), "a red fox", "blurry", seed=7, width=64, height=64, batch=2)
    ref = generate(h, SampleSettings("a red fox", "blurry", seed=7, width=64, height=64, batch_size=2, **SET))
    assert img.shape == ref.shape == (2, 64, 64, 3)
    assert torch.equal(img, ref)


def test_clip_set_last_layer_is_clip_skip(tiny_handles):
    h = tiny_handles["sd1"]
    (clip2,) = cc.CLIPSetLastLayer().set_last_layer(ClipHandle(h), -2)
    (c,) = cc.CLIPTextEncode().encode(clip2, "a fox")
    restore(h)
    assert torch.equal(c[0][0], encode_prompt(h, "a fox", clip_skip=2).cond)
    assert not torch.equal(c[0][0], encode_prompt(h, "a fox", clip_skip=1).cond)


@pytest.mark.parametrize("sm,sc", [(1.0, 1.0), (0.7, 0.0), (0.0, 1.3)])
def test_lora_loader_equals_our_lora_loader(lora_dir, tiny_handles, sm, sc):
    """LoraLoader's strength_model goes to the UNet only, strength_clip to the text encoder only."""
    h = tiny_handles["sd1"]
    model, clip = cload.LoraLoader().load_lora(h, ClipHandle(h), "fox.safetensors", sm, sc)
    img, _ = core_txt2img(model, clip, VaeHandle(h.vae), "a fox", "", seed=3)
    ours, _ = LoraLabLoraLoader().load(h, "fox.safetensors", sm, sc)
    ref = generate(ours, SampleSettings("a fox", "", seed=3, width=64, height=64, **SET))
    base = generate(h, SampleSettings("a fox", "", seed=3, width=64, height=64, **SET))
    restore(h)
    assert torch.equal(img, ref)
    assert not torch.equal(img, base)
    assert all(p.strength_text == 0 for p in model.patches)
    assert all(p.strength_unet == 0 for p in clip.handle.patches)


def test_lora_loader_zero_strengths_and_model_only(lora_dir, tiny_handles):
    h = tiny_handles["sd1"]
    clip = ClipHandle(h)
    assert cload.LoraLoader().load_lora(h, clip, "fox.safetensors", 0.0, 0.0) == (h, clip)
    (m,) = cload.LoraLoaderModelOnly().load_lora_model_only(h, "fox.safetensors", 0.5)
    assert [(p.strength_unet, p.strength_text) for p in m.patches] == [(0.5, 0.0)]
    assert h.patches == ()  # the input handle is untouched


def test_conditioning_nodes_follow_comfy(tiny_handles):
    h = tiny_handles["sd1"]
    (a,) = cc.CLIPTextEncode().encode(ClipHandle(h), "a fox")
    (b,) = cc.CLIPTextEncode().encode(ClipHandle(h), "a dog")
    (comb,) = cc.ConditioningCombine().combine(a, b)
    assert len(comb) == 2 and comb[0][0] is a[0][0] and comb[1][0] is b[0][0]
    (cat,) = cc.ConditioningConcat().concat(a, b)
    assert torch.equal(cat[0][0], torch.cat([a[0][0], b[0][0]], 1))
    (zero,) = cc.ConditioningZeroOut().zero_out(a)
    assert torch.count_nonzero(zero[0][0]) == 0 and torch.count_nonzero(a[0][0]) > 0
    (area,) = cc.ConditioningSetArea().append(a, 64, 32, 8, 16, 0.5)
    assert area[0][1] == {"pooled_output": None, "area": (4, 8, 2, 1), "strength": 0.5, "set_area_to_bounds": False}
    assert "area" not in a[0][1]  # the input's dict is not changed
    (rng,) = cc.ConditioningSetTimestepRange().set_range(a, 0.2, 0.8)
    assert rng[0][1]["start_percent"] == 0.2 and rng[0][1]["end_percent"] == 0.8


def test_combined_identical_conds_average_to_one(tiny_handles):
    """calc_cond_batch averages the active entries: [A, A] gives A's prediction ((o + o) / 2 == o)."""
    h = tiny_handles["sd1"]
    m, clip, _ = parts(h)
    (a,) = cc.CLIPTextEncode().encode(clip, "a fox")
    (neg,) = cc.CLIPTextEncode().encode(clip, "")
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    one = cl.KSampler().sample(m, 1, 2, 5.0, "euler", "normal", a, neg, lat)[0]["samples"]
    two = cl.KSampler().sample(m, 1, 2, 5.0, "euler", "normal", a + a, neg, lat)[0]["samples"]
    full_area = cc.ConditioningSetArea().append(a, 64, 64, 0, 0, 1.0)[0]  # the whole latent: no feathering
    area = cl.KSampler().sample(m, 1, 2, 5.0, "euler", "normal", full_area, neg, lat)[0]["samples"]
    assert torch.equal(one, two)
    assert torch.allclose(one, area, atol=1e-6)
    part = cc.ConditioningSetArea().append(a, 32, 64, 0, 0, 1.0)[0]  # left half + base prompt b
    (b,) = cc.CLIPTextEncode().encode(clip, "a dog")
    mixed = cl.KSampler().sample(m, 1, 2, 5.0, "euler", "normal", b + part, neg, lat)[0]["samples"]
    only_b = cl.KSampler().sample(m, 1, 2, 5.0, "euler", "normal", b, neg, lat)[0]["samples"]
    assert not torch.allclose(mixed, only_b)


def test_timestep_range_turns_entries_off(tiny_handles):
    """An entry whose range excludes every step contributes nothing: cfg 1 then denoises to 0 each step."""
    h = tiny_handles["sd1"]
    m, clip, _ = parts(h)
    (a,) = cc.CLIPTextEncode().encode(clip, "a fox")
    (off,) = cc.ConditioningSetTimestepRange().set_range(a, 0.0, 0.0)
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    out = cl.KSampler().sample(m, 1, 2, 1.0, "euler", "normal", off, a, lat)[0]["samples"]
    assert float(out.abs().max()) < 1e-5  # x - (x / sigma) * sigma: zero up to rounding
    (full,) = cc.ConditioningSetTimestepRange().set_range(a, 0.0, 1.0)
    x = cl.KSampler().sample(m, 1, 2, 1.0, "euler", "normal", full, a, lat)[0]["samples"]
    y = cl.KSampler().sample(m, 1, 2, 1.0, "euler", "normal", a, a, lat)[0]["samples"]
    assert torch.equal(x, y)


def test_sdxl_text_encode_sdxl_sizes_reach_the_unet(tiny_handles):
    h = tiny_handles["sdxl"]
    m, clip, _ = parts(h)
    (c,) = cc.CLIPTextEncodeSDXL().execute(clip, 64, 64, 0, 0, 64, 64, "a fox", "a fox")
    (plain,) = cc.CLIPTextEncode().encode(clip, "a fox")
    assert torch.equal(c[0][0], plain[0][0]) and torch.equal(c[0][1]["pooled_output"], plain[0][1]["pooled_output"])
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    same = cl.KSampler().sample(m, 2, 2, 5.0, "euler", "normal", c, plain, lat)[0]["samples"]
    ref = cl.KSampler().sample(m, 2, 2, 5.0, "euler", "normal", plain, plain, lat)[0]["samples"]
    assert torch.equal(same, ref)  # width/height 64 = the latent's size, ComfyUI's default
    (big,) = cc.CLIPTextEncodeSDXL().execute(clip, 1024, 1024, 0, 0, 1024, 1024, "a fox", "a fox")
    other = cl.KSampler().sample(m, 2, 2, 5.0, "euler", "normal", big, plain, lat)[0]["samples"]
    assert not torch.equal(other, ref)
    long_l = "a fox, " * 40  # two chunks for CLIP-L, one for bigG: bigG gets an empty chunk
    (two,) = cc.CLIPTextEncodeSDXL().execute(clip, 64, 64, 0, 0, 64, 64, "a fox", long_l)
    assert two[0][0].shape[1] == 154


def test_ksampler_advanced_split_equals_one_run(tiny_handles):
    """Steps 0-2 with leftover noise then 2-4 without adding noise == one 4-step run (ComfyUI's two-pass recipe)."""
    h = tiny_handles["sd1"]
    m, clip, _ = parts(h)
    (pos,) = cc.CLIPTextEncode().encode(clip, "a fox")
    (neg,) = cc.CLIPTextEncode().encode(clip, "")
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    adv = cl.KSamplerAdvanced()
    (first,) = adv.sample(m, "enable", 4, 4, 5.0, "euler", "normal", pos, neg, lat, 0, 2, "enable")
    (second,) = adv.sample(m, "disable", 4, 4, 5.0, "euler", "normal", pos, neg, first, 2, 10000, "disable")
    (whole,) = cl.KSampler().sample(m, 4, 4, 5.0, "euler", "normal", pos, neg, lat)
    assert torch.allclose(second["samples"], whole["samples"], atol=1e-5)
    (past,) = adv.sample(m, "enable", 4, 4, 5.0, "euler", "normal", pos, neg, lat, 4, 10000, "disable")
    assert past["samples"] is lat["samples"]  # start past the end: the latent comes back


def test_vae_loader_reads_a_standalone_vae_file(tiny_handles, tmp_path):
    from lora_lab.nodes.model import ckpt_keys

    h = tiny_handles["sd1"]
    sd, left = ckpt_keys.diffusers_to_ldm(h.vae.state_dict(), ckpt_keys.vae_block_pairs(dict(h.vae.config)), "")
    assert not left
    (tmp_path / "models" / "vae").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "models" / "vae" / "my.vae.safetensors")
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        assert "my.vae.safetensors" in cload.VAELoader.INPUT_TYPES()["required"]["vae_name"][0]
        (vae,) = cload.VAELoader().load_vae("my.vae.safetensors")
        a, b = vae.vae.state_dict(), h.vae.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with pytest.raises(Exception, match="VAELoader: input 'vae_name'"):
            cload.VAELoader().load_vae("missing.safetensors")


def test_lora_patches_do_not_leak_between_model_and_clip(lora_dir, tiny_handles):
    """Encoding with CLIP (text LoRA) then sampling with MODEL: the UNet holds MODEL's patches only."""
    h = tiny_handles["sd1"]
    model, clip = cload.LoraLoader().load_lora(h, ClipHandle(h), "fox.safetensors", 0.0, 1.0)
    cc.CLIPTextEncode().encode(clip, "x")
    activate(model)
    base = dict(h.unet.named_parameters())
    fresh = {k: v.clone() for k, v in base.items()}
    restore(h)
    assert all(torch.equal(fresh[k], v) for k, v in h.unet.named_parameters())
