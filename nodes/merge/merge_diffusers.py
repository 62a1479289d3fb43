"""Merge to Checkpoint, diffusers format: a model folder (model_index.json, unet/, vae/,
text_encoder*/, tokenizer*/, scheduler/) written from the patched shared modules.

Weights are streamed per tensor (merge_stream.write_stream), text encoders with the
canonical `text_model.` names that diffusers folders in the wild use. For SD 2.x the text
encoder's last layer is left out, as in diffusers' own SD 2.x folders (they only use the
penultimate output); model_index.json says how many were dropped. The merge metadata goes
into the UNet file's header. The folder appears atomically (built under a temp name).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io.checks import check_fits
from ..io.destination import Destination
from ..io.safetensors_stream import state_dict_items, write_stream

SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "timestep_spacing": "leading",
             "steps_offset": 1}


def _text_state(model, keep_layers: int) -> dict:
    from ..model.checkpoint_save import canonical_clip_state_dict

    sd = canonical_clip_state_dict(model)
    return {k: v for k, v in sd.items()
            if not (k.startswith("text_model.encoder.layers.") and int(k.split(".")[3]) >= keep_layers)}


def _checked(sd: dict, dtype, where: str) -> dict:
    """`sd` once every tensor is finite and fits the written dtype (a huge strength in fp16
    would write inf)."""
    for key, t in sd.items():
        check_fits(t, dtype or t.dtype, where, key)
    return sd


def write_diffusers(handle, dest: Destination, dtype, make_metadata) -> Path:
    """Write the patched model as a diffusers folder at `dest`; returns its path."""
    from ..lora.patcher import activate
    from ..model.handle import is_skeleton

    if is_skeleton(handle) or any(t is None for t in handle.tokenizers):
        raise ValueError("the diffusers format needs the loaded model (weights and tokenizers)")
    activate(handle)
    sdxl = handle.family == "sdxl"
    with torch.no_grad(), dest.writing("", is_dir=True) as tmp:
        title = dest.target.name if dest.target is not None else dest.stem
        for name, model, meta in (("unet", handle.unet, dict(make_metadata(title), format="pt")),
                                  ("vae", handle.vae, {"format": "pt"})):
            model.save_config(tmp / name)
            write_stream(tmp / name / "diffusion_pytorch_model.safetensors",
                         state_dict_items(_checked(model.state_dict(), dtype, name), dtype), meta)
        dropped = handle.text_layers_dropped
        names = ("text_encoder", "text_encoder_2") if sdxl else ("text_encoder",)
        toks = ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",)
        for name, tname, enc, tok in zip(names, toks, handle.text_encoders, handle.tokenizers, strict=True):
            cfg = enc.config.to_dict()
            keep = cfg["num_hidden_layers"]
            if handle.family == "sd2" and dropped == 0:
                keep -= 1  # diffusers' SD 2.x layout: the last layer is never used
            (tmp / name).mkdir()
            config = type(enc.config)(**dict(cfg, num_hidden_layers=keep))
            config.save_pretrained(tmp / name)
            write_stream(tmp / name / "model.safetensors",
                         state_dict_items(_checked(_text_state(enc, keep), dtype, name), dtype),
                         {"format": "pt"})
            tok.save_pretrained(tmp / tname)
        (tmp / "scheduler").mkdir()
        sched = dict(SCHEDULER, prediction_type=handle.prediction_type)
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
        index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"]}
        if sdxl:
            index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                         tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
        else:
            index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        if handle.family == "sd2":
            index["lora_lab_text_layers_dropped"] = max(dropped, 1)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return dest.path
