"""Saving LoRAs in kohya's format, with its metadata and its precomputed hashes.

Keys, as kohya's sd-scripts write them:
  SD 1.x / 2.x UNet   lora_unet_<diffusers module path, dots as _>   (down_blocks_0_attentions_0_...)
  SDXL UNet           lora_unet_<LDM / sgm module path>              (input_blocks_4_1_transformer_blocks_0_...)
  text encoders       lora_te_text_model_... (SD 1.x / 2.x), lora_te1_text_model_... / lora_te2_text_model_...
                      (SDXL; both with HF CLIP names, also for the OpenCLIP towers)
  per layer           .lora_down.weight [r, in(, kh, kw)], .lora_up.weight [out, r(, 1, 1)],
                      .alpha (a float32 scalar), .lora_up.bias when the layer's bias changes;
                      1-D (norm) deltas as LyCORIS full diffs .diff / .diff_b
Metadata: ss_network_module = networks.lora, ss_network_dim / ss_network_alpha ("Dynamic"
when layers differ), ss_network_args {conv_dim, conv_alpha} for 3x3 layers,
ss_base_model_version, ss_v2, ss_output_name, ss_training_comment, modelspec.* for a LoRA,
and sshs_model_hash / sshs_legacy_hash computed as kohya's precalculate_safetensors_hashes
does: the file serialised with only its ss_* metadata; model hash = sha256 of everything
after the header (what sd-webui-additional-networks computes from the file), legacy hash =
first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import struct
from pathlib import Path

import torch

from ..io.destination import Destination
from ..io.errors import LoraLabError
from .lora_tools import LoraLayer, LoraSet, factorable, lora_factors
from .merge_meta import architecture, resolution

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
IMPL_SGM = "https://github.com/Stability-AI/generative-models"
_REWRITTEN = ("ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_network_module", "sshs_model_hash",
              "sshs_legacy_hash", "modelspec.hash_sha256")


def base_model_version(family: str, prediction_type: str) -> str:
    if family == "sdxl":
        return "sdxl_base_v1-0"
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if prediction_type == "v_prediction" else "")


def lora_state_dict(lset: LoraSet, dtype: torch.dtype) -> dict:
    sd = {}
    for name in sorted(lset.layers):
        lay = lset.layers[name]
        if lay.down is not None:
            sd[f"{name}.lora_down.weight"] = lay.down.to(dtype).contiguous()
            sd[f"{name}.lora_up.weight"] = lay.up.to(dtype).contiguous()
            alpha = lay.alpha if lay.alpha is not None else lay.rank
            sd[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
            if lay.bias is not None:
                sd[f"{name}.lora_up.bias"] = lay.bias.to(dtype).contiguous()
            continue
        if lay.diff is not None:
            sd[f"{name}.diff"] = lay.diff.to(dtype).contiguous()
        if lay.bias is not None:
            sd[f"{name}.diff_b"] = lay.bias.to(dtype).contiguous()
    return sd


def _dim_alpha(layers: list) -> tuple[str, str]:
    ranks = {lay.rank for lay in layers}
    alphas = {float(lay.alpha if lay.alpha is not None else lay.rank) for lay in layers}
    return (str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
            str(alphas.pop()) if len(alphas) == 1 else "Dynamic")


def lora_metadata(lset: LoraSet, title: str) -> dict:
    meta = {k: str(v) for k, v in lset.metadata.items() if k not in _REWRITTEN}
    lowrank = [lay for lay in lset.layers.values() if lay.down is not None]
    linear = [lay for lay in lowrank if not lay.is_conv]
    conv = [lay for lay in lowrank if lay.is_conv]
    dim, alpha = _dim_alpha(linear or conv) if lowrank else ("0", "0")
    meta.update({"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": alpha,
                 "ss_output_name": title})
    if conv:
        cdim, calpha = _dim_alpha(conv)
        meta["ss_network_args"] = json.dumps({"conv_dim": cdim, "conv_alpha": calpha})
    if lset.comment:
        meta["ss_training_comment"] = lset.comment
    v = lset.prediction_type == "v_prediction"
    if lset.family:
        reso = resolution(lset.family, lset.prediction_type)
        meta.update({
            "ss_base_model_version": base_model_version(lset.family, lset.prediction_type),
            "ss_v2": str(lset.family == "sd2"),
            "modelspec.architecture": architecture(lset.family, lset.prediction_type) + "/lora",
            "modelspec.implementation": IMPL_SGM if lset.family == "sdxl" else "diffusers",
            "modelspec.resolution": f"{reso}x{reso}",
        })
    meta.update({"modelspec.sai_model_spec": "1.0.0", "modelspec.title": title,
                 "modelspec.date": datetime.datetime.now().replace(microsecond=0).isoformat(),
                 "modelspec.prediction_type": "v" if v else "epsilon"})
    if lset.sources:
        meta["modelspec.merged_from"] = ", ".join(str(s.get("name", "")) for s in lset.sources)
        meta["lora_lab.sources"] = json.dumps(list(lset.sources))
    return meta


def addnet_hashes(sd: dict, metadata: dict) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) exactly as kohya's precalculate_safetensors_hashes."""
    from safetensors.torch import save

    data = save(sd, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    (n,) = struct.unpack("<Q", data[:8])
    view = memoryview(data)
    return hashlib.sha256(view[8 + n:]).hexdigest(), hashlib.sha256(view[0x100000:0x110000]).hexdigest()[:8]


def save_lora(lset: LoraSet, dest: Destination, dtype: str = "fp16") -> Path:
    """Write `lset` as a kohya LoRA file at `dest` (atomically); returns the path."""
    from ..io.safetensors_write import write_safetensors

    if dtype not in SAVE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(SAVE_DTYPES)}")
    if not lset.layers:
        raise LoraLabError("the LoRA has no layers")
    dest.check()
    sd = lora_state_dict(lset, SAVE_DTYPES[dtype])
    title = dest.target.stem if dest.target is not None else dest.stem
    meta = lora_metadata(lset, title)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = addnet_hashes(sd, meta)
    with dest.writing(".safetensors") as tmp:
        write_safetensors(sd, tmp, meta)
    return dest.path


