"""bislerp latent resizing (LatentUpscale / LatentUpscaleBy's "bislerp"): the formula on hand-made
vectors, and bit for bit against ComfyUI's comfy.utils.bislerp when COMFYUI_DIR is set."""
from __future__ import annotations

import math

import pytest
import torch
from lora_lab.nodes.defs import core_latent as cl
from lora_lab.nodes.sampling.bislerp import bilinear_taps, bislerp


def test_taps_are_bilinear_positions():
    ratio, first, second = bilinear_taps(2, 4)  # sources at 0, 0.25, 0.75, 1 (edges clamped)
    assert ratio.tolist() == [0.0, 0.25, 0.75, 0.0]
    assert first.tolist() == [0, 0, 0, 1] and second.tolist() == [1, 1, 1, 1]


def test_orthogonal_neighbours_slerp_direction_and_lerp_length():
    a, b = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 2.0, 0, 0])
    x = torch.stack([a, b], dim=-1).reshape(1, 4, 1, 2)  # [n, c, h=1, w=2]
    out = bislerp(x, 4, 1)[0, :, 0].T  # [4 pixels, 4 channels]
    for j, r in enumerate((0.0, 0.25, 0.75)):
        length = (1 - r) * 1.0 + r * 2.0
        want = torch.tensor([math.cos(r * math.pi / 2), math.sin(r * math.pi / 2), 0, 0]) * length
        assert torch.allclose(out[j], want, atol=1e-6), (j, out[j], want)
    assert torch.equal(out[3], b)


def test_same_and_opposite_directions_and_zero_vectors():
    a = torch.tensor([1.0, 2.0, 0, 0])
    for b, want in ((3 * a, lambda r: a * (1 - r) + 3 * a * r),   # same direction: first at r=0, length lerp
                    (-a, lambda r: a * (1 - r) - a * r),           # opposite: a linear blend
                    # no direction (cos taken as 0): a's share is sin((1-r)pi/2), the length (1-r)|a|
                    (torch.zeros(4), lambda r: a * (1 - r) * math.cos(r * math.pi / 2))):
        x = torch.stack([a, b], dim=-1).reshape(1, 4, 1, 2)
        out = bislerp(x, 4, 1)[0, :, 0].T
        assert torch.isfinite(out).all()
        if b.abs().sum() and torch.dot(a, b) > 0:
            assert torch.equal(out[1], a)  # cos > 1 - 1e-5: ComfyUI keeps the first vector
        else:
            assert torch.allclose(out[1], want(0.25), atol=1e-6), (b, out[1])


def test_same_size_is_identity_and_dtype_kept():
    x = torch.randn((2, 4, 5, 7), generator=torch.Generator().manual_seed(0)).half()
    out = bislerp(x, 7, 5)
    assert out.dtype == torch.float16 and out.shape == x.shape
    assert torch.allclose(out.float(), x.float(), atol=2e-3)


def test_latent_upscale_nodes_take_bislerp():
    lat = {"samples": torch.randn((1, 4, 8, 6), generator=torch.Generator().manual_seed(1)), "batch_index": [0]}
    (by,) = cl.LatentUpscaleBy().upscale(lat, "bislerp", 1.5)
    assert by["samples"].shape == (1, 4, 12, 9) and by["batch_index"] == [0]
    (to,) = cl.LatentUpscale().upscale(lat, "bislerp", 96, 128, "disabled")
    assert to["samples"].shape == (1, 4, 16, 12)
    assert torch.equal(to["samples"], bislerp(lat["samples"], 12, 16))


def _comfy_utils():
    from comfy_env import comfy_modules_or_skip

    return comfy_modules_or_skip("comfy.utils", needs="comfy/utils.py")[0]


@pytest.mark.parametrize("size", [(13, 5), (18, 14), (9, 7), (4, 3), (27, 21)])
def test_bislerp_matches_comfyui(size):
    utils = _comfy_utils()
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 7, 9), generator=g)
    x[0, :, 2, 3] = 0.0  # a zero vector
    x[1, :, 4, 4] = -x[1, :, 4, 5]  # opposite neighbours
    x[1, :, 5, 1] = 2 * x[1, :, 5, 2]  # same direction
    w, h = size
    theirs = utils.common_upscale(x, w, h, "bislerp", "disabled")
    ours = cl.LatentUpscale().upscale({"samples": x}, "bislerp", w * 8, h * 8, "disabled")[0]["samples"] \
        if min(w, h) >= 8 else bislerp(x, w, h)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs), float((ours - theirs).abs().max())
