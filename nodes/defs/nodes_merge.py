"""Node definitions for the merge area (registered by node_defs.py): Merge to Checkpoint and
the LoRA file tools (Merge LoRAs, Resize LoRA, Extract LoRA, Save LoRA).

The LoRA tools pass a LORA_LAB_LORA (lora_tools.LoraSet) along their edges; Save LoRA
writes it. Files go to the output folder under ComfyUI-style counter names, never
overwriting: Merge to Checkpoint to `checkpoints/`, Save LoRA to `loras/` by default.
"""
from __future__ import annotations

MODEL = "LORA_LAB_MODEL"
LORA = "LORA_LAB_LORA"
CATEGORY = "LoRA Lab/merge"
_RANK = {"default": 32, "min": 1, "max": 1024, "tooltip": "target rank (the largest, for the dynamic methods)"}
_CONV_RANK = {"default": 0, "min": 0, "max": 1024}
_METHODS = ["fixed", "sv_ratio", "sv_fro", "sv_cumulative"]
_PARAM = {"default": 0.9, "min": 0.0, "max": 1000.0, "step": 0.01,
          "tooltip": "sv_ratio: largest / smallest kept singular value (>= 1); sv_fro, sv_cumulative: "
                     "fraction kept (0..1); unused for fixed"}


def _destination(prefix: str, node: str):
    """Counter-named destination inside the output folder (sweep runs add their label)."""
    from ..io.destination import Destination, split_prefix
    from ..io.paths import output_dir

    try:
        from ..graph.executor import current_run_label

        label = current_run_label()
    except ImportError:
        label = None
    folder, stem = split_prefix(prefix, output_dir(), node)
    return Destination(folder=folder, stem=f"{stem}_{label}" if label else stem)


def _saved(path) -> dict:
    from ..io.paths import output_dir

    sub = path.parent.relative_to(output_dir().resolve()).as_posix()
    entry = {"filename": path.name, "subfolder": "" if sub == "." else sub, "type": "output"}
    return {"ui": {"files": [entry]}, "result": (str(path),)}


def _rule(node, rank, conv_rank, method="fixed", param=None):
    from ..io.errors import NodeInputError
    from ..merge.lora_tools import RankRule

    try:
        return RankRule(int(rank), int(conv_rank), method, None if method == "fixed" else float(param))
    except ValueError as e:
        msg = str(e)
        name, value = next(((n, v) for n, v in (("conv_rank", conv_rank), ("rank", rank), ("method", method))
                            if msg.startswith(n)), ("param", param))
        raise NodeInputError(node, name, value, msg) from None


class LoraLabMergeToCheckpoint:
    """Merge to Checkpoint: bakes the model's LoRA stack into its weights and writes a checkpoint."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "merge"
    OUTPUT_NODE = True
    DESCRIPTION = ("Writes base + LoRA stack as a single-file checkpoint (streamed from the source file, "
                   "tensor by tensor) or a diffusers folder, with modelspec and merged_from metadata.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "filename_prefix": ("STRING", {"default": "checkpoints/LoraLab"}),
                "dtype": (["same", "fp16", "bf16", "fp32"], {"tooltip": "same = each tensor keeps its dtype"}),
                "format": (["single-file", "diffusers"],),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def merge(self, model, filename_prefix, dtype, format, prompt=None, extra_pnginfo=None):
        from ..io.errors import LoraLabError, NodeInputError
        from ..merge.merge import DTYPES, FORMATS, merge_checkpoint

        node = "LoraLabMergeToCheckpoint"
        if dtype not in DTYPES:
            raise NodeInputError(node, "dtype", dtype, f"expected one of {list(DTYPES)}")
        if format not in FORMATS:
            raise NodeInputError(node, "format", format, f"expected one of {list(FORMATS)}")
        dest = _destination(filename_prefix, node)
        try:
            path = merge_checkpoint(model, dest, dtype, format, prompt, extra_pnginfo)
        except LoraLabError as e:  # CheckpointError included: the source file changed, a LoRA needs weights, ...
            raise NodeInputError(node, "model", getattr(model, "source", model), str(e)) from None
        return _saved(path)


class LoraLabMergeLoras:
    """Merge LoRAs: the model's whole LoRA stack as one LoRA (exact, or SVD to a rank)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (LORA,)
    RETURN_NAMES = ("lora",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "a model with LoRAs (Load LoRA / Stack LoRAs); strengths are folded in"}),
            "mode": (["exact", "svd"], {"tooltip": "exact: ranks concatenated, equals the stack; svd: to `rank`"}),
            "rank": ("INT", dict(_RANK)),
            "conv_rank": ("INT", dict(_CONV_RANK, tooltip="rank of 3x3 conv layers in svd mode; 0 = rank")),
        }}

    def merge(self, model, mode, rank, conv_rank):
        from ..io.errors import LoraLabError, NodeInputError
        from ..merge.lora_tools import merge_stack

        node = "LoraLabMergeLoras"
        if mode not in ("exact", "svd"):
            raise NodeInputError(node, "mode", mode, "expected 'exact' or 'svd'")
        rule = _rule(node, rank, conv_rank)
        try:
            return (merge_stack(model, mode, rule),)
        except LoraLabError as e:
            raise NodeInputError(node, "model", getattr(model, "source", model), str(e)) from None


