"""ComfyUI's model merging nodes on our handles (comfy_extras/nodes_model_merging.py, 0.3.64).

ComfyUI adds model 2's weights to a clone of model 1 as patches: for every key of model 2 that
model 1 has, weight1 *= strength_model, then weight1 += strength_patch * weight2 (ModelMergeSimple:
strength_patch 1 - ratio, strength_model ratio; Subtract: -m, m; Add: 1, 1) (both the
weights with each model's own patches applied, fp32 math; a key whose shapes differ is scaled
but not merged, with a warning). Here the result is materialised: a new module holding
model 1's patched weights combined that way, in model 1's dtype, and a handle on it with no
patches of its own, so LoRAs added later act on the merged weights as in ComfyUI. The input
handles and their modules are not changed (they are only activated, as for any use).

Keys are matched by ComfyUI's names: the UNet's LDM keys (what ModelMergeBlocks' prefixes
"input" / "middle" / "out" are matched against), the text encoders' state-dict keys under
ComfyUI's clip_l / clip_h / clip_g prefixes (so SD 1.x and SDXL share clip_l).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable

import torch

from ..io.notices import warn
from ..lora.patcher import activate
from ..model import ckpt_keys

log = logging.getLogger(__name__)

# text-encoder slot -> ComfyUI's CLIP key prefix, per family
CLIP_PREFIXES = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g")}
CLIP_SKIPPED = (".position_ids", ".logit_scale")  # CLIPMergeSimple leaves these to clip 1


def blend(w1: torch.Tensor, w2: torch.Tensor, strength_patch: float, strength_model: float, key: str) -> torch.Tensor:
    """ComfyUI's patch arithmetic for one merged key: fp32 copy of w1, *= strength_model (unless 1),
    += strength_patch * w2 (unless 0, or the shapes differ: then w1 is only scaled), in w1's dtype."""
    w = w1.to(torch.float32, copy=True)
    if strength_model != 1.0:
        w *= strength_model
    if strength_patch != 0.0 and w2.shape == w.shape:
        w += strength_patch * w2.to(torch.float32)
    return w.to(w1.dtype)


def unet_keys(unet) -> dict[str, str]:
    """LDM key (without 'model.diffusion_model.') -> the diffusers state-dict key, for every UNet tensor."""
    lookup = ckpt_keys.block_lookup(ckpt_keys.unet_block_pairs(dict(unet.config)), ldm_side=False)
    out = {}
    for key in unet.state_dict():
        hit = ckpt_keys.translate(key, lookup, to_diffusers=False)
        if hit is None:
            raise ValueError(f"UNet key {key!r} has no single-file name")
        out[hit[0]] = key
    return out


def _merge_modules(new: torch.nn.Module, new_keys: dict, other: dict,
                   ratios: Callable[[str], tuple[float, float]]) -> list[str]:
    """Write blend(new[k], other[k]) into `new` for every name in both (names -> state-dict keys);
    returns the names whose shapes differ (scaled, not merged)."""
    params = dict(new.state_dict(keep_vars=True))
    mismatched = []
    with torch.no_grad():
        for name, key in new_keys.items():
            if name not in other:
                continue
            strength_patch, strength_model = ratios(name)
            t = params[key]
            if strength_patch != 0.0 and other[name].shape != t.shape:
                mismatched.append(f"{name} {tuple(other[name].shape)} != {tuple(t.shape)}")
            t.data = blend(t.data, other[name], strength_patch, strength_model, name)
    return mismatched


def _warn_mismatched(what: str, mismatched: list[str]) -> None:
    if mismatched:
        warn(log, f"{what}: {len(mismatched)} weight(s) of the second model have another shape and were not merged "
                  f"(as in ComfyUI: the first model's weight is only scaled), e.g. {'; '.join(mismatched[:3])}")


def merge_unets(model1, model2, ratios: Callable[[str], tuple[float, float]]):
    """A new handle: model 1 (its patches baked) with model 2's UNet weights merged in; ratios(ldm_key)
    -> (strength_patch, strength_model) in the order ComfyUI's add_patches takes them (ModelMergeSimple:
    (1 - ratio, ratio), so ratio 1 keeps model 1)."""
    activate(model1)
    unet = copy.deepcopy(model1.unet)  # holds model 1's patched weights; the shared base is untouched
    activate(model2)
    theirs = {name: model2.unet.state_dict()[key] for name, key in unet_keys(model2.unet).items()}
    _warn_mismatched("model merge", _merge_modules(unet, unet_keys(unet), theirs, ratios))
    return dataclasses.replace(model1, unet=unet, patches=())


def clip_keys(handle) -> list[dict[str, str]]:
    """Per text encoder: ComfyUI's CLIP key (prefix.key) -> its state-dict key (skipped keys left out)."""
    out = []
    for prefix, model in zip(CLIP_PREFIXES[handle.family], handle.text_encoders):
        out.append({f"{prefix}.{k}": k for k in model.state_dict() if not k.endswith(CLIP_SKIPPED)})
    return out


def merge_clips(clip1_handle, clip2_handle, ratios: Callable[[str], tuple[float, float]]):
    """A new handle: clip 1's text encoders (its patches baked) with clip 2's weights merged in."""
    activate(clip1_handle)
    encoders = tuple(copy.deepcopy(m) for m in clip1_handle.text_encoders)
    activate(clip2_handle)
    theirs = {}
    for names, model in zip(clip_keys(clip2_handle), clip2_handle.text_encoders):
        sd = model.state_dict()
        theirs.update({name: sd[key] for name, key in names.items()})
    new = dataclasses.replace(clip1_handle, text_encoders=encoders, patches=())
    mismatched = []
    for names, model in zip(clip_keys(new), encoders):
        mismatched += _merge_modules(model, names, theirs, ratios)
    _warn_mismatched("CLIP merge", mismatched)
    return new


def block_ratio(ratios: dict[str, float]) -> Callable[[str], tuple[float, float]]:
    """ModelMergeBlocks: the ratio of the longest prefix a key starts with ('out' also covers
    output_blocks), else the first one given; as (strength_patch, strength_model) = (1 - ratio, ratio)."""
    default = next(iter(ratios.values()))

    def pick(name: str) -> tuple[float, float]:
        best, size = default, 0
        for prefix, r in ratios.items():
            if name.startswith(prefix) and size < len(prefix):
                best, size = r, len(prefix)
        return 1.0 - best, best

    return pick


__all__ = ["CLIP_PREFIXES", "blend", "block_ratio", "clip_keys", "merge_clips", "merge_unets", "unet_keys"]
