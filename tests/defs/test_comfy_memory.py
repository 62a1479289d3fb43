"""Our caches under ComfyUI's model management (defs/comfy_memory.py).

With COMFYUI_DIR (run in ComfyUI's Python, CPU mode): after our loaders ran, ComfyUI's own
`free_memory` evicts least recently used cache entries for a partial request and keeps our
entry; `unload_all_models()` (its "Unload models" / /free) empties the caches and drops the
entry; the next load registers again. Without ComfyUI, register() is a no-op.

    COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python -m pytest tests/defs/test_comfy_memory.py
"""
from __future__ import annotations

import sys

import pytest
from comfy_env import comfy_modules_or_skip

from lora_lab.nodes.defs import comfy_memory
from lora_lab.nodes.io import byte_cache


def _model_management():
    return comfy_modules_or_skip("comfy.model_management", needs="comfy/model_management.py")[0]


def test_register_is_a_no_op_outside_comfyui(monkeypatch):
    monkeypatch.delitem(sys.modules, "comfy.model_management", raising=False)
    assert comfy_memory.register() is False
    assert comfy_memory.registered_entry() is None


@pytest.fixture
def filled(tmp_path):
    """Two checkpoints and a LoRA in our caches, through the functions our loader nodes call."""
    from lora_lab.nodes.demo import demo, demo_lora
    from lora_lab.nodes.lora.lora_formats import read_lora
    from lora_lab.nodes.model.checkpoint import LOAD_CACHE, load_checkpoint

    byte_cache.clear_all()
    ckpt = demo.ensure_demo_checkpoint(tmp_path)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(ckpt.read_bytes())
    first = load_checkpoint(ckpt)
    load_checkpoint(copy)
    lora = next(iter(demo_lora.DEMO_LORAS.values()))
    read_lora(demo.verified_asset(lora.name, lora.sha256))
    yield LOAD_CACHE, first
    byte_cache.clear_all()


def test_comfyui_free_memory_reaches_our_caches(filled):
    mm = _model_management()
    cache, first = filled
    assert len(cache.lru) == 2 and byte_cache.total_bytes() > 0
    assert comfy_memory.register() is True and comfy_memory.register() is True
    entries = [e for e in mm.current_loaded_models if e.model is comfy_memory._PATCHER]
    assert len(entries) == 1  # registered once
    entry = entries[0]
    assert entry.model_memory() == byte_cache.total_bytes()

    # A partial request (ComfyUI's LoadedModel.model_unload, as free_memory calls it): the least
    # recently used checkpoint goes, the entry stays listed.
    one = byte_cache.module_bytes(first.unet, first.vae, *first.text_encoders)
    assert entry.model_unload(one // 2) is False
    assert len(cache.lru) == 1 and comfy_memory.registered_entry() is entry

    # "Unload models": every cache empty, the entry gone from ComfyUI's list.
    mm.unload_all_models()
    assert byte_cache.total_bytes() == 0 and len(cache.lru) == 0
    assert comfy_memory.registered_entry() is None
    assert first.unet is not None  # a handle a graph holds stays usable; only the cache let go

    assert comfy_memory.register() is True  # the next load puts it back
    assert comfy_memory.registered_entry() is not None
    mm.free_memory(1e30, mm.get_torch_device())
    assert comfy_memory.registered_entry() is None
