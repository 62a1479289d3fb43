"""LoRA file tools: the exact merge reproduces the stack; SVD errors are the discarded singular
values; resize keeps the scale; extract then apply gives the tuned model; kohya save format,
metadata and hashes; nodes and CLI."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct

import pytest
import torch
from conftest import make_handle
from lora_factory import ATTN, FF, kohya
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_merge import openclip_lora

from lora_lab.nodes.cli import main as cli
from lora_lab.nodes.merge import merge
from lora_lab.nodes.lora import patcher
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.lora.lora_formats import parse_state_dict, read_lora
from lora_lab.nodes.merge.lora_resize import extract_lora, resize_lora
from lora_lab.nodes.merge.lora_save import lora_set_from_raw, save_lora
from lora_lab.nodes.merge.lora_tools import LoraLayer, LoraSet, RankRule, merge_stack, merged_metadata
from lora_lab.nodes.io.destination import Destination
from lora_lab.nodes.defs.nodes_merge import LoraLabExtractLora, LoraLabMergeLoras, LoraLabResizeLora, LoraLabSaveLora


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd1():
    h = make_handle("sd1", seed=31)
    yield h
    patcher.release(h)


@pytest.fixture(scope="module")
def sdxl():
    h = make_handle("sdxl", seed=32)
    yield h
    patcher.release(h)


def lycoris_extras(h, seed=7) -> dict:
    """LoCon 3x3, a tucker LoCon, LoHa, a DoRA LoRA and norm diffs on an SD 1.x tiny model."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(h.unet.named_modules())

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    conv1, conv2 = mods["down_blocks.0.resnets.0.conv1"].weight, mods["down_blocks.0.resnets.0.conv2"].weight
    lin = mods["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"].weight
    dora = mods["up_blocks.1.attentions.0.proj_out"].weight
    p = "lora_unet_"
    return {
        p + "down_blocks_0_resnets_0_conv1.lora_down.weight": rnd(3, conv1.shape[1], 3, 3),
        p + "down_blocks_0_resnets_0_conv1.lora_up.weight": rnd(conv1.shape[0], 3, 1, 1),
        p + "down_blocks_0_resnets_0_conv2.lora_down.weight": rnd(2, conv2.shape[1], 1, 1),
        p + "down_blocks_0_resnets_0_conv2.lora_mid.weight": rnd(2, 2, 3, 3),
        p + "down_blocks_0_resnets_0_conv2.lora_up.weight": rnd(conv2.shape[0], 2, 1, 1),
        p + "down_blocks_0_resnets_0_conv2.alpha": torch.tensor(1.0),
        p + "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_a": rnd(lin.shape[0], 2),
        p + "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_b": rnd(2, lin.shape[1]),
        p + "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w2_a": rnd(lin.shape[0], 2),
        p + "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w2_b": rnd(2, lin.shape[1]),
        p + "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(2.0),
        p + "up_blocks_1_attentions_0_proj_out.lora_down.weight": rnd(2, *dora.shape[1:]),
        p + "up_blocks_1_attentions_0_proj_out.lora_up.weight": rnd(dora.shape[0], 2, *dora.shape[2:]),
        p + "up_blocks_1_attentions_0_proj_out.dora_scale": 1 + rnd(dora.shape[0], 1, *dora.shape[2:]),
        p + "down_blocks_1_attentions_0_norm.w_norm": rnd(mods["down_blocks.1.attentions.0.norm"].weight.shape[0]),
        p + "down_blocks_1_attentions_0_norm.b_norm": rnd(mods["down_blocks.1.attentions.0.norm"].weight.shape[0]),
    }


def stack(h, extras=True):
    a = kohya(h, rank=4, alpha=2.0, ldm_names=(h.family == "sdxl"), unet_suffixes=ATTN + FF + ("proj_in",),
              te_suffixes=("q_proj", "v_proj", "fc1"), seed=1)
    b = kohya(h, rank=3, alpha=None, seed=2, with_te=h.family == "sd1")
    if h.family == "sdxl":
        b.update(openclip_lora(h, 1))
    elif extras:
        b.update(lycoris_extras(h))
    return h.with_patches((patcher.LoraPatch("a", parse_state_dict(a, name="a"), 0.7, -0.5),
                           patcher.LoraPatch("b", parse_state_dict(b, name="b"), -1.3, 0.25)))


