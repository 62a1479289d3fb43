"""The memory-lean options on the runner's core nodes (defs/lean_memory.py): LORA_LAB_ATTENTION_SLICE
reaches KSampler / KSamplerAdvanced and the VAE nodes, LORA_LAB_VAE_TILE makes VAEDecode / VAEEncode /
VAEEncodeForInpaint tile as the Tiled nodes do; and a whole-image VAE pass that runs out of GPU
memory is retried in ComfyUI's fallback tiles, with a warning the user sees."""
from __future__ import annotations

import pytest
import torch

from lora_lab.nodes.defs import core_conditioning as cc
from lora_lab.nodes.defs import core_latent as cl
from lora_lab.nodes.io import notices
from lora_lab.nodes.io.errors import LoraLabError
from lora_lab.nodes.model.runner_types import ClipHandle, VaeHandle
from lora_lab.nodes.sampling import attention, vae_tiling

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def counted_slices(monkeypatch):
    calls = []
    real = attention.SlicedSDPA.__call__

    def spy(self, *a, **k):
        calls.append(self.query_chunk)
        return real(self, *a, **k)

    monkeypatch.setattr(attention.SlicedSDPA, "__call__", spy)
    return calls


def _ksampler(h, advanced=False):
    clip = ClipHandle(h)
    (pos,) = cc.CLIPTextEncode().encode(clip, "a fox")
    (neg,) = cc.CLIPTextEncode().encode(clip, "")
    (lat,) = cl.EmptyLatentImage().generate(64, 64, 1)
    if advanced:
        return cl.KSamplerAdvanced().sample(h, "enable", 3, 2, 5.0, "euler", "normal", pos, neg, lat, 0, 10000,
                                            "disable")[0]["samples"]
    return cl.KSampler().sample(h, 3, 2, 5.0, "euler", "normal", pos, neg, lat)[0]["samples"]


