"""LoRA formats and patching: parity with diffusers, formulas, exact restore, switching."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import make_handle
from lora_factory import ATTN, FF, kohya, peft_unet, te_layers, unet_layers

from lora_lab.nodes.lora import adapters, patcher
from lora_lab.nodes.lora.lora_formats import WrongFamilyError, parse_state_dict
from lora_lab.nodes.lora.patcher import LoraPatch


def _snapshot(h):
    return {f"{i}.{k}": v.clone() for i, m in enumerate((h.unet, *h.text_encoders)) for k, v in m.state_dict().items()}


def _bits_equal(a: dict, b: dict) -> list:
    return [k for k in a if not torch.equal(a[k], b[k])]


def _patch(sd, su=1.0, st=1.0, name="t", bw=None, metadata=None):
    return LoraPatch(name, parse_state_dict(sd, metadata, name=name), su, st, bw)


@pytest.fixture(scope="module")
def sd1():
    return make_handle("sd1", seed=11)


@pytest.fixture(scope="module")
def sdxl():
    return make_handle("sdxl", seed=12)


def _diffusers_pipe(h):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    unet, vae, *tes = (copy.deepcopy(m) for m in (h.unet, h.vae, *h.text_encoders))
    if h.family == "sdxl":
        return StableDiffusionXLPipeline(vae=vae, text_encoder=tes[0], text_encoder_2=tes[1], tokenizer=h.tokenizers[0],
                                         tokenizer_2=h.tokenizers[1], unet=unet, scheduler=EulerDiscreteScheduler(steps_offset=1))
    return StableDiffusionPipeline(vae=vae, text_encoder=tes[0], tokenizer=h.tokenizers[0], unet=unet,
                                   scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _fused_weights(model) -> dict:
    """Weights of a diffusers/PEFT model after fuse_lora, named as in the plain model."""
    out = {}
    for k, v in model.state_dict().items():
        if "lora_" in k:
            continue
        k = k.replace(".base_layer", "")
        out[k.removeprefix("text_model.") if not hasattr(model, "text_model") else k] = v
    return out


def _lora_layers(model) -> set:
    """Module names that PEFT put a LoRA on (what diffusers actually loaded)."""
    return {k.split(".lora_A")[0] for k in model.state_dict() if ".lora_A." in k}


@pytest.mark.parametrize("family,ldm_names", [("sd1", False), ("sdxl", True)])
def test_kohya_parity_with_diffusers(family, ldm_names, sd1, sdxl):
    pytest.importorskip("peft")
    h = {"sd1": sd1, "sdxl": sdxl}[family]
    sd = kohya(h, rank=4, alpha=2.0, ldm_names=ldm_names, unet_suffixes=ATTN + FF + ("proj_in",))
    pipe = _diffusers_pipe(h)
    pipe.load_lora_weights(dict(sd), adapter_name="a")
    te_models = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    te_loaded = [_lora_layers(m) for m in te_models]
    pipe.fuse_lora(components=["unet"], lora_scale=0.7)
    pipe.fuse_lora(components=["text_encoder", "text_encoder_2"][: len(te_models)], lora_scale=0.5)

    patched = h.with_patches((_patch(sd, 0.7, 0.5),))
    patcher.activate(patched)
    try:
        ours = h.unet.state_dict()
        theirs = _fused_weights(pipe.unet)
        assert len(_lora_layers(pipe.unet)) > 0
        for k, v in ours.items():
            torch.testing.assert_close(v, theirs[k], rtol=1e-5, atol=1e-6, msg=k)
        # diffusers 0.42 + transformers 5 drops kohya text-encoder attention keys; compare the
        # layers it did load, and check ours changed the others.
        for model, theirs_te, loaded in zip(h.text_encoders, te_models, te_loaded):
            assert loaded, "diffusers loaded no text-encoder LoRA layer"
            t = _fused_weights(theirs_te)
            for k, v in model.state_dict().items():
                if k.rsplit(".", 1)[0] in loaded:
                    torch.testing.assert_close(v, t[k], rtol=1e-5, atol=1e-6, msg=k)
    finally:
        patcher.restore(patched)


def test_peft_parity_with_diffusers(sd1, tmp_path):
    """A real diffusers/PEFT file (save_lora_weights) fused by diffusers equals our patch."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    sd = peft_unet(sd1, rank=4)
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=sd2 if (sd2 := {
        k.removeprefix("unet."): v for k, v in sd.items()}) else None, safe_serialization=True)
    file_sd = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("unet.") and ".lora_A." in k for k in file_sd)
    pipe = _diffusers_pipe(sd1)
    pipe.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors", adapter_name="p")
    pipe.fuse_lora(components=["unet"], lora_scale=0.8)
    patched = sd1.with_patches((_patch(file_sd, 0.8, 1.0),))
    patcher.activate(patched)
    try:
        theirs = _fused_weights(pipe.unet)
        for k, v in sd1.unet.state_dict().items():
            torch.testing.assert_close(v, theirs[k], rtol=1e-5, atol=1e-6, msg=k)
    finally:
        patcher.restore(patched)