def weights(h) -> dict:
    patcher.activate(h)
    return {f"{i}.{k}": v.clone() for i, m in enumerate((h.unet, *h.text_encoders)) for k, v in m.state_dict().items()}


def worst_error(a: dict, b: dict) -> float:
    """Largest |a - b| relative to the largest |a - base| change (the stack's own size)."""
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def applied(h, path) -> dict:
    raw = read_lora(path)
    assert raw.unknown_keys == () and patcher.match_report(h, raw).unmatched == ()
    return weights(h.with_patches((patcher.LoraPatch("merged", raw),)))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_exact_merge_reproduces_the_stack(family, sd1, sdxl, tmp_path):
    h = {"sd1": sd1, "sdxl": sdxl}[family]
    hp = stack(h)
    lset = merge_stack(hp, "exact")
    out = save_lora(lset, Destination(tmp_path / "m.safetensors"), dtype="fp32")
    base, want = weights(h), weights(hp)
    change = max(float((want[k] - base[k]).abs().max()) for k in want)
    assert worst_error(want, applied(h, out)) < 1e-5 * change
    name = {"sd1": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "sdxl": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"}[family]
    assert (lset.layers[name].rank, lset.layers[name].alpha) == (7, 7.0)  # ranks 4 + 3 concatenated, scale 1
    # fp16 storage: within fp16 rounding of the factors
    out16 = save_lora(lset, Destination(tmp_path / "m16.safetensors"), dtype="fp16")
    assert worst_error(want, applied(h, out16)) < 2e-3 * change


def test_svd_merge_error_is_the_discarded_singular_values(sd1):
    hp = stack(sd1, extras=False)
    exact, svd = merge_stack(hp, "exact"), merge_stack(hp, "svd", RankRule(3))
    assert exact.layers.keys() == svd.layers.keys()
    for name, lay in svd.layers.items():
        full = exact.layers[name].delta()
        s = torch.linalg.svdvals(full.reshape(full.shape[0], -1).double())
        err = float((full - lay.delta()).double().norm())
        bound = float(s[3:].pow(2).sum().sqrt())
        assert lay.rank == min(3, len(s)) and abs(err - bound) <= 1e-5 * float(s[0]) + 1e-4 * bound, name


def _spectrum_layer(s: list, out=24, inp=20, alpha=3.0, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, len(s), generator=g))
    v, _ = torch.linalg.qr(torch.randn(inp, len(s), generator=g))
    return {"up": (u * torch.tensor(s)).contiguous(), "down": v.t().contiguous(), "alpha": torch.tensor(alpha)}


def test_resize_fixed_and_dynamic_keep_the_scale(tmp_path):
    spec = {"lora_unet_a": _spectrum_layer([8, 4, 2, 1, 0.5, 0.25]), "lora_unet_b": _spectrum_layer([1.0] * 6, seed=1)}
    sd = {f"{n}.{k if k == 'alpha' else 'lora_' + k + '.weight'}": v for n, d in spec.items() for k, v in d.items()}
    save_file(sd, tmp_path / "in.safetensors", metadata={"ss_network_dim": "6", "ss_tag_frequency": "{}"})
    lset = lora_set_from_raw(read_lora(tmp_path / "in.safetensors"))
    fixed = resize_lora(lset, RankRule(2))
    a = fixed.layers["lora_unet_a"]
    assert a.rank == 2 and a.alpha / a.rank == pytest.approx(3.0 / 6)  # alpha/rank kept
    err = float((lset.layers["lora_unet_a"].delta() - a.delta()).norm())
    assert err == pytest.approx(0.5 * math.sqrt(2 ** 2 + 1 + 0.5 ** 2 + 0.25 ** 2), rel=1e-4)
    for method, param, want in (("sv_ratio", 5.0, 3), ("sv_fro", 0.99, 3), ("sv_cumulative", 0.9, 4)):
        got = resize_lora(lset, RankRule(8, method=method, param=param))
        assert got.layers["lora_unet_a"].rank == want, method
        assert got.layers["lora_unet_b"].rank == (6 if method == "sv_ratio" else got.layers["lora_unet_b"].rank)
    dyn = resize_lora(lset, RankRule(8, method="sv_ratio", param=5.0))
    out = save_lora(dyn, Destination(tmp_path / "out.safetensors"))
    meta = safe_open(str(out), "pt").metadata()
    assert meta["ss_network_dim"] == "Dynamic" and "Dynamic resize with sv_ratio" in meta["ss_training_comment"]
    with pytest.raises(ValueError, match="sv_fro needs a fraction"):
        RankRule(4, method="sv_fro", param=2.0)