@pytest.mark.parametrize("advanced", [False, True])
def test_ksampler_slices_attention_from_the_environment(tiny_handles, monkeypatch, counted_slices, advanced):
    h = tiny_handles["sd1"]
    before = dict(h.unet.attn_processors)
    ref = _ksampler(h, advanced)
    assert counted_slices == []
    monkeypatch.setenv("LORA_LAB_ATTENTION_SLICE", "5")
    lean = _ksampler(h, advanced)
    assert counted_slices and set(counted_slices) == {5}
    # fp32 rounding of the sliced softmax, grown by cfg and by sigma_max over the steps (raw latents)
    torch.testing.assert_close(lean, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    assert not torch.equal(lean, ref)  # the slices did run
    assert h.unet.attn_processors == before  # put back after the node
    monkeypatch.setenv("LORA_LAB_ATTENTION_SLICE", "five")
    with pytest.raises(LoraLabError, match="LORA_LAB_ATTENTION_SLICE='five'"):
        _ksampler(h, advanced)


def _image(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, size, size, 3, generator=g)


def test_vae_nodes_tile_from_the_environment(tiny_handles, monkeypatch):
    vae = VaeHandle(tiny_handles["sd1"].vae)
    img = _image()
    (lat,) = cl.VAEEncode().encode(vae, img)
    (whole,) = cl.VAEDecode().decode(vae, lat)
    inpaint_whole = cl.VAEEncodeForInpaint().encode(vae, img, torch.zeros(64, 64))[0]["samples"]
    monkeypatch.setenv("LORA_LAB_VAE_TILE", "64")
    (dec,) = cl.VAEDecode().decode(vae, lat)
    (dec_ref,) = cl.VAEDecodeTiled().decode(vae, lat, 64, 64)
    assert torch.equal(dec, dec_ref) and not torch.equal(dec, whole)
    (enc,) = cl.VAEEncode().encode(vae, img)
    (enc_ref,) = cl.VAEEncodeTiled().encode(vae, img, 64, 64)
    assert torch.equal(enc["samples"], enc_ref["samples"]) and not torch.equal(enc["samples"], lat["samples"])
    inpaint = cl.VAEEncodeForInpaint().encode(vae, img, torch.zeros(64, 64))[0]["samples"]
    assert torch.equal(inpaint, enc["samples"]) and not torch.equal(inpaint, inpaint_whole)  # empty mask
    monkeypatch.setenv("LORA_LAB_VAE_TILE", "32")
    with pytest.raises(LoraLabError, match="LORA_LAB_VAE_TILE=32"):
        cl.VAEDecode().decode(vae, lat)


def test_vae_nodes_slice_attention(tiny_handles, monkeypatch, counted_slices):
    vae = VaeHandle(tiny_handles["sd1"].vae)
    (lat,) = cl.VAEEncode().encode(vae, _image())
    (whole,) = cl.VAEDecode().decode(vae, lat)
    monkeypatch.setenv("LORA_LAB_ATTENTION_SLICE", "7")
    (lean,) = cl.VAEDecode().decode(vae, lat)
    assert counted_slices and set(counted_slices) == {7}
    torch.testing.assert_close(lean, whole, rtol=0, atol=1e-5)


def _oom_above(module, method, cells, monkeypatch):
    """module.<method> raises CUDA's out-of-memory error for inputs of more than cells x cells."""
    real = getattr(module, method)
    seen = []

    def maybe_oom(x, *a, **k):
        seen.append(tuple(x.shape[-2:]))
        if x.shape[-2] * x.shape[-1] > cells * cells:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(x, *a, **k)

    monkeypatch.setattr(module, method, maybe_oom)
    return seen


def test_out_of_memory_decode_falls_back_to_tiles(tiny_handles, monkeypatch):
    vae = VaeHandle(tiny_handles["sd1"].vae)
    (lat,) = cl.VAEEncode().encode(vae, _image(1, 96))  # 12 x 12 latent cells
    fallback = vae_tiling.Tiles(8, 8, 2, "VAEDecode")
    monkeypatch.setattr(vae_tiling, "OOM_DECODE_TILES", fallback)
    want = vae_tiling.decode(vae.vae, lat["samples"], fallback)
    seen = _oom_above(vae.vae, "decode", 8, monkeypatch)
    with notices.collect() as notes:
        (img,) = cl.VAEDecode().decode(vae, lat)
    assert seen[0] == (12, 12) and all(s[0] * s[1] <= 64 for s in seen[1:]) and len(seen) > 2
    assert torch.equal(img, torch.clamp((want + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1))
    assert len(notes) == 1 and "ran out of memory decoding" in notes[0] and "tiles (8 x 8, overlap 2)" in notes[0]


def test_out_of_memory_encode_falls_back_to_tiles(tiny_handles, monkeypatch):
    vae = VaeHandle(tiny_handles["sd1"].vae)
    img = _image(2, 96)
    fallback = vae_tiling.Tiles(64, 64, 16, "VAEEncode")
    monkeypatch.setattr(vae_tiling, "OOM_ENCODE_TILES", fallback)
    want = vae_tiling.encode(vae.vae, img.movedim(-1, 1) * 2.0 - 1.0, fallback)
    seen = _oom_above(vae.vae, "encode", 64, monkeypatch)
    with notices.collect() as notes:
        (lat,) = cl.VAEEncode().encode(vae, img)
    assert seen[0] == (96, 96) and all(s[0] * s[1] <= 64 * 64 for s in seen[1:])
    assert torch.equal(lat["samples"], want)
    assert len(notes) == 1 and "encoding" in notes[0]


def test_other_errors_are_not_retried(tiny_handles, monkeypatch):
    vae = VaeHandle(tiny_handles["sd1"].vae)
    (lat,) = cl.VAEEncode().encode(vae, _image())

    def broken(*a, **k):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(vae.vae, "decode", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        cl.VAEDecode().decode(vae, lat)
