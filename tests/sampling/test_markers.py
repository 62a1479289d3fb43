"""Checkpoint markers ComfyUI honours: `ztsnr` (zero terminal SNR) and `edm_vpred.*` (EDM v-prediction)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_lab.nodes.model.checkpoint import load_single_file
from lora_lab.nodes.sampling.schedules import (
    DiscreteSchedule,
    UnsupportedModelError,
    get_sigmas,
    rescale_zero_terminal_snr,
    schedule_for,
)
from lora_lab.nodes.sampling.txt2img import SampleSettings, generate
from safetensors.torch import load_file, save_file


def test_zero_terminal_snr_formula():
    plain, z = DiscreteSchedule("v_prediction"), DiscreteSchedule("v_prediction", zsnr=True)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ab = torch.cumprod(1 - betas, 0)  # alpha_bar, float64 as the LDM code
    s0, sT = ab[0].sqrt(), ab[-1].sqrt()
    want = (ab.sqrt() - sT) * s0 / (s0 - sT)
    want = want**2
    want[-1] = 4.8973451890853435e-08
    assert torch.allclose(z.sigmas.double(), ((1 - want) / want) ** 0.5, rtol=1e-6)
    assert torch.allclose(z.sigmas[0], plain.sigmas[0], rtol=1e-5)  # the first step keeps its noise level
    assert 4500 < float(z.sigma_max) < 4540  # alpha_bar 4.9e-8 at the end instead of ~0.0047
    assert float(get_sigmas(z, "karras", 5)[0]) == pytest.approx(float(z.sigma_max), rel=1e-5)
    first = rescale_zero_terminal_snr(torch.tensor([1.0, 2.0], dtype=torch.float64))[0]
    assert float(first) == pytest.approx(1.0, rel=1e-12)


def marked(tmp_path, tiny_checkpoints, **extra):
    sd = load_file(tiny_checkpoints["sdxl"])
    sd.update({k: torch.tensor(v) if not isinstance(v, torch.Tensor) else v for k, v in extra.items()})
    path = tmp_path / "marked.safetensors"
    save_file(sd, path)
    return load_single_file(path)


def test_ztsnr_with_v_pred_changes_sampling(tmp_path, tiny_checkpoints):
    h = marked(tmp_path, tiny_checkpoints, v_pred=torch.tensor([]), ztsnr=torch.tensor([]))
    assert h.zsnr and h.prediction_type == "v_prediction" and schedule_for(h).zsnr
    s = SampleSettings("a fox", steps=2, width=64, height=64, scheduler="karras")
    assert not torch.equal(generate(h, s), generate(dataclasses.replace(h, zsnr=False), s))


def test_edm_vpred_is_refused_not_sampled_wrong(tmp_path, tiny_checkpoints):
    h = marked(tmp_path, tiny_checkpoints, **{"edm_vpred.sigma_max": torch.tensor(120.0),
                                              "edm_vpred.sigma_min": torch.tensor(0.002)})
    assert h.edm_vpred == (pytest.approx(0.002), 120.0) and h.prediction_type == "v_prediction"
    with pytest.raises(UnsupportedModelError, match="EDM v-prediction"):
        generate(h, SampleSettings("a fox", steps=2, width=64, height=64))
