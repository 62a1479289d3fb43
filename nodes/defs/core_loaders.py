"""ComfyUI's core loader nodes for the headless runner (ids, inputs, defaults and types as in
ComfyUI 0.3.64's nodes.py), run by our core: MODEL = ModelHandle (UNet side), CLIP =
ClipHandle (text side), VAE = VaeHandle. Never registered inside ComfyUI (a pack cannot
override core ids); nodes/defs/runner_registry.py hands them to the CLI's runner."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


def _ckpt_names():
    from ..demo.demo import DEMO_NAME
    from ..io.paths import CHECKPOINT_EXTENSIONS, list_names

    names = list_names("checkpoints", CHECKPOINT_EXTENSIONS)
    if DEMO_NAME not in names:
        names.append(DEMO_NAME)  # written on first use
    return names


def load_checkpoint_named(node: str, ckpt_name: str):
    from ..demo.demo import DEMO_NAME, ensure_demo_checkpoint
    from ..io.errors import LoraLabError, NodeInputError
    from ..io.paths import resolve
    from ..model.checkpoint import load_checkpoint

    try:
        if ckpt_name == DEMO_NAME:
            ensure_demo_checkpoint()
        return load_checkpoint(resolve("checkpoints", ckpt_name))
    except LoraLabError as e:
        raise NodeInputError(node, "ckpt_name", ckpt_name, str(e)) from None


class CheckpointLoaderSimple:
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (_ckpt_names(), {"tooltip": "The name of the checkpoint (model) to load."})}}

    def load_checkpoint(self, ckpt_name):
        from ..model.runner_types import ClipHandle, VaeHandle

        handle = load_checkpoint_named("CheckpointLoaderSimple", ckpt_name)
        return (handle, ClipHandle(handle), VaeHandle(handle.vae, handle.source))


def _lora_names():
    from .common import lora_names

    return lora_names()


def apply_lora(node: str, model, clip, lora_name: str, strength_model: float, strength_clip: float):
    """(model, clip) with the LoRA added: its UNet part to MODEL only, its text part to CLIP only."""
    from ..demo.demo_lora import ensure_if_demo
    from ..io.checks import COMFY_STRENGTH_MAX
    from ..lora.lora_stack import StackEntry, add_loras
    from ..model.runner_types import ClipHandle

    if strength_model == 0 and strength_clip == 0:
        return model, clip
    ensure_if_demo(lora_name)
    if strength_model != 0:
        model, _ = add_loras(model, [StackEntry(lora_name, float(strength_model), 0.0)], node, "lora_name",
                             strength_limit=COMFY_STRENGTH_MAX)  # ComfyUI's schema: -100..100
    if clip is not None and strength_clip != 0:
        handle, _ = add_loras(clip.handle, [StackEntry(lora_name, 0.0, float(strength_clip))], node, "lora_name",
                              strength_limit=COMFY_STRENGTH_MAX)
        clip = ClipHandle(handle, clip.clip_layer)
    return model, clip


class LoraLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}),
            "lora_name": (_lora_names(), {"tooltip": "The name of the LoRA."}),
            "strength_model": ("FLOAT", dict(_STRENGTH)),
            "strength_clip": ("FLOAT", dict(_STRENGTH)),
        }}

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        return apply_lora("LoraLoader", model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly:
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "lora_name": (_lora_names(),),
                             "strength_model": ("FLOAT", dict(_STRENGTH))}}

    def load_lora_model_only(self, model, lora_name, strength_model):
        return (apply_lora("LoraLoaderModelOnly", model, None, lora_name, strength_model, 0)[0],)


def vae_names():
    from ..io.paths import VAE_EXTENSIONS, list_names

    return list_names("vae", VAE_EXTENSIONS)


def load_vae_named(node: str, vae_name: str):
    from ..io.errors import LoraLabError, NodeInputError
    from ..io.paths import resolve
    from ..model.runner_types import load_vae_file

    try:
        return load_vae_file(resolve("vae", vae_name))
    except LoraLabError as e:
        raise NodeInputError(node, "vae_name", vae_name, str(e)) from None


class VAELoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (vae_names(),)}}

    def load_vae(self, vae_name):
        return (load_vae_named("VAELoader", vae_name),)


class CheckpointSave:
    """Bakes MODEL's UNet LoRAs, CLIP's text LoRAs and the VAE into one single-file checkpoint."""

    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
                             "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        from ..io.errors import NodeInputError
        from ..merge.merge import merge_checkpoint
        from .nodes_merge import _destination

        if clip.handle.unet is not model.unet:
            raise NodeInputError("CheckpointSave", "clip", repr(clip), "the CLIP comes from another checkpoint than "
                                 "the MODEL; the runner bakes one checkpoint's MODEL and CLIP together")
        if vae.vae is not model.vae:
            raise NodeInputError("CheckpointSave", "vae", repr(vae), "a VAE from another file than the checkpoint "
                                 "cannot be baked by the runner yet")
        both = model.with_patches(tuple(model.patches) + tuple(clip.handle.patches))  # UNet-only + text-only
        dest = _destination(filename_prefix, "CheckpointSave")
        path = merge_checkpoint(both, dest, "same", "single-file", prompt, extra_pnginfo, progress=False)
        log.info("CheckpointSave wrote %s", path)
        return {"ui": {"checkpoints": [{"filename": path.name, "subfolder": _subfolder(path), "type": "output"}]},
                "result": ()}


def _subfolder(path) -> str:
    from ..io.paths import output_dir

    sub = path.parent.resolve().relative_to(output_dir().resolve()).as_posix()
    return "" if sub == "." else sub


NODE_CLASS_MAPPINGS = {c.__name__: c for c in (CheckpointLoaderSimple, LoraLoader, LoraLoaderModelOnly, VAELoader,
                                                CheckpointSave)}
NODE_DISPLAY_NAME_MAPPINGS = {"CheckpointLoaderSimple": "Load Checkpoint", "LoraLoader": "Load LoRA",
                              "LoraLoaderModelOnly": "LoraLoaderModelOnly", "VAELoader": "Load VAE",
                              "CheckpointSave": "Save Checkpoint"}
