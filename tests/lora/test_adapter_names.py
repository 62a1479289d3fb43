"""Names ComfyUI reads that the first formats did not: SimpleTuner's `lycoris_` prefix, PEFT
PeftModel's `base_model.model.` prefix, SD 2.x flat OpenCLIP names (`lora_te_transformer_
resblocks_N_attn_in_proj`, fused q/k/v rows)."""
from __future__ import annotations

import pytest
import torch
from conftest import make_handle
from lora_factory import kohya, peft_unet

from lora_lab.nodes.lora import patcher
from lora_lab.nodes.lora.lora_formats import parse_state_dict
from lora_lab.nodes.lora.patcher import LoraPatch


def _snapshot(h):
    return {f"{i}.{k}": v.clone() for i, m in enumerate((h.unet, *h.text_encoders)) for k, v in m.state_dict().items()}


def _applied(h, sd, su=1.0, st=1.0):
    p = h.with_patches((LoraPatch("t", parse_state_dict(sd, name="t"), su, st),))
    patcher.activate(p)
    snap = _snapshot(h)
    report = patcher.match_report(h, parse_state_dict(sd, name="t"))
    patcher.restore(p)
    return snap, report


@pytest.fixture(scope="module")
def sd1():
    return make_handle("sd1", seed=41)


def test_lycoris_prefix_is_kohya(sd1):
    base = kohya(sd1, rank=2, with_te=False)
    lyco = {k.replace("lora_unet_", "lycoris_", 1): v for k, v in base.items()}
    want, _ = _applied(sd1, base)
    got, report = _applied(sd1, lyco)
    assert not report.unmatched and [k for k in want if not torch.equal(want[k], got[k])] == []
    assert [k for k in want if not torch.equal(want[k], _snapshot(sd1)[k])]  # it did change the weights


@pytest.mark.parametrize("prefix", ["base_model.model.", "unet.base_model.model."])
def test_peft_model_prefix(sd1, prefix):
    want, _ = _applied(sd1, peft_unet(sd1, rank=2, prefix="unet."))
    got, report = _applied(sd1, peft_unet(sd1, rank=2, prefix=prefix))
    assert not report.unmatched and [k for k in want if not torch.equal(want[k], got[k])] == []


def test_peft_model_prefix_on_the_text_encoder(sd1):
    te = sd1.text_encoders[0]
    q = te.get_submodule("text_model.encoder.layers.0.self_attn.q_proj" if hasattr(te, "text_model")
                         else "encoder.layers.0.self_attn.q_proj")
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, q.weight.shape[1], generator=g), torch.randn(q.weight.shape[0], 2, generator=g)
    name = "text_model.encoder.layers.0.self_attn.q_proj"
    want, _ = _applied(sd1, {f"text_encoder.{name}.lora_A.weight": a, f"text_encoder.{name}.lora_B.weight": b})
    got, report = _applied(sd1, {f"base_model.model.{name}.lora_A.weight": a, f"base_model.model.{name}.lora_B.weight": b})
    assert not report.unmatched and [k for k in want if not torch.equal(want[k], got[k])] == []


def test_sd2_flat_openclip_in_proj_names():
    h = make_handle("sd2", seed=42)
    attn = h.text_encoders[0].get_submodule(
        "text_model.encoder.layers.1.self_attn" if hasattr(h.text_encoders[0], "text_model")
        else "encoder.layers.1.self_attn")
    c = attn.q_proj.weight.shape[0]
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(2, c, generator=g), torch.randn(3 * c, 2, generator=g)
    fc_down, fc_up = torch.randn(2, c, generator=g), torch.randn(attn.out_proj.weight.shape[0], 2, generator=g)
    before = [getattr(attn, n).weight.clone() for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
    sd = {"lora_te_transformer_resblocks_1_attn_in_proj.lora_down.weight": down,
          "lora_te_transformer_resblocks_1_attn_in_proj.lora_up.weight": up,
          "lora_te_transformer_resblocks_1_attn_in_proj.alpha": torch.tensor(1.0),
          "lora_te_transformer_resblocks_1_attn_out_proj.lora_down.weight": fc_down,
          "lora_te_transformer_resblocks_1_attn_out_proj.lora_up.weight": fc_up}
    raw = parse_state_dict(sd, name="sd2flat")
    report = patcher.match_report(h, raw)
    assert not report.unmatched
    p = h.with_patches((LoraPatch("sd2flat", raw, 1.0, 0.5),))
    patcher.activate(p)
    delta = 0.5 * (1.0 / 2) * up @ down  # strength · alpha/rank · up @ down, split by rows
    for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
        torch.testing.assert_close(getattr(attn, n).weight, before[j] + delta[j * c:(j + 1) * c])
    torch.testing.assert_close(attn.out_proj.weight, before[3] + 0.5 * fc_up @ fc_down)
    patcher.restore(p)
    assert torch.equal(attn.q_proj.weight, before[0])
