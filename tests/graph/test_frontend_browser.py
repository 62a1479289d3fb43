"""Live: ComfyUI's frontend in headless Chromium loads each UI graph of frontend_cases.py and its
`app.graphToPrompt()` must equal our conversion exactly (and the committed capture).

Runs when COMFYUI_DIR is a ComfyUI checkout and LORA_LAB_FRONTEND_ROOT the `static` folder of
the frontend the fixtures were captured from (comfyui-frontend-package 1.58.1, which ComfyUI
0.3.64 hosts with --front-end-root); needs /usr/bin/chromium and aiohttp (ComfyUI's Python):

    COMFYUI_DIR=/path/to/ComfyUI LORA_LAB_FRONTEND_ROOT=/path/to/comfyui_frontend_package/static \\
        /path/to/ComfyUI/.venv/bin/python -m pytest tests/graph/test_frontend_browser.py
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
from frontend_cases import CASES, FIXTURE_DIR

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
FRONTEND_ROOT = os.environ.get("LORA_LAB_FRONTEND_ROOT")

pytestmark = [
    pytest.mark.skipif(not (COMFYUI_DIR and FRONTEND_ROOT),
                       reason="set COMFYUI_DIR and LORA_LAB_FRONTEND_ROOT (the frontend's static folder) to run"),
    pytest.mark.skipif(not shutil.which("chromium"), reason="needs Chromium"),
]


@pytest.fixture(scope="module")
def frontend():
    from frontend_capture import capture, load_cases, start_server

    server = start_server(COMFYUI_DIR, FRONTEND_ROOT)
    try:
        yield capture(server.url, load_cases())
    finally:
        server.stop()


def test_frontend_is_the_captured_version(frontend):
    want = json.loads((FIXTURE_DIR / "frontend.json").read_text())["frontend_version"]
    assert frontend["version"] == want, f"fixtures are from frontend {want}; LORA_LAB_FRONTEND_ROOT serves {frontend['version']}"


@pytest.mark.parametrize("name", list(CASES))
def test_graph_to_prompt_equals_our_conversion(frontend, name):
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS, RUNNER_DISPLAY_NAME_MAPPINGS
    from lora_lab.nodes.graph.workflow_ui import ui_to_api

    res = frontend["cases"][name]
    assert "error" not in res, res.get("error")
    ui = json.loads((FIXTURE_DIR / f"{name}.ui.json").read_text())
    ours = ui_to_api(ui, RUNNER_CLASS_MAPPINGS, RUNNER_DISPLAY_NAME_MAPPINGS)
    assert ours == res["output"]
    assert res["output"] == json.loads((FIXTURE_DIR / f"{name}.api.json").read_text())  # the capture still holds
