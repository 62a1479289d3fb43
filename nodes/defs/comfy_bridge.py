"""Bridges between LoRA Lab models and ComfyUI's MODEL / CLIP / VAE (inside ComfyUI only).

- LoraLabFromComfy: MODEL, CLIP, VAE -> LORA_LAB_MODEL holding the weights ComfyUI samples
  with: every patch on the MODEL and CLIP (ours, ComfyUI's LoraLoader's, any other pack's) is
  baked in by ComfyUI itself, as its CheckpointSave does (load_models_gpu with
  force_patch_weights), so Merge to Checkpoint, Train LoRA or Sample see exactly that model.
  Weights without a patch are shared with ComfyUI, not copied; patched ones are copied out.
  Model-level hooks of other packs (model_options: FreeU, attention patches, ...) are not
  weights and do not travel.
- LoraLabToComfy: LORA_LAB_MODEL -> MODEL, CLIP, VAE: the handle's base weights loaded by
  ComfyUI (load_state_dict_guess_config: its own model detection and classes; ComfyUI copies
  them into its modules), with the handle's LoRA stack added as patches by comfy_patches,
  so ComfyUI patches it lazily as any LoRA.
"""
from __future__ import annotations

import logging

from .node_defs import CATEGORY, MODEL

log = logging.getLogger(__name__)


def _effective(patcher, sd: dict) -> dict:
    """`sd` with the patched keys copied (ComfyUI may unpatch or patch them in place later)."""
    return {k: (v.detach().clone() if k in patcher.patches else v.detach()) for k, v in sd.items()}


def handle_from_comfy(model, clip, vae):
    import comfy.model_base
    import comfy.model_management
    import torch

    from ..lora.comfy_keys import family_from_shapes, ldm_from_comfy
    from ..model import checkpoint
    from ..model.handle import ModelHandle
    from .comfy_patches import comfy_shapes

    family = family_from_shapes(*comfy_shapes(model, clip))
    comfy.model_management.load_models_gpu([model, clip.load_model(), vae.patcher], force_patch_weights=True)
    unet_sd = _effective(model, {"diffusion_model." + k: v for k, v in
                                 model.model.diffusion_model.state_dict().items()})
    clip_sd = _effective(clip.patcher, clip.cond_stage_model.state_dict())
    vae_sd = {k: v.detach() for k, v in vae.first_stage_model.state_dict().items()}
    sd = ldm_from_comfy(unet_sd, clip_sd, vae_sd, family)
    conv = checkpoint.convert_single_file(sd.__getitem__, {k: tuple(v.shape) for k, v in sd.items()})
    if conv.family != family:
        raise ValueError(f"ComfyUI's model reads as {conv.family}, its CLIP as {family}")
    vpred = model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    dtype = next(iter(unet_sd.values())).dtype
    device = next(iter(unet_sd.values())).device
    comps = checkpoint.build_components(conv, dtype=dtype if dtype.is_floating_point else torch.float32, device=device)
    return ModelHandle(family=family, prediction_type="v_prediction" if vpred else "epsilon", unet=comps["unet"],
                       vae=comps["vae"], text_encoders=comps["text_encoders"],
                       tokenizers=checkpoint.tokenizers_for(family), source="ComfyUI MODEL/CLIP/VAE")


def comfy_from_handle(handle, node: str):
    import comfy.sd
    import folder_paths

    from ..io.errors import NodeInputError
    from ..lora import patcher
    from ..lora.comfy_keys import skeleton_from_comfy
    from ..model.checkpoint_save import ldm_state_dict
    from .comfy_patches import apply_stack, comfy_shapes

    patcher.restore(handle)  # the modules hold the base weights again (bit-exact); patches go to ComfyUI
    sd = ldm_state_dict(handle.family, handle.unet, handle.vae, handle.text_encoders)
    if handle.prediction_type == "v_prediction":
        import torch

        sd["v_pred"] = torch.tensor([])  # ComfyUI's marker key for v-prediction checkpoints
    out = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True,
                                                embedding_directory=folder_paths.get_folder_paths("embeddings"))
    if out is None or out[0] is None:
        raise NodeInputError(node, "model", repr(handle), "ComfyUI does not recognise this model's layout")
    model, clip, vae = out[:3]
    if handle.patches:
        skeleton = skeleton_from_comfy(*comfy_shapes(model, clip))
        model, clip = apply_stack(model, clip, skeleton.with_patches(handle.patches), node)
    return model, clip, vae


class LoraLabFromComfy:
    """ComfyUI's MODEL, CLIP and VAE as a LoRA Lab model (with every patch ComfyUI would apply)."""

    CATEGORY = CATEGORY + "/ComfyUI"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",)}}

    def convert(self, model, clip, vae):
        from ..io.errors import LoraLabError, NodeInputError

        try:
            return (handle_from_comfy(model, clip, vae),)
        except (LoraLabError, ValueError) as e:
            raise NodeInputError("LoraLabFromComfy", "model", type(model.model).__name__, str(e)) from None


class LoraLabToComfy:
    """A LoRA Lab model as ComfyUI's MODEL, CLIP and VAE, its LoRA stack as ComfyUI patches."""

    CATEGORY = CATEGORY + "/ComfyUI"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (MODEL,)}}

    def convert(self, model):
        return comfy_from_handle(model, "LoraLabToComfy")


NODE_CLASS_MAPPINGS = {"LoraLabFromComfy": LoraLabFromComfy, "LoraLabToComfy": LoraLabToComfy}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabFromComfy": "ComfyUI MODEL/CLIP/VAE to LoRA Lab model",
                              "LoraLabToComfy": "LoRA Lab model to ComfyUI MODEL/CLIP/VAE"}
