"""LoRA Lab — ComfyUI entry point.

Only the node mappings and the web directory are exported here; nothing heavy is imported
or computed at import time (node classes import the core lazily when they run).
"""
from .nodes.node_defs import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
