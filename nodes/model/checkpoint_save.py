"""diffusers components -> single-file (LDM / A1111 / sgm) checkpoint layout.

The inverse of checkpoint.convert_single_file, from the same key tables. The keys written are
those of real checkpoints (see shared/reference): UNet, VAE and text encoders; no EMA, no DDPM
buffers. A v-prediction model also gets ComfyUI's `v_pred` marker key and modelspec metadata.
"""
from __future__ import annotations

import torch

from ..io.safetensors_write import save_safetensors
from . import ckpt_keys


def canonical_clip_state_dict(model) -> dict:
    """A CLIP text model's state dict with `text_model.` names, whatever transformers version."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if k.startswith("text_model.") or k == "text_projection.weight":
            out[k] = v
        else:
            out["text_model." + k] = v
    return out


def ldm_state_dict(family: str, unet, vae, text_encoders, unet_sd=None) -> dict:
    """Single-file state dict of the components (tensors shared, not copied, where possible)."""
    out, left = ckpt_keys.diffusers_to_ldm(
        unet_sd if unet_sd is not None else unet.state_dict(),
        ckpt_keys.unet_block_pairs(dict(unet.config)), ckpt_keys.UNET_PREFIX)
    vae_sd, left_vae = ckpt_keys.diffusers_to_ldm(
        vae.state_dict(), ckpt_keys.vae_block_pairs(dict(vae.config)), ckpt_keys.VAE_PREFIX)
    if left or left_vae:
        raise ValueError(f"keys without a single-file name: {(left + left_vae)[:5]}")
    out.update(vae_sd)
    for (prefix, layout), model in zip(ckpt_keys.TEXT_PREFIXES[family], text_encoders):
        sd = canonical_clip_state_dict(model)
        if layout == "hf":
            out.update(ckpt_keys.hf_clip_to_ldm(sd, prefix))
            n_pos = sd["text_model.embeddings.position_embedding.weight"].shape[0]
            out[prefix + "text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
        else:
            out.update(ckpt_keys.diffusers_to_openclip(sd, prefix))
    return out


def save_single_file(path, handle_or_parts, dtype=None, metadata=None, overwrite=False):
    """Write a single-file checkpoint atomically. `handle_or_parts` is a ModelHandle."""
    h = handle_or_parts
    sd = ldm_state_dict(h.family, h.unet, h.vae, h.text_encoders)
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    meta = {"modelspec.prediction_type": "v" if h.prediction_type == "v_prediction" else "epsilon"}
    if h.prediction_type == "v_prediction":
        sd["v_pred"] = torch.tensor([])
    meta.update(metadata or {})
    return save_safetensors(sd, path, metadata=meta, overwrite=overwrite)
