"""ComfyUI's model merging nodes for the headless runner (comfy_extras/nodes_model_merging.py,
0.3.64 ids, inputs, defaults): ModelMergeSimple / Blocks / Subtract / Add and CLIPMergeSimple /
Subtract / Add. The merged model is a new handle on new modules (merge/model_merge.py); the inputs
are not changed, and LoRAs loaded onto the result act on the merged weights."""
from __future__ import annotations

_RATIO = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
_MULT = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}


def _merge_model(model1, model2, strengths):
    from ..merge.model_merge import merge_unets

    return (merge_unets(model1, model2, strengths),)


def _merge_clip(clip1, clip2, strengths):
    from ..merge.model_merge import merge_clips
    from ..model.runner_types import ClipHandle

    return (ClipHandle(merge_clips(clip1.handle, clip2.handle, strengths), clip1.clip_layer),)


class ModelMergeSimple:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "ratio": ("FLOAT", dict(_RATIO))}}

    def merge(self, model1, model2, ratio):
        r = float(ratio)
        return _merge_model(model1, model2, lambda _k: (1.0 - r, r))


class ModelMergeSubtract:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "multiplier": ("FLOAT", dict(_MULT))}}

    def merge(self, model1, model2, multiplier):
        m = float(multiplier)
        return _merge_model(model1, model2, lambda _k: (-m, m))


class ModelMergeAdd:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",)}}

    def merge(self, model1, model2):
        return _merge_model(model1, model2, lambda _k: (1.0, 1.0))


class ModelMergeBlocks:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "input": ("FLOAT", dict(_RATIO)),
                             "middle": ("FLOAT", dict(_RATIO)), "out": ("FLOAT", dict(_RATIO))}}

    def merge(self, model1, model2, input=1.0, middle=1.0, out=1.0):
        from ..merge.model_merge import block_ratio

        # ComfyUI passes them as **kwargs in schema order: a key under no prefix takes the first (input)
        ratios = {"input": float(input), "middle": float(middle), "out": float(out)}
        return _merge_model(model1, model2, block_ratio(ratios))


class CLIPMergeSimple:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "ratio": ("FLOAT", dict(_RATIO))}}

    def merge(self, clip1, clip2, ratio):
        r = float(ratio)
        return _merge_clip(clip1, clip2, lambda _k: (1.0 - r, r))


class CLIPMergeSubtract:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "multiplier": ("FLOAT", dict(_MULT))}}

    def merge(self, clip1, clip2, multiplier):
        m = float(multiplier)
        return _merge_clip(clip1, clip2, lambda _k: (-m, m))


class CLIPMergeAdd:
    CATEGORY = "advanced/model_merging"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",)}}

    def merge(self, clip1, clip2):
        return _merge_clip(clip1, clip2, lambda _k: (1.0, 1.0))


_CLASSES = (ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple,
            CLIPMergeSubtract, CLIPMergeAdd)
NODE_CLASS_MAPPINGS = {c.__name__: c for c in _CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {c.__name__: c.__name__ for c in _CLASSES}
