"""Our key index on ComfyUI's models: which ComfyUI state-dict key each LoRA target is.

ComfyUI holds an SD model as a ModelPatcher around `BaseModel` (UNet keys
`diffusion_model.<LDM path>.weight`) and a CLIP whose patcher wraps the text encoder(s) in
HF layout, OpenCLIP towers included (`clip_l.transformer.text_model.…` for CLIP-L,
`clip_h.…` for SD 2.x's OpenCLIP-H, `clip_g.…` for SDXL's bigG, q/k/v as separate Linear
layers, `text_projection.weight` as a Linear). Nothing here imports ComfyUI: the inputs are
`{key: shape}` dicts read off its state dicts.

- `skeleton_from_comfy(unet_shapes, clip_shapes)`: a ModelHandle of meta-device diffusers
  modules with the same layer shapes (configs inferred as for a checkpoint file), so the
  very KeyIndex, match report and family checks of our own nodes run on it.
- `comfy_key(family, index, target, param)`: the ComfyUI key of one of that index's targets.
- `comfy_patch_keys(handle)`: the patcher's plan for the handle, keyed by ComfyUI keys.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch

from ..io.errors import LoraLabError
from ..model import ckpt_config, ckpt_keys
from ..model.handle import ModelHandle
from .lora_keys import Target

COMFY_UNET_PREFIX = "diffusion_model."
# (component, ComfyUI prefix of that encoder, our LDM prefix, layout in the single-file checkpoint)
COMFY_TEXT = {
    "sd1": (("te1", "clip_l.transformer.", "cond_stage_model.transformer.", "hf"),),
    "sd2": (("te1", "clip_h.transformer.", "cond_stage_model.model.", "openclip"),),
    "sdxl": (("te1", "clip_l.transformer.", "conditioner.embedders.0.transformer.", "hf"),
             ("te2", "clip_g.transformer.", "conditioner.embedders.1.model.", "openclip")),
}
# The text towers of each family at full size, for a model without its CLIP (model-only use):
# (hidden, layers, mlp width, projection) per encoder.
STANDARD_TEXT = {"sd1": ((768, 12, 3072, 768),), "sd2": ((1024, 24, 4096, 1024),),
                 "sdxl": ((768, 12, 3072, 768), (1280, 32, 5120, 1280))}


def family_from_shapes(unet_shapes: dict, clip_shapes: dict | None) -> str:
    """'sd1' | 'sd2' | 'sdxl' from ComfyUI key shapes (the CLIP's names, else the UNet's layout)."""
    if COMFY_UNET_PREFIX + "input_blocks.0.0.weight" not in unet_shapes:
        sample = ", ".join(sorted(unet_shapes)[:3]) or "no tensors"
        raise LoraLabError(f"not a Stable Diffusion UNet (no {COMFY_UNET_PREFIX}input_blocks.0.0.weight; "
                           f"first keys: {sample})")
    if clip_shapes:
        has = lambda p: any(k.startswith(p) for k in clip_shapes)
        if has("clip_g.") and has("clip_l."):
            return "sdxl"
        if has("clip_h."):
            return "sd2"
        if has("clip_l.") and not has("clip_g."):
            return "sd1"
        raise LoraLabError(f"unsupported CLIP (keys {sorted(clip_shapes)[:3]}): LoRA Lab knows SD 1.x, "
                           "SD 2.x and SDXL base text encoders")
    if COMFY_UNET_PREFIX + "label_emb.0.0.weight" in unet_shapes:
        return "sdxl"
    proj = [s for k, s in unet_shapes.items() if k.endswith(".proj_in.weight")]
    return "sd2" if proj and len(proj[0]) == 2 else "sd1"


def _standard_text_shapes(family: str, unet_shapes: dict) -> dict:
    """LDM text-encoder shapes of the family's full-size towers (a model given without CLIP)."""
    out: dict = {}
    for (_, _, prefix, layout), (hidden, layers, mlp, proj) in zip(COMFY_TEXT[family], STANDARD_TEXT[family]):
        if family == "sdxl" and layout == "openclip":
            adm_in = unet_shapes[COMFY_UNET_PREFIX + "label_emb.0.0.weight"][1]
            # pooled width + 6 embedded sizes = the class embedding's input (tiny models are narrower)
            proj = proj if adm_in - proj > 0 and (adm_in - proj) % 6 == 0 else adm_in - 6 * (adm_in // 12)
        if layout == "hf":
            tm = prefix + "text_model."
            out[tm + "embeddings.token_embedding.weight"] = (49408, hidden)
            out[tm + "embeddings.position_embedding.weight"] = (77, hidden)
            for i in range(layers):
                out[f"{tm}encoder.layers.{i}.mlp.fc1.weight"] = (mlp, hidden)
        else:
            out[prefix + "token_embedding.weight"] = (49408, hidden)
            out[prefix + "positional_embedding"] = (77, hidden)
            out[prefix + "text_projection"] = (hidden, proj)
            for i in range(layers):
                out[f"{prefix}transformer.resblocks.{i}.mlp.c_fc.weight"] = (mlp, hidden)
    return out


def ldm_shapes(unet_shapes: dict, clip_shapes: dict | None, family: str) -> dict:
    """The single-file checkpoint layout's {key: shape} for ComfyUI's UNet and CLIP shapes."""
    out = {"model." + k: tuple(s) for k, s in unet_shapes.items() if k.startswith(COMFY_UNET_PREFIX)}
    if not clip_shapes:
        out.update(_standard_text_shapes(family, unet_shapes))
        return out
    for _, comfy_pre, ldm_pre, layout in COMFY_TEXT[family]:
        hf = {k[len(comfy_pre):]: tuple(s) for k, s in clip_shapes.items() if k.startswith(comfy_pre)}
        hf = {k: s for k, s in hf.items() if k.startswith(("text_model.", "text_projection."))}
        if layout == "hf":
            out.update({ldm_pre + k: s for k, s in hf.items() if k.startswith("text_model.")})
            continue
        meta = {k: torch.empty(s, device="meta") for k, s in hf.items()}
        out.update({k: tuple(v.shape) for k, v in ckpt_keys.diffusers_to_openclip(meta, ldm_pre).items()})
    return out


def _build(shapes: dict, family: str) -> ModelHandle:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_cfg = ckpt_config.infer_unet_config(shapes, family)
    text_cfgs = ckpt_config.infer_text_configs(shapes, family)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        encoders = tuple((CLIPTextModelWithProjection if (family == "sdxl" and i == 1) else CLIPTextModel)(
            CLIPTextConfig(**cfg)) for i, cfg in enumerate(text_cfgs))
    return ModelHandle(family=family, prediction_type="epsilon", unet=unet, vae=None, text_encoders=encoders,
                       tokenizers=(None,) * len(encoders), source="ComfyUI model")


_SKELETONS: OrderedDict = OrderedDict()  # shape signature -> skeleton handle (its PatchState is cached on it)


def skeleton_from_comfy(unet_shapes: dict, clip_shapes: dict | None) -> ModelHandle:
    """A weightless handle (meta modules) shaped like ComfyUI's model, for indexing and matching."""
    family = family_from_shapes(unet_shapes, clip_shapes)
    shapes = ldm_shapes(unet_shapes, clip_shapes, family)
    sig = (family, hash(tuple(sorted(shapes.items()))))
    hit = _SKELETONS.get(sig)
    if hit is None:
        hit = _build(shapes, family)
        _SKELETONS[sig] = hit
        while len(_SKELETONS) > 4:
            _SKELETONS.popitem(last=False)
    _SKELETONS.move_to_end(sig)
    return hit


def comfy_key(family: str, index, target: Target, param: str) -> str:
    """ComfyUI's state-dict key of a target of our KeyIndex (param: "weight" | "bias")."""
    if target.component == "unet":
        ldm = index.ldm_unet.get(target.module)
        if ldm is None:
            raise LoraLabError(f"UNet layer {target.module!r} has no LDM name")
        return f"{COMFY_UNET_PREFIX}{ldm}.{param}"
    for comp, comfy_pre, _, _ in COMFY_TEXT[family]:
        if comp == target.component:
            return f"{comfy_pre}{target.module}.{param}"
    raise LoraLabError(f"no {target.component} text encoder in a {family} model")


_TEXT_KEY = re.compile(r"^clip_[lgh]\.")


def comfy_patch_keys(handle) -> dict:
    """{ComfyUI key: ((adapter, strength, rows), ...)} for the handle's stack (patcher.plan)."""
    from .patcher import plan, state_for

    index = state_for(handle).index
    return {comfy_key(handle.family, index, Target(comp, mod), pname): entries
            for (comp, mod, pname), entries in plan(handle).items()}


def is_text_key(key: str) -> bool:
    return bool(_TEXT_KEY.match(key))


@torch.no_grad()  # a weight that requires grad (ComfyUI's training nodes) must not fail the out= ops
def patch_weight(weight: torch.Tensor, entries: tuple, param: str, strength: float = 1.0, function=None,
                 device_cache: dict | None = None) -> torch.Tensor:
    """weight (ComfyUI's fp32 working copy of one parameter) += the entries, in place; returned.

    The same computation as our patcher's (patcher.patched_value: plain LoRAs in one fp32 chain,
    everything else through adapters.patched_weight, DoRA by the published rule), so a weight
    ComfyUI patches with our stack equals the one our nodes give before rounding to the
    model's dtype. `strength` is ComfyUI's patch strength (1.0 as we add them); `function`
    a ComfyUI weight conversion applied to the change, as its own adapters do.
    """
    from .patcher import adapter_to, patched_value

    if strength != 1.0:
        entries = tuple((a, s * strength, rows) for a, s, rows in entries)
    if weight.device.type != "cpu":
        cache = {} if device_cache is None else device_cache
        moved = []
        for a, s, rows in entries:
            hit = cache.get((id(a), weight.device))
            if hit is None or hit[0] is not a:
                hit = cache[(id(a), weight.device)] = (a, adapter_to(a, weight.device))
            moved.append((hit[1], s, rows))
        entries = tuple(moved)
    res = patched_value(weight, entries, param)
    if function is None:
        weight.copy_(res)
    else:
        weight += function(res - weight)
    return weight


def ldm_from_comfy(unet_sd: dict, clip_sd: dict, vae_sd: dict, family: str) -> dict:
    """ComfyUI's UNet / CLIP / VAE state dicts -> one single-file (LDM) checkpoint state dict.

    Tensors are not copied, except OpenCLIP towers, whose q/k/v are stacked into in_proj.
    """
    out = {"model." + k: v for k, v in unet_sd.items() if k.startswith(COMFY_UNET_PREFIX)}
    out.update({"first_stage_model." + k: v for k, v in vae_sd.items()})
    for _, comfy_pre, ldm_pre, layout in COMFY_TEXT[family]:
        hf = {k[len(comfy_pre):]: v for k, v in clip_sd.items() if k.startswith(comfy_pre)}
        hf = {k: v for k, v in hf.items() if k.startswith(("text_model.", "text_projection."))
              and not k.endswith("position_ids")}
        if layout == "hf":
            out.update(ckpt_keys.hf_clip_to_ldm(hf, ldm_pre))
        else:
            out.update(ckpt_keys.diffusers_to_openclip(hf, ldm_pre))
    return out
