"""LoRA Lab — ComfyUI entry point.

Only the node mappings and the web directory are exported here; nothing heavy is imported
or computed at import time (node classes import the core lazily when they run). Inside
ComfyUI's server the `/lora_lab/...` routes of the editor extension are registered too.
"""
import logging as _logging
import sys as _sys

from .nodes.defs.node_defs import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

# LoRA Lab's nodes on ComfyUI's MODEL / CLIP types: only inside ComfyUI (its modules are loaded
# before any pack); elsewhere the headless runner reports them as needing ComfyUI.
from .nodes.defs.comfy_patches import comfy_available as _comfy_available

if _comfy_available():
    from .nodes.defs import comfy_bridge as _bridge
    from .nodes.defs import comfy_lora_nodes as _comfy_nodes

    NODE_CLASS_MAPPINGS = {**NODE_CLASS_MAPPINGS, **_comfy_nodes.NODE_CLASS_MAPPINGS, **_bridge.NODE_CLASS_MAPPINGS}
    NODE_DISPLAY_NAME_MAPPINGS = {**NODE_DISPLAY_NAME_MAPPINGS, **_comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                                  **_bridge.NODE_DISPLAY_NAME_MAPPINGS}

if "server" in _sys.modules:  # running inside ComfyUI: add the editor's routes (cheap, no I/O)
    try:
        from .nodes.defs.server_routes import register_routes

        register_routes()
    except (ImportError, AttributeError) as _e:  # no aiohttp, or an unexpected PromptServer
        _logging.getLogger(__name__).warning("LoRA Lab: editor routes not registered (%s)", _e)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
