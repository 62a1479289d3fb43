"""Bridges inside a real ComfyUI (in process; COMFYUI_DIR, as test_comfy_lora_parity.py):
ComfyUI -> LoRA Lab -> ComfyUI leaves every weight bit-identical; patches ComfyUI's own
LoraLoader added are in the LoRA Lab model; our stack travels to ComfyUI as patches that give
our patcher's weights.

    COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python -m pytest tests/defs/test_comfy_bridge.py
"""
from __future__ import annotations

import pytest
import torch
from comfy_models import write_small_sd15
from lora_factory import kohya
from lora_lab.nodes.defs.comfy_bridge import LoraLabFromComfy, LoraLabToComfy
from lora_lab.nodes.defs.node_defs import LoraLabLoraLoader
from lora_lab.nodes.io import paths
from lora_lab.nodes.lora import patcher
from lora_lab.nodes.lora.comfy_keys import COMFY_TEXT
from lora_lab.nodes.model import checkpoint_save
from safetensors.torch import save_file
from test_comfy_lora_parity import _import_comfy


@pytest.fixture(scope="module")
def comfy():
    return _import_comfy()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_small_sd15(tmp_path_factory.mktemp("ckpt") / "small-sd15.safetensors")


@pytest.fixture(scope="module")
def loaded(comfy, ckpt):
    return comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=True)[:3]


def weights(comfy, patcher_, sd=None) -> dict:
    """What ComfyUI samples with: each patch through comfy.lora.calculate_weight (fp32), rounded."""
    out = {k: v.detach().clone() for k, v in (sd if sd is not None else patcher_.model.state_dict()).items()}
    for key, patches in patcher_.patches.items():
        w = out[key]
        out[key] = comfy.lora.calculate_weight(patches, w.to(torch.float32, copy=True), key).to(w.dtype)
    return out


def unet_of(comfy, model):
    return {k: v for k, v in weights(comfy, model).items() if k.startswith("diffusion_model.")}


# ComfyUI builds CLIP-L with a text_projection that SD 1.x checkpoints do not carry: left
# uninitialised, never used by SD 1.x, dropped again when ComfyUI saves (supported_models.SD15).
NOT_IN_CHECKPOINT = ("clip_l.transformer.text_projection.weight",)


def bit_diff(a, b):
    a = {k: v for k, v in a.items() if k not in NOT_IN_CHECKPOINT}
    b = {k: v for k, v in b.items() if k not in NOT_IN_CHECKPOINT}
    assert a.keys() == b.keys()
    return [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]


def test_round_trip_is_bit_identical(comfy, loaded):
    model, clip, vae = loaded
    (handle,) = LoraLabFromComfy().convert(model, clip, vae)
    assert handle.family == "sd1" and handle.patches == ()
    m2, c2, v2 = LoraLabToComfy().convert(handle)
    assert not bit_diff(unet_of(comfy, m2), unet_of(comfy, model))
    assert not bit_diff(weights(comfy, c2.patcher), weights(comfy, clip.patcher))
    assert not bit_diff(v2.first_stage_model.state_dict(), vae.first_stage_model.state_dict())


def test_comfy_lora_patches_are_baked_into_the_lora_lab_model(comfy, loaded, tmp_path):
    model, clip, vae = loaded
    (base,) = LoraLabFromComfy().convert(model, clip, vae)
    base_unet = unet_of(comfy, model)  # now, while ComfyUI holds no clone's patches in the shared modules
    lora = kohya(base, rank=4, seed=3)
    m_l, c_l = comfy.sd.load_lora_for_models(model, clip, lora, 0.9, 0.5)
    want_unet, want_clip = unet_of(comfy, m_l), weights(comfy, c_l.patcher)
    (baked,) = LoraLabFromComfy().convert(m_l, c_l, vae)
    m3, c3, _ = LoraLabToComfy().convert(baked)
    assert not bit_diff(unet_of(comfy, m3), want_unet)
    assert not bit_diff(weights(comfy, c3.patcher), want_clip)
    assert bit_diff(want_unet, base_unet)  # the LoRA did change weights
    # and our stack on a LoRA Lab model reaches ComfyUI as patches giving our patcher's weights
    (folder := tmp_path / "models" / "loras").mkdir(parents=True)
    save_file(lora, folder / "k.safetensors")
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        ours, _ = LoraLabLoraLoader().load(base, "k", 0.9, 0.5)
        m4, c4, _ = LoraLabToComfy().convert(ours)
        patcher.activate(ours)
        try:
            ldm = checkpoint_save.ldm_state_dict("sd1", ours.unet, ours.vae, ours.text_encoders)
            our_unet = {k[len("model."):]: v.clone() for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
            pre = COMFY_TEXT["sd1"][0][1]
            our_clip = {pre + k: v.clone() for k, v in checkpoint_save.canonical_clip_state_dict(ours.text_encoders[0]).items()}
        finally:
            patcher.restore(ours)
    got_unet = unet_of(comfy, m4)
    assert not bit_diff(got_unet, our_unet)
    got_clip = weights(comfy, c4.patcher)
    # ComfyUI holds this CLIP in fp16, the LoRA Lab model in the UNet's fp32: the same fp32 math, rounded once
    assert not bit_diff({k: got_clip[k] for k in our_clip}, {k: v.to(got_clip[k].dtype) for k, v in our_clip.items()})