def test_name_variants_reach_the_same_layers(sd1):
    """kohya diffusers paths, kohya LDM paths, PEFT with/without prefix, legacy processors."""
    base = kohya(sd1, rank=2, alpha=None, with_te=False, unet_suffixes=("attn1.to_q", "attn1.to_out.0"))
    ldm = kohya(sd1, rank=2, alpha=None, with_te=False, ldm_names=True, unet_suffixes=("attn1.to_q", "attn1.to_out.0"))
    peft, bare, legacy = {}, {}, {}
    for k, v in base.items():
        path, _, suffix = k.partition(".")
        is_down = suffix == "lora_down.weight"
        mod = next(n for n, _ in unet_layers(sd1, ("attn1.to_q", "attn1.to_out.0"))
                   if n.replace(".", "_") == path.removeprefix("lora_unet_"))
        ab = "lora_A" if is_down else "lora_B"
        peft[f"unet.{mod}.{ab}.weight"] = v
        bare[f"{mod}.{ab}.weight"] = v
        proc = mod.replace(".to_q", ".processor.to_q_lora").replace(".to_out.0", ".processor.to_out_lora")
        legacy[f"{proc}.{'down' if is_down else 'up'}.weight"] = v
    results = []
    for sd in (base, ldm, peft, bare, legacy):
        p = sd1.with_patches((_patch(sd),))
        patcher.activate(p)
        results.append(_snapshot(sd1))
        patcher.restore(p)
    for variant, r in zip(("ldm", "peft", "bare", "legacy"), results[1:]):
        assert _bits_equal(results[0], r) == [], variant
    assert _bits_equal(results[0], _snapshot(sd1)) != []


def test_transformers5_flat_te_names(sd1):
    """PEFT text-encoder keys with and without `text_model.` reach the same layer."""
    (name, mod), = te_layers(sd1, 0, ("layers.0.self_attn.q_proj",))
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, mod.weight.shape[1], generator=g), torch.randn(mod.weight.shape[0], 2, generator=g)
    outs = []
    for prefix in ("text_encoder.", "text_encoder.text_model."):
        short = name.removeprefix("text_model.")
        sd = {f"{prefix}{short}.lora_A.weight": a, f"{prefix}{short}.lora_B.weight": b}
        p = sd1.with_patches((_patch(sd),))
        patcher.activate(p)
        outs.append(mod.weight.clone())
        patcher.restore(p)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], mod.weight)


# ------------------------------------------------------------------- formulas per kind
def _one_layer(h, suffix="down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"):
    mod = dict(h.unet.named_modules())[suffix]
    return suffix, mod


