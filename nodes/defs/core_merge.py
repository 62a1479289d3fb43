"""ComfyUI's model merging nodes for the headless runner (comfy_extras/nodes_model_merging.py,
0.3.64 ids, inputs, defaults): ModelMergeSimple / Blocks / Subtract / Add, the per-block
ModelMergeSD1 / SD2 / SDXL (nodes_model_merging_model_specific.py) and CLIPMergeSimple / Subtract / Add. The merged model is a new handle on new modules (merge/model_merge.py); the inputs
are not changed, and LoRAs loaded onto the result act on the merged weights."""
from __future__ import annotations

import typing

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


def _block_inputs(blocks: tuple[tuple[str, int], ...], dot: str) -> dict:
    """ComfyUI's model-specific ratio inputs: time_embed., label_emb., <block>.<i><dot> ..., out."""
    names = ["time_embed.", "label_emb."] + [f"{b}.{i}{dot}" for b, n in blocks for i in range(n)] + ["out."]
    return {n: ("FLOAT", dict(_RATIO)) for n in names}


class _ModelMergeModelSpecific:
    """ModelMergeBlocks with one ratio per block (comfy_extras/nodes_model_merging_model_specific.py)."""

    CATEGORY = "advanced/model_merging/model_specific"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    RATIOS: typing.ClassVar[dict] = {}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), **cls.RATIOS}}

    def merge(self, model1, model2, **kwargs):
        from ..merge.model_merge import block_ratio

        # in schema order (the order the frontend queues them): a key under no prefix takes the first
        ratios = {k: float(kwargs[k]) for k in self.RATIOS if k in kwargs}
        return _merge_model(model1, model2, block_ratio(ratios))


class ModelMergeSD1(_ModelMergeModelSpecific):
    RATIOS = _block_inputs((("input_blocks", 12), ("middle_block", 3), ("output_blocks", 12)), ".")


class ModelMergeSD2(ModelMergeSD1):  # ComfyUI registers ModelMergeSD1 under this id too: the same blocks
    pass


class ModelMergeSDXL(_ModelMergeModelSpecific):
    RATIOS = _block_inputs((("input_blocks", 9), ("middle_block", 3), ("output_blocks", 9)), "")


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


_CLASSES = (ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, ModelMergeSD1, ModelMergeSD2,
            ModelMergeSDXL, CLIPMergeSimple, CLIPMergeSubtract, CLIPMergeAdd)
NODE_CLASS_MAPPINGS = {c.__name__: c for c in _CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {c.__name__: c.__name__ for c in _CLASSES}
