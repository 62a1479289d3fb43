"""Metadata of merged checkpoints: modelspec keys, merged_from (base, LoRAs with strengths
and hashes) and the graph as ComfyUI's CheckpointSave writes it."""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from ..io.errors import LoraLabError
from ..model.handle import ModelHandle

_STALE_META = ("hash", "merged_from", "prompt", "workflow")  # about the source, wrong for the result


def architecture(family: str, prediction_type: str) -> str:
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if family == "sd2":
        return "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"


def resolution(family: str, prediction_type: str) -> int:
    return 1024 if family == "sdxl" else (768 if prediction_type == "v_prediction" else 512)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lora_records(handle: ModelHandle) -> list[dict]:
    """Name, strengths and hashes of each LoRA of the stack (A1111's sha256 of the file)."""
    from ..lora.lora_stack import resolve_lora

    out = []
    for p in handle.patches:
        rec = {"name": p.name, "strength_unet": p.strength_unet, "strength_text": p.strength_text}
        if p.block_weights is not None:
            rec["block_weights"] = list(p.block_weights)
        sha = p.file_hash
        if not sha:
            try:
                sha = file_sha256(resolve_lora(p.name))
            except (LoraLabError, OSError):
                sha = ""
        if sha:
            rec["sha256"] = sha
        for k in ("sshs_model_hash", "modelspec.title"):
            if p.raw.metadata.get(k):
                rec[k.split(".")[-1]] = p.raw.metadata[k]
        out.append(rec)
    return out


def checkpoint_metadata(handle: ModelHandle, title: str, source_meta: dict | None = None, prompt=None,
                        extra_pnginfo: dict | None = None, dropped: list | None = None) -> dict:
    """modelspec keys, merged_from (base + LoRAs with strengths and hashes), and the graph
    as ComfyUI's CheckpointSave writes it (`prompt`, then one key per extra_pnginfo entry)."""
    meta = {k: v for k, v in (source_meta or {}).items() if not any(s in k for s in _STALE_META)}
    v = handle.prediction_type == "v_prediction"
    reso = resolution(handle.family, handle.prediction_type)
    loras = lora_records(handle)
    base = Path(handle.source).name if handle.source else ""
    meta.update({
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture(handle.family, handle.prediction_type),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": title,
        "modelspec.date": datetime.datetime.now().replace(microsecond=0).isoformat(),
        "modelspec.resolution": f"{reso}x{reso}",
        "modelspec.prediction_type": "v" if v else "epsilon",
        "modelspec.predict_key": "v" if v else "epsilon",
        "modelspec.merged_from": ", ".join([base] + [r["name"] for r in loras] if base else [r["name"] for r in loras]),
        "merged_from": json.dumps({"base": base, "loras": loras}),
    })
    if dropped:
        meta["lora_lab.dropped_keys"] = f"{len(dropped)} EMA tensors (model_ema.*): the base without the LoRAs"
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    for k, val in (extra_pnginfo or {}).items():
        meta[k] = json.dumps(val)
    return meta
