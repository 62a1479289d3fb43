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
    assert frontend["version"] == want, \
        f"fixtures are from frontend {want}; LORA_LAB_FRONTEND_ROOT serves {frontend['version']}"


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


# Nodes whose queued inputs come from widgets the frontend adds itself (not in /object_info): the
# 3D viewers' and the audio recorder's, LoadImageOutput's refresh button and its late file list.
FRONTEND_WIDGET_NODES = {"Preview3D", "SaveGLB", "RecordAudio", "LoadImageOutput"}


def test_workflow_templates_convert_as_the_frontend_queues_them():
    """Every graph of ComfyUI's own template package (comfyui-workflow-templates, ComfyUI's
    requirement: real saves of the frontend, several with subgraphs) converts to what the frontend
    queues, node for node. Left out of the comparison: `_meta.title` of untitled nodes (the
    frontend names them from its own locale, e.g. "Detect Edges (Canny)" for Canny, which
    /object_info does not carry), nodes of packs this ComfyUI lacks (the frontend queues them
    without a class_type), and FRONTEND_WIDGET_NODES."""
    templates = pytest.importorskip("comfyui_workflow_templates")
    import urllib.request
    from pathlib import Path

    from frontend_capture import capture, object_info_registry, start_server
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS, RUNNER_DISPLAY_NAME_MAPPINGS
    from lora_lab.nodes.graph.workflow_ui import ui_to_api

    folder = Path(templates.__file__).parent / "templates"
    graphs = {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
              if not p.name.startswith("index")}
    graphs = {k: v for k, v in graphs.items() if isinstance(v, dict) and isinstance(v.get("nodes"), list)}
    server = start_server(COMFYUI_DIR, FRONTEND_ROOT)
    try:
        info = json.loads(urllib.request.urlopen(server.url + "/object_info", timeout=60).read())
        report = capture(server.url, graphs)
    finally:
        server.stop()
    classes, names = object_info_registry(info)
    registry, names = {**classes, **RUNNER_CLASS_MAPPINGS}, {**names, **RUNNER_DISPLAY_NAME_MAPPINGS}

    def comparable(node):
        node = json.loads(json.dumps(node))
        node.get("_meta", {}).pop("title", None)
        return node

    bad, compared, with_subgraphs = [], 0, 0
    for name, ui in graphs.items():
        res = report["cases"][name]
        assert "error" not in res, (name, res.get("error"))
        ours, theirs = ui_to_api(ui, registry, names), res["output"]
        assert sorted(ours) == sorted(theirs), name
        with_subgraphs += bool((ui.get("definitions") or {}).get("subgraphs"))
        for node_id, node in ours.items():
            if node["class_type"] not in info or node["class_type"] in FRONTEND_WIDGET_NODES:
                continue
            compared += 1
            if comparable(node) != comparable(theirs[node_id]):
                bad.append(f"{name} node {node_id}: ours {node} != {theirs[node_id]}")
    assert not bad, "\n".join(bad[:20])
    assert len(graphs) > 100 and with_subgraphs and compared > 1000, (len(graphs), with_subgraphs, compared)
