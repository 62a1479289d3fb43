"""LoRA Lab's caches under ComfyUI's model management.

ComfyUI frees memory through `comfy.model_management.current_loaded_models`: `free_memory(n,
device)` (run before every model load that needs room, and by `unload_all_models()`: the
"Unload models" / `/free` request) walks that list and asks each entry's model to
`partially_unload(device, n)`, or to `detach()` when that was not enough, then drops the entry.
ComfyUI offers packs no other hook, so LoRA Lab takes part the same way: `register()` puts one
entry in that list whose model is `CachesPatcher`, an object with the part of ModelPatcher's
surface model_management calls. Its size is the bytes our caches hold (io/byte_cache.py); a
partial unload evicts least recently used checkpoints / LoRAs until the bytes asked for are
freed; a detach empties every cache. Models a graph still holds stay alive through that graph:
only the caches' own references go.

`register()` runs when our loader nodes run (after ComfyUI dropped the entry, the next load puts
it back); it imports nothing: outside ComfyUI (the headless runner) it does nothing.
"""
from __future__ import annotations

import logging
import sys
import weakref

from ..io import byte_cache

log = logging.getLogger(__name__)


class LoraLabCachedModels:
    """What ComfyUI's LoadedModel.real_model points at (its class name is what ComfyUI logs)."""


class CachesPatcher:
    """The ModelPatcher methods comfy.model_management calls on a loaded model, over our caches."""

    parent = None  # LoadedModel follows a clone's parent; ours has none

    def __init__(self, load_device, offload_device):
        self.load_device = load_device
        self.offload_device = offload_device
        self.model = LoraLabCachedModels()

    def model_size(self) -> int:
        return byte_cache.total_bytes()

    def loaded_size(self) -> int:
        return byte_cache.total_bytes()

    def current_loaded_device(self):
        return self.load_device

    def partially_unload(self, device_to, memory_to_free: int = 0) -> int:
        freed = byte_cache.free_memory(int(memory_to_free))
        log.info("LoRA Lab caches: ComfyUI asked for %.0f MB, freed %.0f MB", memory_to_free / 2**20, freed / 2**20)
        return freed

    def detach(self, unpatch_all: bool = True):
        log.info("LoRA Lab caches: emptied for ComfyUI (%.0f MB)", byte_cache.total_bytes() / 2**20)
        byte_cache.clear_all()
        return self.model

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
        return 0  # nothing to move: the caches hold models where their nodes put them

    def model_patches_to(self, device) -> None:
        pass

    def model_patches_models(self) -> list:
        return []

    def lowvram_patch_counter(self) -> int:
        return 0

    def is_clone(self, other) -> bool:
        return other is self


_PATCHER: CachesPatcher | None = None  # one per process; ComfyUI's list holds it only weakly


def _model_management():
    return sys.modules.get("comfy.model_management")  # loaded by ComfyUI before any pack


def registered_entry():
    """Our entry in ComfyUI's current_loaded_models, or None."""
    mm = _model_management()
    if mm is None or _PATCHER is None:
        return None
    return next((e for e in mm.current_loaded_models if e.model is _PATCHER), None)


def register() -> bool:
    """Put our caches in ComfyUI's current_loaded_models (once); False outside ComfyUI."""
    global _PATCHER
    mm = _model_management()
    if mm is None:
        return False
    if registered_entry() is not None:
        return True
    if _PATCHER is None:
        _PATCHER = CachesPatcher(mm.get_torch_device(), mm.unet_offload_device())
    entry = mm.LoadedModel(_PATCHER)
    # What LoadedModel.model_load would set: model_unload detaches the finalizer, is_dead reads it.
    entry.real_model = weakref.ref(_PATCHER.model)
    entry.model_finalizer = weakref.finalize(_PATCHER.model, mm.cleanup_models)
    entry.currently_used = False
    mm.current_loaded_models.append(entry)  # last: ComfyUI's own models are listed first
    return True
