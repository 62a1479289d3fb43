"""OFT, BOFT and GLoRA (LyCORIS): each against its formula written out independently, the
strength rules (0 is the base, restore is bit-exact), files parsed from their key names,
and, when COMFYUI_DIR points at a ComfyUI checkout, against ComfyUI's own weight adapters."""
from __future__ import annotations


import pytest
import torch
from conftest import make_handle

from lora_lab.nodes.lora import patcher
from lora_lab.nodes.lora.adapters_ortho import boft_weight, glora_delta, oft_weight
from lora_lab.nodes.lora.lora_formats import parse_state_dict
from lora_lab.nodes.lora.patcher import LoraPatch

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
KEY = "lora_unet_" + LAYER.replace(".", "_")


@pytest.fixture(scope="module")
def sd1():
    return make_handle("sd1", seed=51)


def _cayley_explicit(b):
    q = b - b.T
    eye = torch.eye(b.shape[0], dtype=torch.float64)
    return torch.linalg.solve((eye - q).T, (eye + q).T).T  # (I + Q)(I - Q)^-1


def test_oft_is_block_diagonal_cayley_rotation():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)
    blocks = torch.randn(2, 4, 4, generator=g, dtype=torch.float64) * 0.1
    r = torch.block_diag(*[_cayley_explicit(b) for b in blocks])
    torch.testing.assert_close(oft_weight(w, blocks, None, None, 1.0), r.T @ w)
    half = oft_weight(w, blocks, None, None, 0.5)
    torch.testing.assert_close(half, w + 0.5 * (r.T - torch.eye(8, dtype=torch.float64)) @ w)
    assert torch.equal(oft_weight(w, blocks, None, None, 0.0), w)
    # the constraint caps ‖Q‖: a tiny alpha keeps the rotation near I
    near = oft_weight(w, blocks, 1e-6, None, 1.0)
    assert (near - w).abs().max() < 1e-5
    rescale = torch.rand(8, 1, generator=g, dtype=torch.float64) + 0.5
    torch.testing.assert_close(oft_weight(w, blocks, None, rescale, 1.0), rescale * (r.T @ w))


def test_boft_one_stage_is_the_butterfly_permuted_rotation():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 3, generator=g, dtype=torch.float64)
    blocks = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64) * 0.1
    half = 2
    perm = [grp * 4 + j + h * half for grp in range(2) for j in range(half) for h in range(2)]  # pairs (j, j+half)
    p = torch.eye(8, dtype=torch.float64)[perm]
    r = torch.block_diag(*[_cayley_explicit(b) for b in blocks[0]])
    torch.testing.assert_close(boft_weight(w, blocks, None, None, 1.0), p.T @ r @ p @ w)


def test_boft_stages_stay_orthogonal():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 6, generator=g, dtype=torch.float64)
    blocks = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64) * 0.2
    out = boft_weight(w, blocks, None, None, 1.0)
    torch.testing.assert_close(out.T @ out, w.T @ w)  # a row rotation keeps the column Gram matrix
    assert not torch.allclose(out, w)
    assert torch.equal(boft_weight(w, blocks, None, None, 0.0), w)


@pytest.mark.parametrize("conv", [False, True])
def test_glora_formula(conv):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 5, 3, 3, generator=g) if conv else torch.randn(6, 5, generator=g)
    r = 2
    t = {"a1": torch.randn(5, r, generator=g), "a2": torch.randn(r, 5, generator=g),
         "b1": torch.randn(6, r, generator=g), "b2": torch.randn(r, 5 * (9 if conv else 1), generator=g)}
    wa = torch.einsum("oi...,ij->oj...", w, t["a1"])
    want = (torch.einsum("oi...,ij->oj...", wa, t["a2"]) + (t["b1"] @ t["b2"]).reshape(w.shape)) * (1.5 / r)
    torch.testing.assert_close(glora_delta(w, t, 1.5), want)


def _files(mod):
    out, inn = mod.weight.shape
    g = torch.Generator().manual_seed(9)
    return {
        "oft": {f"{KEY}.oft_blocks": torch.randn(out // 4, 4, 4, generator=g) * 0.1, f"{KEY}.alpha": torch.tensor(0.0)},
        "boft": {f"{KEY}.oft_blocks": torch.randn(2, out // 4, 4, 4, generator=g) * 0.1},
        "glora": {f"{KEY}.a1.weight": torch.randn(inn, 2, generator=g) * 0.1,
                  f"{KEY}.a2.weight": torch.randn(2, inn, generator=g) * 0.1,
                  f"{KEY}.b1.weight": torch.randn(out, 2, generator=g) * 0.1,
                  f"{KEY}.b2.weight": torch.randn(2, inn, generator=g) * 0.1, f"{KEY}.alpha": torch.tensor(2.0)},
    }


@pytest.mark.parametrize("kind", ["oft", "boft", "glora"])
def test_files_patch_restore_and_strength_zero(sd1, kind):
    mod = dict(sd1.unet.named_modules())[LAYER]
    w0 = mod.weight.detach().clone()
    raw = parse_state_dict(_files(mod)[kind], name=kind)
    assert [a.kind for a in raw.adapters.values()] == [kind] and not raw.unknown_keys
    for s in (1.0, 0.0):
        p = sd1.with_patches((LoraPatch(kind, raw, s, s),))
        patcher.activate(p)
        got = mod.weight.detach().clone()
        patcher.restore(p)
        assert torch.equal(mod.weight, w0)  # restore is bit-exact
        if s == 0.0:
            assert torch.equal(got, w0)
        else:
            a = next(iter(raw.adapters.values()))
            from lora_lab.nodes.lora.adapters_ortho import transformed_weight

            torch.testing.assert_close(got, transformed_weight(w0.float(), kind, a.tensors, a.alpha, 1.0))
            assert not torch.equal(got, w0)


def _comfy():
    from comfy_env import comfy_modules_or_skip

    return comfy_modules_or_skip("comfy.weight_adapter", needs="comfy/weight_adapter/oft.py")[0]


@pytest.mark.parametrize("kind", ["oft", "boft", "glora"])
def test_parity_with_comfyui(sd1, kind):
    wa = _comfy()
    mod = dict(sd1.unet.named_modules())[LAYER]
    sd = _files(mod)[kind]
    cls = {"oft": wa.oft.OFTAdapter, "boft": wa.boft.BOFTAdapter, "glora": wa.glora.GLoRAAdapter}[kind]
    alpha = float(sd[f"{KEY}.alpha"]) if f"{KEY}.alpha" in sd else None
    adapter = cls.load(KEY, sd, alpha if kind == "glora" else (alpha or 0.0), None)
    w0 = mod.weight.detach().float().clone()
    theirs = adapter.calculate_weight(w0.clone(), LAYER, 1.0, 1.0, None, lambda x: x)
    a = next(iter(parse_state_dict(sd, name=kind).adapters.values()))
    from lora_lab.nodes.lora.adapters_ortho import transformed_weight

    torch.testing.assert_close(transformed_weight(w0, kind, a.tensors, a.alpha, 1.0), theirs, atol=1e-6, rtol=1e-5)