class LoraLabResizeLora:
    """Resize LoRA: to a fixed rank, or dynamic per layer; alpha adjusted so the scale is kept."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (LORA,)
    RETURN_NAMES = ("lora",)
    FUNCTION = "resize"

    @classmethod
    def INPUT_TYPES(cls):
        from ..io.paths import LORA_EXTENSIONS, list_names

        return {
            "required": {
                "lora_name": (list_names("loras", LORA_EXTENSIONS), {"tooltip": "used when no lora is connected"}),
                "rank": ("INT", dict(_RANK)),
                "conv_rank": ("INT", dict(_CONV_RANK, tooltip="largest rank of 3x3 conv layers; 0 = rank")),
                "method": (_METHODS,),
                "param": ("FLOAT", dict(_PARAM)),
            },
            "optional": {"lora": (LORA,)},
        }

    def resize(self, lora_name, rank, conv_rank, method, param, lora=None):
        from ..demo.demo_lora import ensure_if_demo
        from ..io.errors import LoraLabError, NodeInputError
        from ..lora.lora_formats import read_lora
        from ..lora.lora_stack import resolve_lora
        from ..merge.lora_resize import resize_lora
        from ..merge.lora_save import lora_set_from_raw

        node = "LoraLabResizeLora"
        if method not in _METHODS:
            raise NodeInputError(node, "method", method, f"expected one of {_METHODS}")
        rule = _rule(node, rank, conv_rank, method, param)
        if lora is None:
            ensure_if_demo(lora_name)
        try:
            lset = lora if lora is not None else lora_set_from_raw(read_lora(resolve_lora(lora_name)))
            return (resize_lora(lset, rule),)
        except LoraLabError as e:
            raise NodeInputError(node, "lora" if lora is not None else "lora_name",
                                 lora if lora is not None else lora_name, str(e)) from None


class LoraLabExtractLora:
    """Extract LoRA: tuned − base by truncated SVD (each model's own LoRAs included)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (LORA,)
    RETURN_NAMES = ("lora",)
    FUNCTION = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_base": (MODEL,),
            "model_tuned": (MODEL,),
            "rank": ("INT", dict(_RANK)),
            "conv_rank": ("INT", dict(_CONV_RANK, tooltip="rank of resnet 3x3 convs; 0 = leave conv layers out")),
            "min_diff": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 10.0, "step": 0.001,
                                   "tooltip": "a text encoder that changed less than this is left out"}),
        }}

    def extract(self, model_base, model_tuned, rank, conv_rank, min_diff):
        from ..io.errors import LoraLabError, NodeInputError
        from ..merge.lora_resize import extract_lora

        node = "LoraLabExtractLora"
        rule = _rule(node, rank, conv_rank)
        try:
            return (extract_lora(model_base, model_tuned, rule, float(min_diff), use_conv=int(conv_rank) > 0),)
        except LoraLabError as e:
            raise NodeInputError(node, "model_tuned", getattr(model_tuned, "source", model_tuned), str(e)) from None


class LoraLabSaveLora:
    """Save LoRA: kohya format with ss_* metadata and sshs hashes; never overwrites."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": (LORA,),
            "filename_prefix": ("STRING", {"default": "loras/LoraLab"}),
            "dtype": (["fp16", "bf16", "fp32"],),
        }}

    def save(self, lora, filename_prefix, dtype):
        from ..io.errors import LoraLabError, NodeInputError
        from ..merge.lora_save import SAVE_DTYPES, save_lora

        node = "LoraLabSaveLora"
        if dtype not in SAVE_DTYPES:
            raise NodeInputError(node, "dtype", dtype, f"expected one of {list(SAVE_DTYPES)}")
        dest = _destination(filename_prefix, node)
        try:
            return _saved(save_lora(lora, dest, dtype))
        except LoraLabError as e:
            raise NodeInputError(node, "lora", lora, str(e)) from None


NODE_CLASS_MAPPINGS: dict = {
    "LoraLabMergeToCheckpoint": LoraLabMergeToCheckpoint,
    "LoraLabMergeLoras": LoraLabMergeLoras,
    "LoraLabResizeLora": LoraLabResizeLora,
    "LoraLabExtractLora": LoraLabExtractLora,
    "LoraLabSaveLora": LoraLabSaveLora,
}
NODE_DISPLAY_NAME_MAPPINGS: dict = {
    "LoraLabMergeToCheckpoint": "Merge to Checkpoint (LoRA Lab)",
    "LoraLabMergeLoras": "Merge LoRAs (LoRA Lab)",
    "LoraLabResizeLora": "Resize LoRA (LoRA Lab)",
    "LoraLabExtractLora": "Extract LoRA (LoRA Lab)",
    "LoraLabSaveLora": "Save LoRA (LoRA Lab)",
}
