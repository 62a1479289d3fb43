"""Sample: seeded, deterministic text to image on every family; the IMAGE convention; errors."""
from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import FAMILIES

from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.defs.node_defs import LoraLabSampler
from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

BASE = dict(negative_prompt="blurry", steps=3, cfg=6.0, sampler_name="euler_ancestral", scheduler="karras",
            width=64, height=64)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_image(family, tiny_handles):
    h = tiny_handles[family]
    a = generate(h, SampleSettings("a (red:1.3) fox", seed=5, batch_size=2, **BASE))
    b = generate(h, SampleSettings("a (red:1.3) fox", seed=5, batch_size=2, **BASE))
    c = generate(h, SampleSettings("a (red:1.3) fox", seed=6, batch_size=2, **BASE))
    assert a.shape == (2, 64, 64, 3) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # the batch draws its noise at once: items differ


def test_prompt_and_settings_change_the_image(tiny_handles):
    h = tiny_handles["sd1"]
    ref = generate(h, SampleSettings("a fox", seed=1, **BASE))
    for change in (dict(prompt="a dog"), dict(cfg=2.0), dict(sampler_name="dpmpp_2m"), dict(scheduler="normal")):
        kw = dict(BASE, prompt="a fox", seed=1)
        kw.update(change)
        assert not torch.equal(generate(h, SampleSettings(**kw)), ref), change


def test_non_square_size_and_latent_layout(tiny_handles):
    img = generate(tiny_handles["sdxl"], SampleSettings("x", seed=0, **dict(BASE, width=96, height=64)))
    assert img.shape == (1, 64, 96, 3)


@pytest.mark.parametrize("field,value", [("sampler_name", "nope"), ("scheduler", "nope"), ("width", 65),
                                         ("steps", 0), ("batch_size", 0)])
def test_bad_settings_name_node_input_value(field, value):
    kw = dict(BASE, prompt="x", seed=0)
    kw[field] = value
    with pytest.raises(NodeInputError, match=f"LoraLabSampler: input '{field}'"):
        SampleSettings(**kw)


def test_sampler_node_returns_comfy_image(tiny_handles):
    img, latent = LoraLabSampler().sample(tiny_handles["sd1"], "a fox", "", 3, 2, 5.0, "euler", "normal", 64, 64, 1)
    assert img.shape == (1, 64, 64, 3)
    assert latent["samples"].shape == (1, 4, 8, 8)  # ComfyUI's LATENT: raw VAE latents


def test_demo_checkpoint_is_deterministic(tmp_path):
    from lora_lab.nodes.demo.demo import ensure_demo_checkpoint

    a = ensure_demo_checkpoint(tmp_path / "a")
    b = ensure_demo_checkpoint(tmp_path / "b")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert digest[0] == digest[1]
    assert ensure_demo_checkpoint(tmp_path / "a") == a  # reused, not rewritten
    with paths.standalone_dirs(tmp_path / "m", tmp_path / "o"):
        assert ensure_demo_checkpoint().parent == (tmp_path / "m" / "checkpoints")


def test_sdxl_size_conditioning_stays_fp32(tiny_handles):
    """SDXL's (height, width, crop, target) ids go to the UNet in fp32 whatever its dtype: in
    bf16 a 2056-pixel width would become 2048 (the UNet embeds them in fp32 anyway)."""
    from lora_lab.nodes.sampling.txt2img import _conditioning

    c = _conditioning(tiny_handles["sdxl"], "a lighthouse", None, 2056, 1024, "cpu", torch.bfloat16)
    assert c.context.dtype == torch.bfloat16 and c.added["text_embeds"].dtype == torch.bfloat16
    ids = c.added["time_ids"]
    assert ids.dtype == torch.float32 and ids.tolist() == [[1024.0, 2056.0, 0.0, 0.0, 1024.0, 2056.0]]


# -- cond and uncond in one batch ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_guidance_equals_two_calls(family, tiny_handles, monkeypatch):
    """One UNet call on [x; x] with [cond; uncond] per step gives the two-call result within fp32
    rounding, and really is one call per step (two without batching)."""
    h = tiny_handles[family]
    calls = []
    real_forward = type(h.unet).forward

    def counting_forward(self, sample, *a, **kw):
        calls.append(sample.shape[0])
        return real_forward(self, sample, *a, **kw)

    monkeypatch.setattr(type(h.unet), "forward", counting_forward)
    kw = dict(BASE, prompt="a (red:1.3) fox", seed=3, batch_size=2)
    one = generate(h, SampleSettings(**kw))
    assert calls == [4] * BASE["steps"]
    calls.clear()
    two = generate(h, SampleSettings(**kw, batch_cfg=False))
    assert calls == [2] * (2 * BASE["steps"])
    assert not torch.equal(one, torch.zeros_like(one))
    torch.testing.assert_close(one, two, rtol=0, atol=1e-4)


def test_batched_guidance_with_prompts_of_different_lengths(tiny_handles):
    """A 154-token prompt against a 77-token negative: both repeated to 154 tokens (ComfyUI's
    rule), the same attention, so the same image within rounding."""
    from lora_lab.nodes.sampling.txt2img import _conditioning, concat_conds

    h = tiny_handles["sd1"]
    long_prompt = ", ".join(["a red fox in the snow"] * 20)
    c = _conditioning(h, long_prompt, None, 64, 64, "cpu", torch.float32)
    u = _conditioning(h, "blurry", None, 64, 64, "cpu", torch.float32)
    assert c.context.shape[1] == 154 and u.context.shape[1] == 77
    both = concat_conds(c, u)
    assert both.context.shape[:2] == (2, 154)
    assert torch.equal(both.context[1, 77:], u.context[0])
    kw = dict(BASE, prompt=long_prompt, seed=2)
    torch.testing.assert_close(generate(h, SampleSettings(**kw)), generate(h, SampleSettings(**kw, batch_cfg=False)),
                               rtol=0, atol=1e-4)


def test_concat_conds_declines_very_long_common_lengths(tiny_handles):
    from lora_lab.nodes.sampling.txt2img import _Cond, concat_conds

    a = _Cond(torch.zeros(1, 77 * 7, 8), None)
    b = _Cond(torch.zeros(1, 77 * 2, 8), None)
    assert concat_conds(a, b) is None  # lcm 77*14 tokens: two calls instead