def family_of(raw) -> str | None:
    """The family a LoRA file is for: its shapes, else kohya's ss_base_model_version."""
    if raw.family_hint:
        return raw.family_hint
    version = str(raw.metadata.get("ss_base_model_version", ""))
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2"):
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    return None


def lora_set_from_raw(raw, family: str | None = None) -> LoraSet:
    """A parsed LoRA file as it is (names kept; a file `scale` and tucker cores folded in)."""
    layers = {}
    for name, a in raw.adapters.items():
        if factorable(a):
            up2, down2 = lora_factors(a, None)
            r = down2.shape[0]
            down_shape = (a.tensors["down"].shape[1], *a.tensors["mid"].shape[2:]) if "mid" in a.tensors \
                else tuple(a.tensors["down"].shape[1:])
            conv = len(down_shape) == 3
            alpha = (a.alpha if a.alpha is not None else a.tensors["down"].shape[0]) * a.extra_scale
            alpha *= r / a.tensors["down"].shape[0]  # a folded tucker core changes the rank
            layers[name] = LoraLayer(up2.reshape(up2.shape[0], r, 1, 1) if conv else up2,
                                     down2.reshape(r, *down_shape), float(alpha),
                                     None if a.bias is None else a.bias * a.extra_scale)
        elif a.kind == "diff" and ("diff" not in a.tensors or a.tensors["diff"].ndim == 1):
            d = a.tensors.get("diff")
            layers[name] = LoraLayer(diff=None if d is None else d * a.extra_scale,
                                     bias=None if a.bias is None else a.bias * a.extra_scale)
        else:
            kind = a.kind + (" + DoRA" if a.dora_scale is not None else "")
            raise LoraLabError(f"{raw.name}: layer {name!r} is {kind}; saving it as a kohya LoRA needs the "
                               "model (give --model: it is factored exactly)")
    pred = "v_prediction" if raw.metadata.get("modelspec.prediction_type") == "v" else "epsilon"
    return LoraSet(family or family_of(raw), pred, layers, dict(raw.metadata),
                   raw.metadata.get("ss_training_comment", ""))
