"""The headless runner's registry: LoRA Lab's nodes plus the ComfyUI core node ids it runs itself
(core_*.py), and our LoRA nodes on MODEL / CLIP (comfy_lora_nodes.py, on the runner's own MODEL /
CLIP). Only the CLI uses it; inside ComfyUI the pack registers node_defs' nodes and the MODEL / CLIP
ones (a pack cannot override core ids, and ComfyUI runs its own)."""
from __future__ import annotations

from . import (
    comfy_lora_nodes,
    core_conditioning,
    core_extra,
    core_image,
    core_latent,
    core_loaders,
    core_merge,
    node_defs,
)

CORE_MODULES = (core_loaders, core_conditioning, core_latent, core_image, core_extra, core_merge)

CORE_CLASS_MAPPINGS: dict = {}
CORE_DISPLAY_NAME_MAPPINGS: dict = {}
for _m in CORE_MODULES:
    CORE_CLASS_MAPPINGS.update(_m.NODE_CLASS_MAPPINGS)
    CORE_DISPLAY_NAME_MAPPINGS.update(_m.NODE_DISPLAY_NAME_MAPPINGS)

# Our LoRA nodes on MODEL / CLIP run on the runner's MODEL / CLIP as well (the bridges need ComfyUI).
RUNNER_CLASS_MAPPINGS = {**node_defs.NODE_CLASS_MAPPINGS, **CORE_CLASS_MAPPINGS, **comfy_lora_nodes.NODE_CLASS_MAPPINGS}
RUNNER_DISPLAY_NAME_MAPPINGS = {**node_defs.NODE_DISPLAY_NAME_MAPPINGS, **CORE_DISPLAY_NAME_MAPPINGS,
                                **comfy_lora_nodes.NODE_DISPLAY_NAME_MAPPINGS}
