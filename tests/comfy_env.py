"""ComfyUI's modules for parity tests: imported from COMFYUI_DIR in CPU mode, or the test skips."""
from __future__ import annotations

import importlib
import os
import sys

import pytest


def comfy_modules_or_skip(*names: str, needs: str | None = None) -> list:
    """The named modules (e.g. "nodes", "comfy.lora"), imported from $COMFYUI_DIR with --cpu set
    before model_management loads; pytest.skip when it is unset, lacks the file `needs` (a path
    inside the checkout, e.g. "comfy/lora.py"), or does not import in this interpreter."""
    root = os.environ.get("COMFYUI_DIR")
    if not root:
        pytest.skip("COMFYUI_DIR is not set (point it at a ComfyUI checkout to run the parity tests)")
    if needs and not os.path.isfile(os.path.join(root, *needs.split("/"))):
        pytest.skip(f"COMFYUI_DIR={root!r} is not a ComfyUI checkout with {needs}")
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        if "comfy.model_management" not in sys.modules:
            importlib.import_module("comfy.cli_args").args.cpu = True
        return [importlib.import_module(n) for n in names]
    except (ImportError, RuntimeError, OSError, AttributeError) as e:
        pytest.skip(f"ComfyUI at {root!r} does not import in this interpreter: {e!r}")
