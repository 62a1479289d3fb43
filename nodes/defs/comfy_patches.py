"""LoRA Lab's stacks as patches on ComfyUI's own ModelPatcher (MODEL / CLIP).

Every patched weight goes through `clone()` + `add_patches`, so ComfyUI keeps doing the
patching: lazily, per weight, on its load device, with its low-VRAM offload and its
backups/restore. The value each patch computes comes from our adapter code: the patch object
is a `comfy.weight_adapter.WeightAdapterBase` whose `calculate_weight` (called by ComfyUI's
`comfy.lora.calculate_weight` for every patch of a key, in order, on an fp32 copy of the
weight) runs the same `patcher` computation as our own nodes. ComfyUI is imported here only,
and only when a node of this module runs (inside ComfyUI).
"""
from __future__ import annotations

import functools
import logging
import sys

log = logging.getLogger(__name__)


def comfy_available() -> bool:
    """True inside ComfyUI: its model patcher and weight adapters are loaded already (ComfyUI
    imports them before any custom node). Nothing is imported here, so the headless runner
    never starts ComfyUI's model management just by importing the pack."""
    return "comfy.model_patcher" in sys.modules and "comfy.weight_adapter.base" in sys.modules


@functools.lru_cache(maxsize=1)
def patch_class():
    """The WeightAdapterBase subclass carrying one key's (adapter, strength, rows) entries."""
    from comfy.weight_adapter.base import WeightAdapterBase

    from ..lora.comfy_keys import patch_weight

    class LoraLabPatch(WeightAdapterBase):
        name = "lora_lab"

        def __init__(self, entries: tuple, param: str, label: str):
            self.entries = entries  # ((Adapter, strength, rows), ...), strengths final (block weights in)
            self.param = param  # "weight" | "bias"
            self.label = label  # the LoRA names, for logs
            self.loaded_keys = set()
            self.weights = [t for a, _, _ in entries for t in a.tensors.values()]
            self._device_cache: dict = {}

        def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                             intermediate_dtype=None, original_weight=None):
            # weight: ComfyUI's fp32 working copy (earlier patches of this key already in it,
            # multiplied by strength_model by the caller); written in place and returned.
            return patch_weight(weight, self.entries, self.param, strength, function, self._device_cache)

        def __repr__(self):
            return f"LoraLabPatch({self.label}, {len(self.entries)} adapter(s), {self.param})"

    return LoraLabPatch


def apply_stack(model, clip, handle, node: str) -> tuple:
    """(new MODEL, new CLIP) = clones of `model` / `clip` with the handle's stack as patches.

    `handle` is a skeleton of this ComfyUI model (comfy_keys.skeleton_from_comfy) carrying the
    LoRAs to add; the inputs are never changed (ComfyUI's clones share the weights).
    """
    from ..io.errors import LoraLabError
    from ..lora.comfy_keys import comfy_patch_keys, is_text_key

    cls = patch_class()
    label = ", ".join(p.name for p in handle.patches)
    unet, text = {}, {}
    for key, entries in comfy_patch_keys(handle).items():
        (text if is_text_key(key) else unet)[key] = cls(entries, key.rsplit(".", 1)[1], label)
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    missing = []
    if unet:
        if new_model is None:
            raise LoraLabError(f"{node}: the LoRA stack patches the UNet but no MODEL is connected")
        missing += sorted(set(unet) - set(new_model.add_patches(unet, 1.0)))
    if text and new_clip is not None:
        missing += sorted(set(text) - set(new_clip.add_patches(text, 1.0)))
    elif text:
        log.info("%s: no CLIP connected: %d text-encoder weights of %s not applied", node, len(text), label)
    if missing:  # our key map and ComfyUI's model disagree: never a silent partial patch
        raise LoraLabError(f"{node}: {len(missing)} weights are not in ComfyUI's model, e.g. {missing[:3]}")
    log.info("%s: %s: %d UNet and %d text-encoder weights patched", node, label, len(unet),
             len(text) if new_clip is not None else 0)
    return new_model, new_clip


def comfy_shapes(model, clip) -> tuple[dict, dict | None]:
    """{key: shape} of ComfyUI's UNet (`diffusion_model.…`) and CLIP state dicts."""
    unet = {"diffusion_model." + k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}
    text = None if clip is None else {k: tuple(v.shape) for k, v in clip.cond_stage_model.state_dict().items()}
    return unet, text
