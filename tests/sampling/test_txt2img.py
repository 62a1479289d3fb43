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
