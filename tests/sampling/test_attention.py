"""Attention slicing (sampling/attention.py): the same attention, a chunk of queries at a time.

Sliced equals diffusers' AttnProcessor2_0 within fp32 rounding on UNet (self + cross attention,
several heads), VAE (4-D input, group norm) and a masked attention layer; the processors are put
back after the block, also when it raises; Sample honours LORA_LAB_ATTENTION_SLICE / LORA_LAB_VAE_TILE.
"""
from __future__ import annotations

import pytest
import torch

from lora_lab.nodes.sampling.attention import SlicedSDPA, sliced_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATOL = 1e-5  # fp32 rounding of the chunked softmax sums; measured <= 2.2e-6 on the tiny UNet


def _unet_out(unet, x, t, ctx, added=None):
    return unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added, return_dict=False)[0]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@torch.no_grad()
def test_sliced_unet_equals_unsliced(tiny_handles, family):
    h = tiny_handles[family]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 77, h.unet.config.cross_attention_dim, generator=g)
    added = None
    if family == "sdxl":
        added = {"text_embeds": torch.randn(2, 64, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    t = torch.tensor([700.0, 700.0])
    before = dict(h.unet.attn_processors)
    ref = _unet_out(h.unet, x, t, ctx, added)
    with sliced_attention(h.unet, 7):  # 7 does not divide the 256 / 64 / 16 query counts
        assert {type(p) for p in h.unet.attn_processors.values()} == {SlicedSDPA}
        sliced = _unet_out(h.unet, x, t, ctx, added)
    assert h.unet.attn_processors == before  # the same processor objects are back
    torch.testing.assert_close(sliced, ref, rtol=0, atol=ATOL)
    assert not torch.equal(sliced, torch.zeros_like(sliced))


@torch.no_grad()
def test_sliced_vae_equals_unsliced(tiny_handles):
    vae = tiny_handles["sd1"].vae
    z = torch.randn(1, 4, 12, 10, generator=torch.Generator().manual_seed(4))
    ref = vae.decode(z, return_dict=False)[0]
    with sliced_attention(vae, 16):
        sliced = vae.decode(z, return_dict=False)[0]
    torch.testing.assert_close(sliced, ref, rtol=0, atol=ATOL)


@torch.no_grad()
def test_masked_attention_equals_sdpa_processor():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, processor=AttnProcessor2_0())
    x, ctx = torch.randn(2, 19, 32), torch.randn(2, 11, 24)
    mask = torch.ones(2, 11)
    mask[1, 7:] = 0  # the second sample's last keys padded out
    mask = (1 - mask)[:, None, :] * -10000.0  # [B, 1, keys], additive, as diffusers passes it
    ref = attn(x, ctx, attention_mask=mask)
    attn.set_processor(SlicedSDPA(5))
    torch.testing.assert_close(attn(x, ctx, attention_mask=mask), ref, rtol=0, atol=ATOL)


def test_processors_are_restored_when_the_block_raises(tiny_handles):
    unet = tiny_handles["sd1"].unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), sliced_attention(unet, 4):
        raise RuntimeError("boom")
    assert unet.attn_processors == before
    with sliced_attention(unet, 0):  # 0: off, nothing swapped
        assert unet.attn_processors == before
    with pytest.raises(ValueError, match="query_chunk"):
        SlicedSDPA(0)


def test_sample_node_memory_options(tiny_handles, monkeypatch):
    from lora_lab.nodes.defs.node_defs import LoraLabSampler
    from lora_lab.nodes.io.errors import LoraLabError

    args = (tiny_handles["sd1"], "a fox", "", 3, 2, 5.0, "euler", "normal", 64, 64, 1)
    ref, _ = LoraLabSampler().sample(*args)
    monkeypatch.setenv("LORA_LAB_ATTENTION_SLICE", "5")
    lean, _ = LoraLabSampler().sample(*args)
    torch.testing.assert_close(lean, ref, rtol=0, atol=1e-4)
    monkeypatch.setenv("LORA_LAB_VAE_TILE", "128")  # each of the 3 tile shapes (>= 64 px) holds the image
    tiled, _ = LoraLabSampler().sample(*args)
    torch.testing.assert_close(tiled, ref, rtol=0, atol=1e-4)
    monkeypatch.setenv("LORA_LAB_VAE_TILE", "64")  # tiles of 8 x 8, 4 x 16, 16 x 4 latent cells
    tiled, _ = LoraLabSampler().sample(*args)
    assert tiled.shape == ref.shape and 0 < (tiled - ref).abs().max() < 1
    monkeypatch.setenv("LORA_LAB_ATTENTION_SLICE", "-1")
    with pytest.raises(LoraLabError, match="LORA_LAB_ATTENTION_SLICE"):
        LoraLabSampler().sample(*args)
    monkeypatch.setenv("LORA_LAB_ATTENTION_SLICE", "0")
    monkeypatch.setenv("LORA_LAB_VAE_TILE", "32")
    with pytest.raises(LoraLabError, match="LORA_LAB_VAE_TILE=32"):
        LoraLabSampler().sample(*args)