def test_extract_then_apply_gives_the_tuned_model(sd1, tmp_path):
    from lora_lab.nodes.model.checkpoint import load_single_file

    hp = stack(sd1, extras=False)
    lc = lycoris_extras(sd1)
    conv = {k: v for k, v in lc.items() if "resnets_0_conv1" in k}
    hp = hp.with_patches(hp.patches + (patcher.LoraPatch("c", parse_state_dict(conv, name="c"), 0.9, 1.0),))
    tuned = load_single_file(merge.merge_checkpoint(hp, Destination(tmp_path / "tuned.safetensors"), progress=False))
    base = sd1.with_patches(())
    lset = extract_lora(base, tuned, RankRule(8, conv_rank=4), min_diff=0.0, use_conv=True)
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in lset.layers  # the 3x3 conv, at conv rank
    assert lset.layers["lora_unet_down_blocks_0_resnets_0_conv1"].rank == 4  # conv_rank (the LoCon had rank 3)
    assert "lora_unet_down_blocks_0_resnets_0_conv2" not in lset.layers  # unchanged: left out
    out = save_lora(lset, Destination(tmp_path / "x.safetensors"), dtype="fp32")
    want = {f"{i}.{k}": v for i, m in enumerate((tuned.unet, *tuned.text_encoders)) for k, v in m.state_dict().items()}
    change = max(float((want[k] - v).abs().max()) for k, v in weights(base).items())
    assert worst_error(want, applied(base, out)) < 1e-4 * change
    no_text = extract_lora(base, tuned, RankRule(8), min_diff=10.0)
    assert not any(n.startswith("lora_te") for n in no_text.layers)
    assert not any("resnets" in n for n in no_text.layers)  # conv layers only when asked


