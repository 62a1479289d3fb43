"""ComfyUI's core CLIP / conditioning nodes for the headless runner (ComfyUI 0.3.64 ids, inputs,
defaults), run by our prompt encoder. CONDITIONING is ComfyUI's list of
[cond [1, 77*k, D], {"pooled_output": [1, P] | None, ...}]; the nodes that change options copy
each entry's dict (conditioning_set_values), never mutating what they received."""
from __future__ import annotations

MAX_RESOLUTION = 16384


def _encode(node: str, clip, text: str, sdxl_texts=None):
    from ..io.errors import NodeInputError
    from ..lora.patcher import activate
    from ..sampling.embeddings import EmbeddingError, lookups_for
    from ..sampling.prompt import encode_prompt, encode_prompt_sdxl

    if clip is None:
        raise NodeInputError(node, "clip", None, "no CLIP (the checkpoint has no text encoder?)")
    activate(clip.handle)  # base + this CLIP's text LoRAs
    lookups = lookups_for(clip.handle)  # embedding:name, as ComfyUI's tokenizer reads it
    try:
        if sdxl_texts is None:
            c = encode_prompt(clip.handle, text, clip_skip=clip.clip_skip, lookups=lookups)
        else:
            c = encode_prompt_sdxl(clip.handle, *sdxl_texts, clip_skip=clip.clip_skip, lookups=lookups)
    except EmbeddingError as e:
        raise NodeInputError(node, "text", text if sdxl_texts is None else sdxl_texts, str(e)) from None
    except ValueError as e:
        raise NodeInputError(node, "clip", repr(clip), str(e)) from None
    return c.cond.float().cpu(), (None if c.pooled is None else c.pooled.float().cpu())


class CLIPTextEncode:
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                "tooltip": "The text to be encoded."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
        }}

    def encode(self, clip, text):
        cond, pooled = _encode("CLIPTextEncode", clip, text)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPTextEncodeSDXL:
    CATEGORY = "advanced/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 1024, "min": 0, "max": MAX_RESOLUTION}
        crop = {"default": 0, "min": 0, "max": MAX_RESOLUTION}
        return {"required": {
            "clip": ("CLIP",),
            "width": ("INT", dict(size)), "height": ("INT", dict(size)),
            "crop_w": ("INT", dict(crop)), "crop_h": ("INT", dict(crop)),
            "target_width": ("INT", dict(size)), "target_height": ("INT", dict(size)),
            "text_g": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "text_l": ("STRING", {"multiline": True, "dynamicPrompts": True}),
        }}

    def execute(self, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        cond, pooled = _encode("CLIPTextEncodeSDXL", clip, "", sdxl_texts=(text_g, text_l))
        return ([[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


class CLIPSetLastLayer:
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",),
                             "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1})}}

    def set_last_layer(self, clip, stop_at_clip_layer):
        from ..model.runner_types import ClipHandle

        return (ClipHandle(clip.handle, int(stop_at_clip_layer)),)


def set_values(conditioning: list, values: dict) -> list:
    """node_helpers.conditioning_set_values: each entry's dict copied, values set."""
    return [[t, {**d, **values}] for t, d in conditioning]


class ConditioningCombine:
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    def combine(self, conditioning_1, conditioning_2):
        return (conditioning_1 + conditioning_2,)


class ConditioningConcat:
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "concat"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",)}}

    def concat(self, conditioning_to, conditioning_from):
        import logging

        import torch

        if len(conditioning_from) > 1:
            logging.getLogger(__name__).warning(
                "ConditioningConcat: conditioning_from has %d entries; only the first is used (as in ComfyUI)",
                len(conditioning_from))
        cond_from = conditioning_from[0][0]
        return ([[torch.cat((t, cond_from), 1), dict(d)] for t, d in conditioning_to],)


class ConditioningSetArea:
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls):
        px = {"min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "width": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
            "height": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
            "x": ("INT", {"default": 0, **px}), "y": ("INT", {"default": 0, **px}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        }}

    def append(self, conditioning, width, height, x, y, strength):
        return (set_values(conditioning, {"area": (height // 8, width // 8, y // 8, x // 8), "strength": strength,
                                          "set_area_to_bounds": False}),)


class ConditioningSetTimestepRange:
    CATEGORY = "advanced/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set_range"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})}}

    def set_range(self, conditioning, start, end):
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


class ConditioningZeroOut:
    CATEGORY = "advanced/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}

    def zero_out(self, conditioning):
        import torch

        out = []
        for t, d in conditioning:
            d = dict(d)
            if d.get("pooled_output") is not None:
                d["pooled_output"] = torch.zeros_like(d["pooled_output"])
            out.append([torch.zeros_like(t), d])
        return (out,)


_CLASSES = (CLIPTextEncode, CLIPTextEncodeSDXL, CLIPSetLastLayer, ConditioningCombine, ConditioningConcat,
            ConditioningSetArea, ConditioningSetTimestepRange, ConditioningZeroOut)
NODE_CLASS_MAPPINGS = {c.__name__: c for c in _CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {"CLIPTextEncode": "CLIP Text Encode (Prompt)", "CLIPSetLastLayer": "CLIP Set Last Layer",
                              "ConditioningCombine": "Conditioning (Combine)", "ConditioningConcat": "Conditioning (Concat)",
                              "ConditioningSetArea": "Conditioning (Set Area)",
                              "ConditioningSetTimestepRange": "ConditioningSetTimestepRange",
                              "ConditioningZeroOut": "ConditioningZeroOut", "CLIPTextEncodeSDXL": "CLIPTextEncodeSDXL"}