def _apply_single(h, key_base, tensors, strength=1.0):
    sd = {f"{key_base}.{k}": v for k, v in tensors.items()}
    p = h.with_patches((_patch(sd, strength, strength),))
    patcher.activate(p)
    return p


def test_loha_formula(sd1):
    name, mod = _one_layer(sd1)
    w0 = mod.weight.clone()
    g = torch.Generator().manual_seed(2)
    o, i, r = w0.shape[0], w0.shape[1], 4
    t = {"hada_w1_a": torch.randn(o, r, generator=g), "hada_w1_b": torch.randn(r, i, generator=g),
         "hada_w2_a": torch.randn(o, r, generator=g), "hada_w2_b": torch.randn(r, i, generator=g),
         "alpha": torch.tensor(2.0)}
    p = _apply_single(sd1, "lora_unet_" + name.replace(".", "_"), t, 0.6)
    want = w0 + 0.6 * (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * (2.0 / r)
    torch.testing.assert_close(mod.weight, want)
    patcher.restore(p)
    assert torch.equal(mod.weight, w0)


def test_lokr_formulas(sd1):
    name, mod = _one_layer(sd1)
    w0 = mod.weight.clone()
    o, i = w0.shape
    g = torch.Generator().manual_seed(3)
    # full factors: alpha is ignored
    w1, w2 = torch.randn(4, 2, generator=g), torch.randn(o // 4, i // 2, generator=g)
    p = _apply_single(sd1, "lora_unet_" + name.replace(".", "_"), {"lokr_w1": w1, "lokr_w2": w2,
                                                                   "alpha": torch.tensor(1.0)})
    torch.testing.assert_close(mod.weight, w0 + torch.kron(w1, w2))
    patcher.restore(p)
    # factored w2: scale alpha / r
    a, b = torch.randn(o // 4, 3, generator=g), torch.randn(3, i // 2, generator=g)
    p = _apply_single(sd1, "lora_unet_" + name.replace(".", "_"), {"lokr_w1": w1, "lokr_w2_a": a, "lokr_w2_b": b,
                                                                   "alpha": torch.tensor(1.5)}, 0.5)
    torch.testing.assert_close(mod.weight, w0 + 0.5 * torch.kron(w1, a @ b) * (1.5 / 3))
    patcher.restore(p)
    assert torch.equal(mod.weight, w0)


def test_dora_formula_row_and_column(sd1):
    name, mod = _one_layer(sd1)
    w0 = mod.weight.clone()
    o, i, r = w0.shape[0], w0.shape[1], 4
    g = torch.Generator().manual_seed(4)
    down, up = torch.randn(r, i, generator=g) * 0.1, torch.randn(o, r, generator=g) * 0.1
    for shape, row in (((o, 1), True), ((1, i), False)):
        m = torch.rand(shape, generator=g) + 0.5
        p = _apply_single(sd1, "lora_unet_" + name.replace(".", "_"),
                          {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0),
                           "dora_scale": m}, 0.75)
        v = w0 + (2.0 / r) * up @ down
        norm = v.norm(dim=1, keepdim=True) if row else v.norm(dim=0, keepdim=True)
        torch.testing.assert_close(mod.weight, w0 + 0.75 * (m * v / norm - w0))
        patcher.restore(p)
        assert torch.equal(mod.weight, w0)


def test_ia3_full_diff_and_norm(sd1):
    name, mod = _one_layer(sd1)
    w0 = mod.weight.clone()
    g = torch.Generator().manual_seed(5)
    key = "lora_unet_" + name.replace(".", "_")
    s = torch.randn(w0.shape[0], generator=g)
    p = _apply_single(sd1, key, {"weight": s, "on_input": torch.tensor(False)}, 0.5)
    torch.testing.assert_close(mod.weight, w0 + 0.5 * w0 * s[:, None])
    patcher.restore(p)
    s_in = torch.randn(w0.shape[1], generator=g)
    p = _apply_single(sd1, key, {"weight": s_in, "on_input": torch.tensor(True)}, 1.0)
    torch.testing.assert_close(mod.weight, w0 + w0 * s_in[None, :])
    patcher.restore(p)
    d = torch.randn_like(w0)
    p = _apply_single(sd1, key, {"diff": d}, 0.3)
    torch.testing.assert_close(mod.weight, w0 + 0.3 * d)
    patcher.restore(p)
    # a norm layer's w_norm / b_norm
    nname = "down_blocks.1.attentions.0.transformer_blocks.0.norm1"
    norm = dict(sd1.unet.named_modules())[nname]
    nw, nb = norm.weight.clone(), norm.bias.clone()
    dw, db = torch.randn_like(nw), torch.randn_like(nb)
    p = _apply_single(sd1, "lora_unet_" + nname.replace(".", "_"), {"w_norm": dw, "b_norm": db}, 2.0)
    torch.testing.assert_close(norm.weight, nw + 2 * dw)
    torch.testing.assert_close(norm.bias, nb + 2 * db)
    patcher.restore(p)
    assert torch.equal(norm.weight, nw) and torch.equal(norm.bias, nb) and torch.equal(mod.weight, w0)


def test_locon_conv_and_tucker(sd1):
    cname = "down_blocks.0.resnets.0.conv1"
    conv = dict(sd1.unet.named_modules())[cname]
    w0 = conv.weight.clone()
    o, i, kh, kw = w0.shape
    g = torch.Generator().manual_seed(6)
    r = 4
    down, up = torch.randn(r, i, kh, kw, generator=g), torch.randn(o, r, 1, 1, generator=g)
    key = "lora_unet_" + cname.replace(".", "_")
    p = _apply_single(sd1, key, {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(1.0)})
    want = w0 + (1.0 / r) * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    torch.testing.assert_close(conv.weight, want)
    patcher.restore(p)
    down1, mid = torch.randn(r, i, 1, 1, generator=g), torch.randn(r, r, kh, kw, generator=g)
    p = _apply_single(sd1, key, {"lora_down.weight": down1, "lora_mid.weight": mid, "lora_up.weight": up})
    want = w0 + torch.einsum("or,rskl,si->oikl", up[:, :, 0, 0], mid, down1[:, :, 0, 0])
    torch.testing.assert_close(conv.weight, want, rtol=1e-4, atol=1e-5)
    patcher.restore(p)
    # a kohya LDM-named LoCon on the same layer (input_blocks.1.0.in_layers.2)
    p = _apply_single(sd1, "lora_unet_input_blocks_1_0_in_layers_2",
                      {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(1.0)})
    torch.testing.assert_close(conv.weight, w0 + (1.0 / r) * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down))
    patcher.restore(p)
    assert torch.equal(conv.weight, w0)


def test_openclip_in_proj_lora_patches_q_k_v_rows():
    """A LoRA on SDXL te2's fused in_proj [3C, C] lands on q, k and v by rows."""
    h = make_handle("sdxl", seed=13)
    te2 = h.text_encoders[1]
    layer = te2.text_model.encoder.layers[0].self_attn
    c = layer.q_proj.weight.shape[0]
    g = torch.Generator().manual_seed(7)
    down, up = torch.randn(2, c, generator=g), torch.randn(3 * c, 2, generator=g)
    before = [getattr(layer, n).weight.clone() for n in ("q_proj", "k_proj", "v_proj")]
    sd = {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj.lora_down.weight": down,
          "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj.lora_up.weight": up}
    p = h.with_patches((_patch(sd, 1.0, 0.5),))
    patcher.activate(p)
    delta = 0.5 * up @ down
    for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
        torch.testing.assert_close(getattr(layer, n).weight, before[j] + delta[j * c:(j + 1) * c])
    patcher.restore(p)


# ------------------------------------------------------------------------- invariants
def test_strength_zero_is_base_and_restore_is_bit_exact(sd1):
    base = _snapshot(sd1)
    sd = kohya(sd1, unet_suffixes=ATTN + FF)
    p0 = sd1.with_patches((_patch(sd, 0.0, 0.0),))
    patcher.activate(p0)
    assert _bits_equal(base, _snapshot(sd1)) == []
    p1 = sd1.with_patches((_patch(sd, 1.3, -0.7),))
    assert patcher.activate(p1) > 0
    assert _bits_equal(base, _snapshot(sd1)) != []
    patcher.restore(p1)
    assert _bits_equal(base, _snapshot(sd1)) == []
    assert patcher.state_for(sd1).originals == {}  # nothing held back after a full restore
    patcher.release(p1)
    assert patcher.state_for(sd1).spare == {}


def test_random_switches_stay_bit_exact():
    """1000 random switches between stacks: each equals that stack applied to the untouched base."""
    h = make_handle("sd1", seed=14)
    loras = [_patch(kohya(h, rank=2, seed=s, unet_suffixes=("attn2.to_k", "attn1.to_v", "ff.net.2"),
                          te_suffixes=("q_proj",)), name=f"l{s}") for s in range(3)]
    stacks = [()]
    for a in loras:
        stacks.append((a,))
        for b in loras:
            if b is not a:
                stacks.append((a, b))
    stacks += [(dataclass_replace(loras[0], strength_unet=0.5),), (dataclass_replace(loras[1], strength_text=-1.0),)]
    # reference weights: each stack applied to the untouched base
    ref = []
    for st in stacks:
        patcher.activate(h.with_patches(st))
        ref.append(_snapshot(h))
        patcher.restore(h)
    base = _snapshot(h)
    rng = random.Random(0)
    for _ in range(1000):
        k = rng.randrange(len(stacks))
        patcher.activate(h.with_patches(stacks[k]))
    assert _bits_equal(ref[k], _snapshot(h)) == []
    for k in rng.sample(range(len(stacks)), 5):
        patcher.activate(h.with_patches(stacks[k]))
        assert _bits_equal(ref[k], _snapshot(h)) == []
    patcher.restore(h)
    assert _bits_equal(base, _snapshot(h)) == []


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_switch_touches_only_differing_layers(sd1):
    a = _patch(kohya(sd1, rank=2, seed=1, unet_suffixes=("attn1.to_q",), with_te=False), name="a")
    b = _patch(kohya(sd1, rank=2, seed=2, unet_suffixes=("attn2.to_q",), with_te=False), name="b")
    n_a = patcher.activate(sd1.with_patches((a,)))
    n_ab = patcher.activate(sd1.with_patches((a, b)))
    assert n_ab == n_a  # only b's layers were written; a's stayed
    assert patcher.activate(sd1.with_patches((a, b))) == 0
    patcher.restore(sd1)


def test_stack_order_matters_for_dora(sd1):
    """Adapters apply in stack order (DoRA normalises what came before)."""
    name, mod = _one_layer(sd1)
    key = "lora_unet_" + name.replace(".", "_")
    g = torch.Generator().manual_seed(8)
    o, i = mod.weight.shape
    a = {f"{key}.lora_down.weight": torch.randn(2, i, generator=g), f"{key}.lora_up.weight": torch.randn(o, 2, generator=g),
         f"{key}.dora_scale": torch.rand(o, 1, generator=g) + 0.5}
    b = {f"{key}.diff": torch.randn(o, i, generator=g)}
    pa, pb = _patch(a, name="a"), _patch(b, name="b")
    patcher.activate(sd1.with_patches((pa, pb)))
    ab = mod.weight.clone()
    patcher.activate(sd1.with_patches((pb, pa)))
    ba = mod.weight.clone()
    patcher.restore(sd1)
    assert not torch.equal(ab, ba)


def test_wrong_family_named(sd1, sdxl):
    sd = kohya(sdxl, ldm_names=True)
    p = sd1.with_patches((_patch(sd, name="xl.safetensors"),))
    with pytest.raises(WrongFamilyError, match="SDXL.*SD 1.x"):
        patcher.activate(p)


def test_unmatched_keys_reported(sd1):
    sd = kohya(sd1, rank=2, unet_suffixes=("attn1.to_q",), with_te=False)
    sd["lora_unet_nonexistent_layer.lora_down.weight"] = torch.zeros(2, 4)
    sd["lora_unet_nonexistent_layer.lora_up.weight"] = torch.zeros(4, 2)
    sd["something_else"] = torch.zeros(1)
    raw = parse_state_dict(sd, name="x")
    rep = patcher.match_report(sd1, raw)
    assert rep.unmatched == ("lora_unet_nonexistent_layer",)
    assert raw.unknown_keys == ("something_else",)
    assert len(rep.adapters) == len(unet_layers(sd1, ("attn1.to_q",)))


def test_parse_does_not_mutate_input(sd1):
    sd = kohya(sd1, rank=2, with_te=False, unet_suffixes=("attn1.to_q",))
    before = {k: v.clone() for k, v in sd.items()}
    parse_state_dict(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)


def test_fp16_model_math_in_fp32():
    h = make_handle("sd1", seed=15)
    h.unet.half()
    name, mod = _one_layer(h)
    w0 = mod.weight.clone()
    sd = kohya(h, rank=2, with_te=False, unet_suffixes=(name.split("transformer_blocks.0.")[1],))
    p = h.with_patches((_patch(sd, 0.9),))
    patcher.activate(p)
    a = parse_state_dict(sd).adapters["lora_unet_" + name.replace(".", "_")]
    want = adapters.patched_weight(w0.float(), a, 0.9).half()
    assert mod.weight.dtype == torch.float16 and torch.equal(mod.weight, want)
    patcher.restore(p)
    assert torch.equal(mod.weight, w0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stack_goes_by_row_blocks(monkeypatch, dtype):
    """fp16/bf16 weights: each row block is widened to fp32, every LoRA of the stack added, then
    narrowed; with blocks of 3 rows the result is still (w0.float() + ΔW1 + ΔW2).to(dtype)."""
    h = make_handle("sd1", seed=16)
    h.unet.to(dtype)
    monkeypatch.setitem(adapters.CHAIN_BLOCK_BYTES, "cpu", 3 * 4 * 64)  # 3 rows of a 64-wide weight
    name, mod = _one_layer(h)
    w0 = mod.weight.clone()
    suffix = (name.split("transformer_blocks.0.")[1],)
    sds = [kohya(h, rank=4, seed=s, with_te=False, unet_suffixes=suffix) for s in (1, 2)]
    p = h.with_patches((_patch(sds[0], 0.8, name="a"), _patch(sds[1], -0.6, name="b")))
    patcher.activate(p)
    key = "lora_unet_" + name.replace(".", "_")
    want = w0.float()
    for sd, s in zip(sds, (0.8, -0.6)):
        up, down = sd[key + ".lora_up.weight"], sd[key + ".lora_down.weight"]
        want = want + s * float(sd[key + ".alpha"]) / down.shape[0] * (up @ down)
    assert w0.shape[1] == 64 and mod.weight.dtype == dtype
    eps = torch.finfo(dtype).eps  # at most one unit in the last place apart (fp32 sums may round differently)
    torch.testing.assert_close(mod.weight.float(), want.to(dtype).float(), rtol=eps, atol=eps * 1e-3)
    assert not torch.equal(mod.weight, w0)
    patcher.restore(p)
    assert torch.equal(mod.weight, w0)


def test_lora_reaches_a_model_on_another_device():
    """A model on a GPU: LoRA tensors are read to the CPU and must be moved to each weight's
    device (once, while applied). The meta device stands in for a GPU here: any torch has it,
    and mixing it with CPU tensors fails just as CUDA does."""
    h = make_handle("sd1", seed=17)
    for m in (h.unet, *h.text_encoders):
        m.to("meta")
    name, mod = _one_layer(h)
    g = torch.Generator().manual_seed(3)
    o = mod.weight.shape[0]
    sd = kohya(h, rank=2, seed=1, unet_suffixes=("attn1.to_q", "ff.net.2"), te_suffixes=("q_proj",))
    key = "lora_unet_" + name.replace(".", "_")
    sd[key + ".dora_scale"] = torch.rand(o, 1, generator=g) + 0.5  # DoRA: the general path
    out_key = "lora_unet_" + name.replace(".", "_").replace("to_q", "to_out_0")
    sd[out_key + ".diff"] = torch.randn(o, o, generator=g)
    sd[out_key + ".diff_b"] = torch.randn(o, generator=g)  # a bias delta
    p = h.with_patches((_patch(sd, 0.7, 0.4),))
    st = patcher.state_for(h)
    before = {k: getattr(st.modules[k[:2]], k[2]).data for k in patcher.plan(p)}
    assert len(before) > 5 and any(k[2] == "bias" for k in before) and any(k[0] == "te1" for k in before)
    patcher.activate(p)
    for k, t0 in before.items():
        t = getattr(st.modules[k[:2]], k[2])
        assert t.device.type == "meta" and t.shape == t0.shape and t.dtype == t0.dtype and t.data is not t0
    assert st._on_device and all(dev.type == "meta" for _, dev in st._on_device)
    patcher.activate(h.with_patches((_patch(kohya(h, rank=2, seed=2, unet_suffixes=("attn2.to_k",),
                                                  with_te=False)),)))
    held = {id(a) for a, _ in st._on_device.values()}
    assert held and not held & {id(a) for e in patcher.plan(p).values() for a, _, _ in e}  # old copies dropped
    patcher.release(p)
    assert st._on_device == {} and st.originals == {} and st.applied == {}


# ------------------------------------------------------------------- one-pass stacks
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_one_pass_stack_equals_sequential(dtype):
    """A stack of 4 LoRAs (different ranks, alphas, strengths, conv layers too) goes through one
    pass per weight (fp32: one concatenated low-rank product; fp16/bf16: each LoRA's addmm into the
    block's fp32 scratch); the weights equal applying the LoRAs one after the other
    (patched_weight chained in fp32, narrowed once) within fp32 rounding: for fp32 a few ulps of
    the weight, for fp16/bf16 at most one unit in the last place."""
    h = make_handle("sd1", seed=21)
    h.unet.to(dtype)
    suffixes = ("attn1.to_q", "attn2.to_k", "proj_in", "conv1")
    sds = [kohya(h, rank=r, alpha=al, seed=s, with_te=False, unet_suffixes=suffixes)
           for r, al, s in ((4, 2.0, 1), (8, 8.0, 2), (2, 1.0, 3), (4, None, 4))]
    strengths = (0.8, -0.6, 1.3, 0.25)
    patches = tuple(_patch(sd, s, name=f"l{i}") for i, (sd, s) in enumerate(zip(sds, strengths)))
    raws = [p.raw for p in patches]
    layers = dict(unet_layers(h, suffixes))
    w0 = {n: m.weight.clone() for n, m in layers.items()}
    calls = []
    real_chains = patcher.plain_lora_chains

    def spy(tasks):
        calls.extend(len(loras) for _, loras, _ in tasks)
        return real_chains(tasks)

    p = h.with_patches(patches)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patcher, "plain_lora_chains", spy)
        patcher.activate(p)
    assert calls and set(calls) == {4}  # every layer: the whole stack in one call
    conv = 0
    for name, mod in layers.items():
        key = "lora_unet_" + name.replace(".", "_")
        want = w0[name].float()
        for raw, s in zip(raws, strengths):
            want = adapters.patched_weight(want, raw.adapters[key], s)
        got = mod.weight
        assert got.dtype == dtype and got.shape == w0[name].shape
        conv += got.ndim == 4
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        else:
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(got.float(), want.to(dtype).float(), rtol=eps, atol=eps * 1e-3)
        assert not torch.equal(got, w0[name])
    assert conv > 0  # conv1 (3x3) weights went through the same path
    patcher.restore(p)
    assert all(torch.equal(m.weight, w0[n]) for n, m in layers.items())


def test_one_lora_stays_bit_identical_to_patched_weight():
    """Concatenation only for stacks: one LoRA is addmm with its own alpha, bit for bit."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 64, generator=g)
    a = adapters.Adapter("lora", {"up": torch.randn(96, 4, generator=g), "down": torch.randn(4, 64, generator=g)}, alpha=2.0)
    want = torch.addmm(w, a.tensors["up"], a.tensors["down"], alpha=0.7 * 2.0 / 4)
    assert torch.equal(adapters.plain_lora_chain(w, [(a, 0.7)]), want)
    up, down, alpha = adapters.stacked_factors([(a, 0.7)], 96)
    assert up.data_ptr() == a.tensors["up"].data_ptr() and down.data_ptr() == a.tensors["down"].data_ptr()  # no copies
    assert alpha == 0.7 * 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,cols", [(96, 64), (1280, 1280)])
def test_half_precision_stack_uses_the_loras_own_factors(dtype, rows, cols):
    """fp16/bf16: the block job holds each LoRA's own up/down (views, no concatenated or rescaled
    copies) with its own alpha; the weight equals the LoRAs' addmms chained in fp32 over the whole
    tensor, narrowed once, bit for bit: also for a full-size weight cut into 4 MiB row blocks."""
    g = torch.Generator().manual_seed(9)
    w = (torch.randn(rows, cols, generator=g) * 0.1).to(dtype)
    loras = [(adapters.Adapter("lora", {"up": torch.randn(rows, r, generator=g) * 0.1,
                                        "down": torch.randn(r, cols, generator=g) * 0.1}, alpha=al), s)
             for r, al, s in ((32, 16.0, 0.7), (8, None, -0.4))]
    _, job = adapters.chain_setup(w, loras, None)
    _, _, terms = job
    assert [(u.data_ptr(), d.data_ptr()) for u, d, _ in terms] == [
        (a.tensors["up"].data_ptr(), a.tensors["down"].data_ptr()) for a, _ in loras]
    assert [c for _, _, c in terms] == [0.7 * 16.0 / 32, -0.4]
    assert len(adapters.chain_blocks(w)[1]) == (2 if rows == 1280 else 1)  # the full-size one is two blocks
    got = adapters.plain_lora_chain(w, loras)
    want = w.float()
    for a, s in loras:
        want = torch.addmm(want, a.tensors["up"], a.tensors["down"], alpha=s * adapters.lora_scale(a))
    assert got.dtype == dtype and torch.equal(got, want.to(dtype))


def test_stack_switch_touches_only_changed_layers(sd1):
    """Switching within a stack still rewrites only the weights whose entries differ."""
    a = kohya(sd1, rank=2, seed=1, with_te=False, unet_suffixes=("attn1.to_q", "attn2.to_v"))
    b = kohya(sd1, rank=2, seed=2, with_te=False, unet_suffixes=("attn2.to_v",))
    pa, pb = _patch(a, name="a"), _patch(b, name="b")
    first = patcher.activate(sd1.with_patches((pa,)))
    changed = patcher.activate(sd1.with_patches((pa, pb)))
    n_v = len(unet_layers(sd1, ("attn2.to_v",)))
    assert first == len(unet_layers(sd1, ("attn1.to_q", "attn2.to_v"))) and changed == n_v
    patcher.restore(sd1)
