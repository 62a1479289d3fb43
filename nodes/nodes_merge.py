"""Node definitions for the merge area (registered by node_defs.py)."""
from __future__ import annotations

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
