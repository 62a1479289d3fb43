"""LoRA Lab's LoRA nodes on ComfyUI's own MODEL / CLIP types (inside ComfyUI; the headless
runner runs them too, on its own MODEL / CLIP, nodes/model/runner_types.py).

Load LoRA, Stack LoRAs and the prompt's `<lora:…>` tags, with the same widgets, the same
match report and the same wrong-family error as our LORA_LAB_MODEL nodes: each LoRA is read,
indexed and matched by our code on a weightless skeleton shaped like ComfyUI's model
(lora/comfy_keys.py), and the result goes to ComfyUI's ModelPatcher as patches whose values
our adapter code computes (comfy_patches.py). The incoming MODEL and CLIP are never changed.
"""
from __future__ import annotations

from .node_defs import _BLOCK_WEIGHTS, _STRENGTH, CATEGORY, _lora_names

_OPTIONAL_CLIP = ("CLIP", {"tooltip": "leave unconnected for a model-only LoRA (text-encoder layers are skipped)"})


def apply_entries(model, clip, entries: list, node: str, input_name: str, block_weights: str = "") -> tuple:
    """(MODEL, CLIP, trigger words) with `entries` added as patches; the inputs stay untouched."""
    from ..demo.demo_lora import ensure_named
    from ..io.errors import LoraLabError, NodeInputError
    from ..lora.comfy_keys import skeleton_from_comfy
    from ..lora.lora_stack import add_loras
    from .comfy_patches import apply_stack, comfy_shapes

    from .comfy_memory import register

    if not entries:
        return model, clip, ""
    ensure_named(e.name for e in entries)
    register()  # parsed LoRAs are cached: under ComfyUI's model management from here on
    if _is_runner_model(model):
        return _runner_apply(model, clip, entries, node, input_name, block_weights)
    try:
        skeleton = skeleton_from_comfy(*comfy_shapes(model, clip))
    except LoraLabError as e:
        raise NodeInputError(node, "model", type(model.model).__name__, str(e)) from None
    stacked, words = add_loras(skeleton, entries, node, input_name, block_weights, text=clip is not None)
    new_model, new_clip = apply_stack(model, clip, stacked, node)
    return new_model, new_clip, words


def _is_runner_model(model) -> bool:
    """The headless runner's MODEL is a LoRA Lab ModelHandle (nodes/model/runner_types.py)."""
    from ..model.handle import ModelHandle

    return isinstance(model, ModelHandle)


def _runner_apply(model, clip, entries: list, node: str, input_name: str, block_weights: str) -> tuple:
    """The same stack on the runner's MODEL (UNet strengths) and CLIP (text strengths), as the
    runner's LoraLoader splits a LoRA; one match report and wrong-family check per LoRA."""
    import dataclasses

    from ..lora.lora_stack import add_loras
    from ..model.runner_types import ClipHandle

    unet = [dataclasses.replace(e, strength_text=0.0) for e in entries]
    new_model, words = add_loras(model, unet, node, input_name, block_weights, text=clip is not None)
    if clip is None:
        return new_model, None, words
    text = [dataclasses.replace(e, strength_unet=0.0) for e in entries]
    handle, _ = add_loras(clip.handle, text, node, input_name, block_weights)
    return new_model, ClipHandle(handle, clip.clip_layer), words


class LoraLabLoraLoaderModelClip:
    """Load LoRA on ComfyUI's MODEL / CLIP: any format our Load LoRA reads, patched by ComfyUI."""

    CATEGORY = CATEGORY + "/ComfyUI"
    RETURN_TYPES = ("MODEL", "CLIP", "LORA_STACK", "STRING")
    RETURN_NAMES = ("model", "clip", "lora_stack", "trigger_words")
    FUNCTION = "load"
    DESCRIPTION = "Adds one LoRA (kohya, LyCORIS, PEFT, DoRA, ...) to a ComfyUI MODEL and CLIP, computed by LoRA Lab."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "lora_name": (_lora_names(),),
                "strength_unet": ("FLOAT", dict(_STRENGTH)),
                "strength_text": ("FLOAT", dict(_STRENGTH)),
            },
            "optional": {"clip": _OPTIONAL_CLIP, "block_weights": _BLOCK_WEIGHTS},
        }

    def load(self, model, lora_name, strength_unet, strength_text, clip=None, block_weights=""):
        from ..lora.lora_stack import StackEntry

        entry = StackEntry(lora_name, float(strength_unet), float(strength_text))
        new_model, new_clip, words = apply_entries(model, clip, [entry], "LoraLabLoraLoaderModelClip", "lora_name",
                                                   block_weights)
        return new_model, new_clip, [(entry.name, entry.strength_unet, entry.strength_text)], words


class LoraLabLoraStackModelClip:
    """Stack LoRAs on ComfyUI's MODEL / CLIP: the stack text (`#` turns a line off) and a LORA_STACK."""

    CATEGORY = CATEGORY + "/ComfyUI"
    RETURN_TYPES = ("MODEL", "CLIP", "LORA_STACK", "STRING")
    RETURN_NAMES = ("model", "clip", "lora_stack", "trigger_words")
    FUNCTION = "stack"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "loras": ("STRING", {"multiline": True, "default": "",
                                     "tooltip": "one per line: name[:unet_strength[:text_strength]]"}),
            },
            "optional": {"clip": _OPTIONAL_CLIP, "lora_stack": ("LORA_STACK",), "block_weights": _BLOCK_WEIGHTS},
        }

    def stack(self, model, loras, clip=None, lora_stack=None, block_weights=""):
        from ..lora.lora_stack import parse_lora_stack, parse_stack_text

        node = "LoraLabLoraStackModelClip"
        entries = parse_lora_stack(lora_stack, node) + parse_stack_text(loras, node)
        new_model, new_clip, words = apply_entries(model, clip, entries, node, "loras", block_weights)
        return new_model, new_clip, [(e.name, e.strength_unet, e.strength_text) for e in entries], words


class LoraLabPromptLoraTags:
    """A1111 `<lora:name:weight>` tags in a prompt, applied to MODEL / CLIP; the text comes out without them."""

    CATEGORY = CATEGORY + "/ComfyUI"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "STRING")
    RETURN_NAMES = ("model", "clip", "text", "trigger_words")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "text": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "a prompt with <lora:name:weight> or <lora:name:te:unet> tags"}),
            },
        }

    def apply(self, model, clip, text):
        from ..lora.lora_stack import strip_prompt_loras

        clean, entries = strip_prompt_loras(text)
        new_model, new_clip, words = apply_entries(model, clip, entries, "LoraLabPromptLoraTags", "text")
        return new_model, new_clip, clean, words


NODE_CLASS_MAPPINGS = {
    "LoraLabLoraLoaderModelClip": LoraLabLoraLoaderModelClip,
    "LoraLabLoraStackModelClip": LoraLabLoraStackModelClip,
    "LoraLabPromptLoraTags": LoraLabPromptLoraTags,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoraLabLoraLoaderModelClip": "Load LoRA on MODEL/CLIP (LoRA Lab)",
    "LoraLabLoraStackModelClip": "Stack LoRAs on MODEL/CLIP (LoRA Lab)",
    "LoraLabPromptLoraTags": "Prompt LoRA Tags on MODEL/CLIP (LoRA Lab)",
}
