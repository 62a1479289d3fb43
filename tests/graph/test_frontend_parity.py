"""The UI → API conversion against what ComfyUI's frontend 1.58.1 itself queued (graphToPrompt)
for the graphs of frontend_cases.py: subgraphs (nested, colliding inner ids, two instances,
promoted widgets, an instance lacking an input), primitives, reroutes, bypass and mute.

The *.api.json fixtures were captured from the frontend (frontend_capture.py --write; the
version is in frontend_fixtures/frontend.json). No browser here: test_frontend_browser.py
repeats the comparison live when COMFYUI_DIR and LORA_LAB_FRONTEND_ROOT are set.
"""
from __future__ import annotations

import json

import pytest
from frontend_cases import CASES, FIXTURE_DIR
from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS, RUNNER_DISPLAY_NAME_MAPPINGS
from lora_lab.nodes.graph.workflow_fields import WorkflowError, pack_metadata
from lora_lab.nodes.graph.workflow_subgraphs import collect_definitions, renumber_definitions
from lora_lab.nodes.graph.workflow_ui import ui_to_api


def load(name: str, kind: str) -> dict:
    return json.loads((FIXTURE_DIR / f"{name}.{kind}.json").read_text())


def convert(ui: dict) -> dict:
    return ui_to_api(ui, RUNNER_CLASS_MAPPINGS, RUNNER_DISPLAY_NAME_MAPPINGS)


def test_fixtures_were_captured_from_frontend_1_58_1():
    assert json.loads((FIXTURE_DIR / "frontend.json").read_text())["frontend_version"] == "1.58.1"


@pytest.mark.parametrize("name", list(CASES))
def test_ui_fixture_is_what_the_builder_writes(name):
    """The committed UI graphs are frontend_cases.py's (so a changed builder needs a new capture)."""
    assert load(name, "ui") == json.loads(json.dumps(CASES[name]()))


@pytest.mark.parametrize("name", list(CASES))
def test_conversion_equals_the_frontends_graph_to_prompt(name):
    got, want = convert(load(name, "ui")), load(name, "api")
    assert sorted(got) == sorted(want)  # the same node ids (renumbered inner ids included)
    for node_id in want:
        assert got[node_id] == want[node_id], node_id  # inputs, links, class_type, _meta (7.0 == 7)


def test_conversion_does_not_touch_the_workflow():
    ui = load("nested_two_instances", "ui")
    before = json.dumps(ui, sort_keys=True)
    convert(ui)
    assert json.dumps(ui, sort_keys=True) == before


# -- the renumbering alone -----------------------------------------------------------------------

def _sg(uuid, ids, links=()):
    return {"id": uuid, "name": uuid, "nodes": [{"id": i, "type": "X"} for i in ids],
            "links": [{"id": n, "origin_id": a, "origin_slot": 0, "target_id": b, "target_slot": 0}
                      for n, (a, b) in enumerate(links, 1)],
            "widgets": [{"id": ids[0], "name": "w"}] if ids else []}


def _ids(data):
    return {k: [n["id"] for n in v["nodes"]] for k, v in renumber_definitions(data, collect_definitions(data)).items()}


def test_colliding_inner_ids_take_the_next_ids_after_last_node_id():
    """From the captures: root 1..8, last_node_id 8 → inner 1, 2 become 9, 10 (and 51, 52 with
    last_node_id 50); ids that do not collide are kept and advance the counter."""
    root = [{"id": i, "type": "X"} for i in range(1, 9)]
    data = {"version": 0.4, "last_node_id": 8, "nodes": root, "definitions": {"subgraphs": [_sg("a", [1, 2])]}}
    assert _ids(data) == {"a": [9, 10]}
    assert _ids({**data, "last_node_id": 50}) == {"a": [51, 52]}
    # last_node_id behind the root's ids: the next id no root node holds
    assert _ids({**data, "last_node_id": 3}) == {"a": [9, 10]}
    # two definitions: the second collides with the first's kept ids too; 20 is kept and counts
    data["definitions"]["subgraphs"] = [_sg("a", [20, 1]), _sg("b", [20, 2])]
    assert _ids(data) == {"a": [20, 21], "b": [22, 23]}


def test_version_1_counts_from_state_and_nested_definitions_come_after_their_parent():
    inner = _sg("inner", [1, 2])
    outer = _sg("outer", [1, 3]) | {"definitions": {"subgraphs": [inner]}}
    data = {"version": 1, "state": {"lastNodeId": 40}, "nodes": [{"id": 1, "type": "outer"}],
            "definitions": {"subgraphs": [outer, _sg("last", [2])]}}
    assert _ids(data) == {"outer": [41, 3], "inner": [42, 2], "last": [43]}  # 2 is free until inner takes it


def test_renumbering_patches_links_and_widget_refs_and_copies():
    sg = _sg("a", [1, 2], links=[(-10, 1), (1, 2), (2, -20)])
    data = {"version": 0.4, "last_node_id": 1, "nodes": [{"id": 1, "type": "a"}], "definitions": {"subgraphs": [sg]}}
    out = renumber_definitions(data, collect_definitions(data))["a"]
    assert [(lk["origin_id"], lk["target_id"]) for lk in out["links"]] == [(-10, 2), (2, 3), (3, -20)]
    assert out["widgets"][0]["id"] == 2
    assert sg["nodes"][0]["id"] == 1 and sg["links"][1]["origin_id"] == 1  # the input is not changed


def test_a_duplicate_id_inside_one_subgraph_is_a_named_error():
    data = {"nodes": [], "definitions": {"subgraphs": [_sg("a", [3, 3])]}}
    with pytest.raises(WorkflowError, match="subgraph 'a': duplicate node id 3"):
        renumber_definitions(data, collect_definitions(data))


def test_first_definition_of_an_id_wins():
    data = {"nodes": [], "definitions": {"subgraphs": [_sg("a", [1]), _sg("a", [2])]}}
    assert [n["id"] for n in collect_definitions(data)["a"]["nodes"]] == [1]


# -- node-pack metadata in _meta ------------------------------------------------------------------

@pytest.mark.parametrize("props, meta", [
    ({"cnr_id": "comfy-core", "ver": "0.3.64"}, {"cnr_id": "comfy-core", "ver": "0.3.64"}),
    ({"cnr_id": "comfy-core", "ver": "v0.3.64"}, {"cnr_id": "comfy-core", "ver": "0.3.64"}),
    ({"aux_id": "someone/some-pack", "ver": "4f2a9c1"}, {"aux_id": "someone/some-pack", "ver": "4f2a9c1"}),
    ({"cnr_id": "-bad-", "aux_id": "no-slash", "ver": "latest"}, {}),
    ({"ver": "unknown", "aux_id": "a--b/x"}, {"ver": "unknown"}),
    ({"ver": "1.2.3-rc.1+build.5", "cnr_id": "x" * 101}, {"ver": "1.2.3-rc.1+build.5"}),
    ({"ver": "1.2.3\n", "cnr_id": "pack\n"}, {}),
    (None, {}),
])
def test_pack_metadata(props, meta):
    assert pack_metadata(props) == meta