def test_kohya_names_metadata_and_hashes(sd1, sdxl, tmp_path):
    out = save_lora(merge_stack(stack(sdxl), "exact"), Destination(tmp_path / "xl.safetensors"), dtype="fp16")
    sd = load_file(out)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    assert "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_v" in names  # SDXL: LDM paths
    te = "text_model_encoder_layers_0_self_attn_"
    assert {f"lora_te1_{te}q_proj", f"lora_te2_{te}q_proj", f"lora_te2_{te}k_proj"} <= names  # in_proj split into q/k/v
    alpha = sd["lora_te2_text_model_encoder_layers_0_self_attn_k_proj.alpha"]
    assert alpha.dtype == torch.float32 and alpha.ndim == 0
    meta = safe_open(str(out), "pt").metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    data = out.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()  # what A1111 addnet computes
    # the legacy hash needs a file past 1 MiB: kohya's definition, serialised with the ss_* metadata only
    from safetensors.torch import save

    big = LoraSet("sd1", "epsilon", {"lora_unet_x": LoraLayer(torch.randn(640, 256), torch.randn(256, 640), 8.0)})
    out2 = save_lora(big, Destination(tmp_path / "big.safetensors"), dtype="fp32")
    meta2 = safe_open(str(out2), "pt").metadata()
    blob = save(load_file(out2), {k: v for k, v in meta2.items() if k.startswith("ss_")})
    assert meta2["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8] != "e3b0c442"
    assert meta2["ss_base_model_version"] == "sd_v1" and meta2["ss_network_dim"] == "256"


def test_diffusers_loads_the_saved_kohya_file(sd1, tmp_path):
    pytest.importorskip("peft")
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    hp = stack(sd1, extras=False)
    merged = merge_stack(hp, "exact").layers
    out = save_lora(merge_stack(hp, "exact"), Destination(tmp_path / "m.safetensors"), dtype="fp32")
    patcher.restore(sd1)
    pipe = StableDiffusionPipeline(vae=sd1.vae, text_encoder=sd1.text_encoders[0], tokenizer=sd1.tokenizers[0],
                                   unet=sd1.unet, scheduler=EulerDiscreteScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    want = weights(hp)
    patcher.restore(sd1)
    pipe.load_lora_weights(str(out), adapter_name="m")
    try:
        pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0)
        for i, m in enumerate((pipe.unet, pipe.text_encoder)):
            # diffusers 0.42 with transformers 5 skips kohya text-encoder self_attn layers (any kohya file):
            # compare the layers it loaded, which must include every UNet layer and the text MLPs
            loaded = {k.split(".lora_A")[0] for k in m.state_dict() if ".lora_A." in k}
            assert i == 1 or len(loaded) == sum(1 for n in merged if n.startswith("lora_unet_"))
            got = {k.replace(".base_layer", ""): v for k, v in m.state_dict().items() if "lora_" not in k}
            for k, v in got.items():
                if k.rsplit(".", 1)[0] in loaded:
                    assert torch.allclose(v, want[f"{i}.{k}"], atol=1e-6), k
            assert i == 0 or any("mlp.fc1" in n for n in loaded)
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        patcher.release(sd1)


def test_tag_frequencies_merged():
    a = {"ss_tag_frequency": json.dumps({"10_cat": {"cat": 3, "grass": 1}}), "modelspec.trigger_phrase": "mycat"}
    b = {"ss_tag_frequency": json.dumps({"10_cat": {"cat": 2}, "5_ink": {"ink": 4}}), "modelspec.trigger_phrase": "ink"}
    m = merged_metadata([a, b])
    assert json.loads(m["ss_tag_frequency"]) == {"10_cat": {"cat": 5, "grass": 1}, "5_ink": {"ink": 4}}
    assert m["modelspec.trigger_phrase"] == "mycat, ink"


def test_nodes(sd1, tmp_path):
    hp = stack(sd1, extras=False)
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        (lset,) = LoraLabMergeLoras().merge(hp, "svd", 4, 0)
        r = LoraLabSaveLora().save(lset, "loras/merged", "fp16")
        assert r["ui"]["files"][0] == {"filename": "merged_00001_.safetensors", "subfolder": "loras", "type": "output"}
        (tmp_path / "models" / "loras").mkdir(parents=True)
        saved = tmp_path / "out" / "loras" / "merged_00001_.safetensors"
        saved.rename(tmp_path / "models" / "loras" / "m.safetensors")
        (small,) = LoraLabResizeLora().resize("m.safetensors", 2, 0, "fixed", 0.0)
        assert {lay.rank for lay in small.layers.values() if lay.down is not None} == {2}
        (again,) = LoraLabResizeLora().resize("ignored", 1, 0, "sv_fro", 0.5, lora=small)
        assert {lay.rank for lay in again.layers.values()} == {1}
        (x,) = LoraLabExtractLora().extract(sd1.with_patches(()), hp, 8, 0, 0.0)
        assert x.layers
        assert LoraLabSaveLora().save(x, "loras/merged", "bf16")["result"][0].endswith("_00001_.safetensors")
        with pytest.raises(NodeInputError, match="'param'"):
            LoraLabResizeLora().resize("m.safetensors", 2, 0, "sv_ratio", 0.5)
        with pytest.raises(NodeInputError, match="'model'.*no LoRA"):
            LoraLabMergeLoras().merge(sd1.with_patches(()), "exact", 4, 0)


def test_cli_lora_tools(sd1, tiny_checkpoints, tmp_path, capsys):
    from lora_lab.nodes.model.checkpoint_save import save_single_file

    (tmp_path / "loras").mkdir()
    save_file(kohya(sd1, rank=4, seed=1), tmp_path / "loras" / "a.safetensors")
    save_file(kohya(sd1, rank=2, seed=2), tmp_path / "loras" / "b.safetensors")
    ckpt = save_single_file(tmp_path / "base.safetensors", sd1.with_patches(()))
    common = ["--models-dir", str(tmp_path), "-q"]
    runs = [["lora", "merge", "--model", str(ckpt), "--lora", "a:0.5", "--lora", "b:1:0",
             "-o", str(tmp_path / "m.safetensors")],
            ["lora", "resize", str(tmp_path / "m.safetensors"), "--rank", "3", "-o", str(tmp_path / "r.safetensors")],
            ["lora", "save", "b", "--model", str(ckpt), "--dtype", "bf16", "-o", str(tmp_path / "s.safetensors")],
            ["merge", str(ckpt), "--lora", "a", "-o", str(tmp_path / "tuned.safetensors")],
            ["lora", "extract", "--base", str(ckpt), "--tuned", str(tmp_path / "tuned.safetensors"), "--rank", "4",
             "--min-diff", "0", "-o", str(tmp_path / "x.safetensors")]]
    for argv in runs:
        assert cli.main(argv + common) == 0, (argv, capsys.readouterr().err)
    assert safe_open(str(tmp_path / "r.safetensors"), "pt").metadata()["ss_network_dim"] == "3"
    assert cli.main(runs[1] + common) == 1 and "exists" in capsys.readouterr().err
    assert cli.main(["lora", "resize", "a", "--rank", "0", "-o", str(tmp_path / "z.safetensors")] + common) == 1
    assert not (tmp_path / "z.safetensors").exists()


def test_extract_from_half_precision_loads_reads_the_files_in_fp32(tiny_checkpoints, tmp_path):
    """On a GPU both models load in bf16/fp16, whose rounding drowns a fine-tune's small
    differences; extraction then reads the unpatched weights from the .safetensors files in
    fp32 and gives what it gives on fp32 loads. Skeleton handles (nothing loaded) work too."""
    from lora_lab.nodes.model.checkpoint import load_single_file

    base_path = tiny_checkpoints["sd1"]
    base32 = load_single_file(base_path)
    sd = kohya(base32, rank=4, seed=3, unet_suffixes=ATTN, with_te=False)
    tuned_path = merge.merge_checkpoint(base32.with_patches((patcher.LoraPatch("t", parse_state_dict(sd, name="t")),)),
                                        Destination(tmp_path / "tuned.safetensors"), progress=False)
    tuned32 = load_single_file(tuned_path)
    assert next(tuned32.unet.parameters()).dtype == torch.float32
    ref = extract_lora(base32, tuned32, RankRule(8), min_diff=0.0)
    lowered = [(load_single_file(base_path, dtype=dt), load_single_file(tuned_path, dtype=dt))
               for dt in (torch.bfloat16, torch.float16)]
    for b, t in lowered + [(merge.skeleton_handle(base_path), merge.skeleton_handle(tuned_path))]:
        got = extract_lora(b, t, RankRule(8), min_diff=0.0)
        assert got.layers.keys() == ref.layers.keys() and len(ref.layers) >= 8
        for n, layer in ref.layers.items():
            torch.testing.assert_close(got.layers[n].delta(), layer.delta(), rtol=1e-4, atol=1e-7)
    # a handle whose source cannot be re-read falls back to its own (rounded) weights, with a warning
    b, t = lowered[0]
    rounded = extract_lora(b.with_patches(()), dataclasses.replace(t, source=""), RankRule(8), min_diff=0.0)
    err = max(float((rounded.layers[n].delta() - layer.delta()).abs().max()) for n, layer in ref.layers.items())
    assert err > 1e-4 * max(float(layer.delta().abs().max()) for layer in ref.layers.values())
