"""Tiled VAE decode / encode (sampling/vae_tiling.py) and ComfyUI's VAEDecodeTiled / VAEEncodeTiled ids.

- The blending is exact: with a per-pixel function the three tiled passes give the untiled result
  (within fp32 rounding), for sizes that leave a short last tile.
- Tiles as large as the image give the untiled decode (within the rounding of the three-pass mean).
- On the demo VAE (trained, tiny widths) tiled decode stays within TOL of the whole-image decode,
  and blended seams (overlap) are closer than hard seams (overlap 0).
- With COMFYUI_DIR: one pass equals comfy.utils.tiled_scale on the same function within 1e-5.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.sampling import vae_tiling as vt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Decode of the demo VAE, values in -1..1 (clamped): mean |tiled - whole| measured 0.126-0.129
# (tile 16 latent cells, overlap 4-8) against 0.164 with hard seams. That VAE's mid-block attention
# sees the whole latent and it was trained on 8x8 latents, so this is a worst case for tiling.
TOL_MEAN = 0.15


def _pointwise(t: torch.Tensor) -> torch.Tensor:
    """A per-pixel 'decoder': 8x nearest upscale of a non-linear per-cell map, 4 -> 3 channels."""
    w = torch.tensor([[0.5, -0.25, 0.125, 1.0], [0.3, 0.2, -0.1, 0.05], [-0.7, 0.1, 0.4, 0.2]])
    y = torch.tanh(torch.einsum("oc,bchw->bohw", w, t))
    return F.interpolate(y, scale_factor=8, mode="nearest")


@pytest.mark.parametrize(("h", "w", "tiles"), [(37, 29, vt.Tiles(16, 16, 4)), (20, 64, vt.Tiles(12, 24, 2)),
                                               (9, 9, vt.Tiles(8, 8, 0))])
def test_blending_is_exact_for_a_pointwise_function(h, w, tiles):
    z = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(h * w))
    full = _pointwise(z)
    tiled = vt.three_passes(z, _pointwise, tiles, 8, 3)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-6)


def test_positions_cover_the_axis_with_the_overlap():
    assert vt.positions(10, 16, 4) == [(0, 10)]
    assert vt.positions(37, 16, 4) == [(0, 16), (12, 16), (24, 13)]  # the last tile is cut, not shifted
    cover = torch.zeros(37)
    for start, n in vt.positions(37, 16, 4):
        cover[start:start + n] += 1
    assert bool((cover >= 1).all())
    assert vt.ramp(8, 3).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 2 / 3, 1 / 3])
    assert vt.ramp(4, 4).tolist() == [1, 1, 1, 1]  # a feather as long as the tile: no ramp (ComfyUI)


def test_bad_tiles_name_the_node_and_input():
    with pytest.raises(NodeInputError, match="overlap"):
        vt.Tiles(8, 8, 8)
    with pytest.raises(NodeInputError, match="VAEDecodeTiled.*tile_size"):
        vt.from_node(32, 0, 8, "VAEDecodeTiled")
    assert vt.from_node(512, 256, 8, "VAEDecodeTiled") == vt.Tiles(64, 64, 16)  # overlap cut to tile / 4


@pytest.fixture(scope="module")
def demo_vae(tmp_path_factory):
    from lora_lab.nodes.demo import demo
    from lora_lab.nodes.model.checkpoint import load_single_file

    return load_single_file(demo.ensure_demo_checkpoint(tmp_path_factory.mktemp("ckpt"))).vae


@pytest.fixture(scope="module")
def demo_picture():
    """12 demo pictures in a 3 x 4 grid: [1, 3, 192, 256] in -1..1."""
    from lora_lab.nodes.demo import shapes as D

    rows = [torch.cat([D.to_tensor(D.sample(r * 4 + c, 7)[0]) for c in range(4)], dim=-1) for r in range(3)]
    return torch.cat(rows, dim=-2)[None]


@torch.no_grad()
def test_tiled_decode_is_close_to_the_whole_decode(demo_vae, demo_picture):
    z = vt.encode(demo_vae, demo_picture)
    full = vt.decode(demo_vae, z).clamp(-1, 1)
    err = {ov: (vt.decode(demo_vae, z, vt.Tiles(16, 16, ov)).clamp(-1, 1) - full).abs().mean().item()
           for ov in (0, 4)}
    assert err[4] <= TOL_MEAN, err
    assert err[4] < err[0], f"blended seams should be closer than hard ones: {err}"
    big = vt.decode(demo_vae, z, vt.Tiles(64, 64, 4)).clamp(-1, 1)  # every pass fits in one tile
    torch.testing.assert_close(big, full, rtol=0, atol=1e-6)  # (a + a + a) / 3: a rounding from a


@torch.no_grad()
def test_tiled_encode_is_closer_with_overlap(demo_vae, demo_picture):
    z = vt.encode(demo_vae, demo_picture)
    err = {ov: (vt.encode(demo_vae, demo_picture, vt.Tiles(128, 128, ov, "VAEEncodeTiled")) - z).abs().mean()
           for ov in (0, 32)}
    assert err[32] < err[0]
    assert err[32] <= 0.15 * z.abs().mean()  # measured 0.11 of the latents' mean magnitude


def test_core_tiled_nodes_run_with_comfyui_inputs(demo_vae, demo_picture):
    from lora_lab.nodes.defs.core_latent import NODE_CLASS_MAPPINGS as CORE
    from lora_lab.nodes.model.runner_types import VaeHandle

    vae = VaeHandle(demo_vae, "demo")
    for name in ("VAEDecodeTiled", "VAEEncodeTiled"):
        req = CORE[name].INPUT_TYPES()["required"]
        assert list(req)[2:] == ["tile_size", "overlap", "temporal_size", "temporal_overlap"]
    pixels = ((demo_picture[:, :, :128, :128] + 1) / 2).movedim(1, -1)
    (latent,) = CORE["VAEEncodeTiled"]().encode(vae, pixels, 64, 0)
    assert latent["samples"].shape == (1, 4, 16, 16)
    (image,) = CORE["VAEDecodeTiled"]().decode(vae, latent, 64, 32)
    assert image.shape == (1, 128, 128, 3) and 0 <= image.min() and image.max() <= 1


def test_one_pass_equals_comfyui_tiled_scale():
    from comfy_env import comfy_modules_or_skip

    (utils,) = comfy_modules_or_skip("comfy.utils", needs="comfy/utils.py")
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))

    def fn(t):  # a local, non-pointwise decoder: the tiles genuinely differ from the whole
        return F.interpolate(torch.tanh(conv(t)), scale_factor=8, mode="bilinear")

    z = torch.randn(1, 4, 37, 29, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vt.tiled_pass(z, fn, 16, 12, 4, 8, 3)
        theirs = utils.tiled_scale(z, fn, tile_x=12, tile_y=16, overlap=4, upscale_amount=8, out_channels=3)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
