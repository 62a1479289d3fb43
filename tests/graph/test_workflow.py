"""Reading workflows and converting the UI format as the ComfyUI frontend does (graphToPrompt)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import load_fake_nodes

from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.graph.workflow import (
    Assignment, OverrideError, WorkflowError, apply_assignments, collect_graph_files, find_node, load_workflow,
    parse_assignment, parse_workflow,
)
from lora_lab.nodes.graph.workflow_ui import ui_to_api
from lora_lab.nodes.graph.workflow_widgets import widget_specs, widget_values

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS
NAMES = fakes.NODE_DISPLAY_NAME_MAPPINGS
M = "LORA_LAB_MODEL"


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


def convert(ui):
    return ui_to_api(ui, REG, NAMES)


def ui_node(id, type, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    n = {"id": id, "type": type, "pos": [0, 0], "size": [200, 80], "flags": {}, "order": id, "mode": mode,
         "inputs": list(inputs), "outputs": list(outputs), "properties": {}}
    if widgets is not None:
        n["widgets_values"] = widgets
    if title:
        n["title"] = title
    return n


def ui_graph(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([lk[0] for lk in links] or [0]),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def loader(id=1, links=(1,), ckpt="a.safetensors", mode=0):
    return ui_node(id, "FakeLoader", [], [{"name": "model", "type": M, "links": list(links)}], [ckpt], mode=mode)


def lora(id, link_in, links_out, name="style.safetensors", strength=1.0, mode=0):
    return ui_node(id, "FakeLora", [{"name": "model", "type": M, "link": link_in}],
                   [{"name": "LORA_LAB_MODEL", "type": M, "links": list(links_out)}], [name, strength], mode=mode)


# -- the frontend's conversion, on fixtures written to ComfyUI's schema -------------------------


def test_ui_fixture_converts_to_the_graph_the_frontend_sends():
    assert convert(fixture("ui_basic.json")) == fixture("ui_basic.api.json")


def test_ui_fixture_details():
    api = convert(fixture("ui_basic.json"))
    sampler = api["6"]["inputs"]
    assert sampler["seed"] == 42 and sampler["steps"] == 30  # "randomize" skipped; primitive's 30 wins
    assert sampler["cfg"] == 6.5 and sampler["sampler_name"] == "euler"
    assert sampler["denoise"] == 1.0  # missing trailing widget value: its default
    assert api["5"]["inputs"]["model"] == ["1", 0]  # through the bypassed LoRA and the reroute
    assert set(api) == {"1", "5", "6", "8"}  # reroute, primitive, note, bypassed and muted nodes gone
    assert api["8"]["_meta"]["title"] == "Save cats"


def test_subgraphs_are_flattened_with_instance_ids():
    assert convert(fixture("ui_subgraph.json")) == fixture("ui_subgraph.api.json")


def test_version_1_links_as_objects_give_the_same_graph():
    ui = fixture("ui_subgraph.json")
    ui["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), lk))
                   for lk in ui["links"]]
    ui["version"] = 1
    assert convert(ui) == fixture("ui_subgraph.api.json")


def test_widget_order_and_companion_slots():
    specs = widget_specs(fakes.FakeNoise.INPUT_TYPES())
    # noise_seed: control value by name; mode: combo control + filter list; plain: no control;
    # text_in: forceInput, not a widget
    assert [(w.name, w.extra_slots) for w in specs] == [("noise_seed", 1), ("mode", 2), ("plain", 0), ("flag", 0)]
    values = widget_values(specs, [5, "randomize", "b", "increment", "", 3, False])
    assert values == {"noise_seed": 5, "mode": "b", "plain": 3, "flag": False}
    assert widget_values(specs, [5]) == {"noise_seed": 5, "mode": "a", "plain": 3, "flag": True}  # defaults
    assert widget_values(specs, {"mode": "c", "flag": False}) == {"noise_seed": 0, "mode": "c", "plain": 3,
                                                                   "flag": False}


def test_linked_input_overrides_the_widget():
    ui = ui_graph([
        loader(),
        ui_node(2, "FakeNoise", [], [{"name": "INT", "type": "INT", "links": [2]}],
                [9, "fixed", "a", "fixed", "", 3, True]),
        ui_node(3, "FakeSampler", [{"name": "model", "type": M, "link": 1},
                                   {"name": "seed", "type": "INT", "link": 2, "widget": {"name": "seed"}}],
                [], ["x", 1234, "fixed", 20, 7.0, "euler", 1.0]),
    ], [[1, 1, 0, 3, 0, M], [2, 2, 0, 3, 1, "INT"]])
    assert convert(ui)["3"]["inputs"]["seed"] == ["2", 0]


def test_bypass_finds_the_input_of_the_matching_type():
    # the bypassed sampler has no IMAGE input: nothing passes, the saver's input is dropped
    ui = ui_graph([
        loader(),
        ui_node(2, "FakeSampler", [{"name": "model", "type": M, "link": 1}],
                [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], ["x", 1, "fixed", 20, 7.0, "euler", 1.0], mode=4),
        ui_node(3, "FakeSaveImage", [{"name": "images", "type": "IMAGE", "link": 2}], [], ["p"]),
        lora(4, 3, [4], mode=4),
        lora(5, 4, []),
    ], [[1, 1, 0, 2, 0, M], [2, 2, 0, 3, 0, "IMAGE"], [3, 1, 0, 4, 0, M], [4, 4, 0, 5, 0, M]])
    ui["nodes"][0]["outputs"][0]["links"] = [1, 3]
    api = convert(ui)
    assert "images" not in api["3"]["inputs"]
    assert api["5"]["inputs"]["model"] == ["1", 0]
    assert "2" not in api and "4" not in api


def test_bypass_prefers_the_same_slot_then_the_exact_type():
    from lora_lab.nodes.graph.workflow_ui import Converter

    ex = type("E", (), {})()
    ex.inputs = [{"type": "INT"}, {"type": M}, {"type": M}]
    ex.outputs = [{"type": "FLOAT"}, {"type": M}]
    assert Converter._bypass_slot(ex, 1, M) == 1
    assert Converter._bypass_slot(ex, 0, M) == 1
    assert Converter._bypass_slot(ex, 0, "IMAGE") == -1
    assert Converter._bypass_slot(ex, 5, "*") == 0


def test_inputs_from_muted_nodes_are_removed():
    ui = ui_graph([loader(mode=2), lora(2, 1, [])], [[1, 1, 0, 2, 0, M]])
    assert convert(ui) == {"2": {"inputs": {"lora_name": "style.safetensors", "strength": 1.0},
                                 "class_type": "FakeLora", "_meta": {"title": "Load LoRA (fake)"}}}


def test_primitive_reaches_direct_targets_only_and_list_values_are_boxed():
    """Frontend 1.58 writes a PrimitiveNode's value into the widgets its links end at; a Reroute in
    between has no widget (skipped), and the input resolved through it ends at the primitive, a
    virtual node without inputs: the target keeps its own value (tests/graph/frontend_fixtures,
    primitives_and_reroutes, shows the same in the frontend)."""
    ui = ui_graph([
        ui_node(1, "PrimitiveNode", [],
                [{"name": "FLOAT", "type": "FLOAT", "links": [1], "widget": {"name": "strength"}}],
                [0.33]),
        ui_node(2, "Reroute", [{"name": "", "type": "*", "link": 1}], [{"name": "", "type": "FLOAT", "links": [2]}]),
        loader(3, links=[3]),
        ui_node(4, "FakeLora", [{"name": "model", "type": M, "link": 3},
                                {"name": "strength", "type": "FLOAT", "widget": {"name": "strength"}, "link": 2}],
                [], ["style.safetensors", 1.0]),
        ui_node(5, "FakeList", [], [], [["one", "two"]]),
    ], [[1, 1, 0, 2, 0, "FLOAT"], [2, 2, 0, 4, 1, "FLOAT"], [3, 3, 0, 4, 0, M]])
    api = convert(ui)
    assert api["4"]["inputs"]["strength"] == 1.0  # through the reroute: its own value
    assert api["5"]["inputs"]["text"] == {"__value__": ["one", "two"]}
    ui["links"][0] = [1, 1, 0, 4, 1, "FLOAT"]  # directly
    ui["nodes"][3]["inputs"][1]["link"] = 1
    assert convert(ui)["4"]["inputs"]["strength"] == 0.33


def test_unknown_types_keep_links_and_group_nodes_are_refused():
    ui = ui_graph([loader(), ui_node(2, "KSampler", [{"name": "model", "type": "MODEL", "link": 1}], [],
                                     [1, "fixed", 20])], [[1, 1, 0, 2, 0, M]])
    assert convert(ui)["2"] == {"inputs": {"model": ["1", 0]}, "class_type": "KSampler", "_meta": {"title": "KSampler"}}
    ui["nodes"][1]["type"] = "workflow>My group"
    with pytest.raises(WorkflowError, match="legacy group node"):
        convert(ui)


def test_bypassed_subgraph_instance_passes_its_input_through():
    ui = fixture("ui_subgraph.json")
    next(n for n in ui["nodes"] if n["id"] == 2)["mode"] = 4
    api = convert(ui)
    assert api["3"]["inputs"]["model"] == ["1", 0]
    assert "2:6" not in api and "2:7" not in api and "5:6" in api  # (inner ids 1, 2 renumbered: root has them)


def test_promoted_values_fill_the_promoted_inputs_in_order():
    """As SubgraphNode._applyPromotedWidgetValues: one value per promoted input, in input order;
    extra values are ignored, a missing one leaves the inner widget's value."""
    ui = fixture("ui_subgraph.json")
    inst = next(n for n in ui["nodes"] if n["id"] == 2)
    inst["widgets_values"] = [0.5, "fixed"]
    assert convert(ui)["2:6"]["inputs"]["strength"] == 0.5
    inst["widgets_values"] = []
    assert convert(ui)["2:6"]["inputs"]["strength"] == 1.0  # the inner node's own value
    for slot in inst["inputs"]:
        slot.pop("widget", None)  # an older save without the widget marks: promoted all the same
    inst["widgets_values"] = [0.5]
    assert convert(ui)["2:6"]["inputs"]["strength"] == 0.5


def test_nested_subgraphs_get_nested_ids():
    ui = fixture("ui_subgraph.json")
    pair = ui["definitions"]["subgraphs"][0]
    outer = {
        "id": "outer-0001", "version": 1, "name": "wrapper", "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]},
        "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
        "inputs": [{"id": "i1", "name": "model", "type": M, "linkIds": [1]}],
        "outputs": [{"id": "o1", "name": "model", "type": M, "linkIds": [2]}], "widgets": [],
        "nodes": [ui_node(7, pair["id"], [{"name": "model", "type": M, "link": 1},
                                         {"name": "strength", "type": "FLOAT", "widget": {"name": "strength"},
                                          "link": None}],
                          [{"name": "LORA_LAB_MODEL", "type": M, "links": [2]}], [0.5])],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": M},
                  {"id": 2, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": M}],
    }
    ui["definitions"]["subgraphs"].append(outer)
    inst = next(n for n in ui["nodes"] if n["id"] == 2)
    inst["type"] = "outer-0001"
    inst["inputs"] = inst["inputs"][:1]
    del inst["widgets_values"]
    api = convert(ui)
    # ids: the pair's 1, 2 collide with root ids -> 6, 7; the wrapper's 7 then collides -> 8. The
    # nested instance's saved promoted value (0.5) is not restored by frontend 1.58.1: the inner
    # widget's own value is queued (frontend_fixtures/nested_muted_and_bypassed shows it).
    assert api["2:8:6"]["inputs"] == {"lora_name": "style.safetensors", "strength": 1.0, "model": ["1", 0]}
    assert api["2:8:7"]["inputs"]["model"] == ["2:8:6", 0] and api["3"]["inputs"]["model"] == ["2:8:7", 0]


def test_a_subgraph_that_contains_itself_is_an_error():
    ui = fixture("ui_subgraph.json")
    sub = ui["definitions"]["subgraphs"][0]
    sub["nodes"].append(ui_node(9, sub["id"], [], [], []))
    with pytest.raises(WorkflowError, match="contains itself"):
        convert(ui)


# -- files ---------------------------------------------------------------------------------------


def _png(path, **chunks):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in chunks.items():
        info.add_text(k, json.dumps(v))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def test_png_prefers_the_prompt_chunk_and_keeps_the_workflow(tmp_path):
    api, ui = fixture("api_basic.json"), fixture("ui_basic.json")
    wf = load_workflow(_png(tmp_path / "both.png", prompt=api, workflow=ui), REG)
    assert wf.prompt == api and wf.ui == ui and wf.extra_pnginfo == {"workflow": ui}
    only_ui = load_workflow(_png(tmp_path / "ui.png", workflow=ui), REG)
    assert only_ui.prompt == ui_to_api(ui, REG) and only_ui.ui == ui
    with pytest.raises(WorkflowError, match="no ComfyUI"):
        load_workflow(_png(tmp_path / "none.png"), REG)


def test_json_shapes(tmp_path):
    api = fixture("api_basic.json")
    raw = copy.deepcopy(api)
    raw["2"]["inputs"]["model"] = [1, 0]  # int node ids in hand-written graphs
    wf = parse_workflow(raw, REG, source="x/y.json")
    assert wf.prompt == api and wf.name == "y" and wf.ui is None and wf.extra_pnginfo is None
    body = parse_workflow({"prompt": api, "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}}}, REG)
    assert body.prompt == api and body.ui == {"nodes": []}
    with pytest.raises(WorkflowError, match="neither"):
        parse_workflow({"hello": 1}, REG)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow(tmp_path / "bad.json", REG)
    with pytest.raises(WorkflowError, match="no such file"):
        load_workflow(tmp_path / "missing.json", REG)


def test_malformed_ui_workflows_are_workflow_errors():
    ui = fixture("ui_basic.json")
    ui["links"][0] = [1, 1]
    with pytest.raises(WorkflowError, match="malformed link"):
        parse_workflow(ui, REG)
    ui = fixture("ui_basic.json")
    del ui["nodes"][3]["inputs"][0]["name"]
    with pytest.raises(WorkflowError, match="malformed UI workflow"):
        parse_workflow(ui, REG)


def test_folders_expand_to_their_graph_files(tmp_path):
    for name in ("b.json", "a.png", "notes.txt", "c.JSON", "d.jpg", "e.WEBP", "f.jpeg", "g.gif"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in collect_graph_files([tmp_path, "other.json"])] == [
        "a.png", "b.json", "c.JSON", "d.jpg", "e.WEBP", "f.jpeg", "other.json"]


# -- overrides -----------------------------------------------------------------------------------


def test_parse_assignment():
    assert parse_assignment("Load LoRA v1.5.strength=0.5") == Assignment("Load LoRA v1.5", "strength", "0.5")
    assert parse_assignment("3.prompt=a=b") == Assignment("3", "prompt", "a=b")
    for bad in ("3=4", "nodot", ".x=1", "3.=1"):
        with pytest.raises(OverrideError):
            parse_assignment(bad)


def test_find_node_by_id_title_or_class():
    api = fixture("api_basic.json")
    assert find_node(api, "2") == "2" and find_node(api, "Style LoRA") == "2" and find_node(api, "FakeSampler") == "3"
    api["5"] = copy.deepcopy(api["2"])
    with pytest.raises(OverrideError, match="several nodes"):
        find_node(api, "Style LoRA")
    with pytest.raises(OverrideError, match="no node"):
        find_node(api, "Nope")


def test_apply_assignments_converts_by_input_type():
    api = fixture("api_basic.json")
    out = apply_assignments(api, [Assignment("3", "seed", "7"), Assignment("Style LoRA", "strength", "0.25"),
                                  Assignment("Sample", "prompt", "123"),
                                  Assignment("2", "lora_name", "detail.safetensors")],
                            REG)
    assert out["3"]["inputs"]["seed"] == 7 and out["2"]["inputs"]["strength"] == 0.25
    assert out["3"]["inputs"]["prompt"] == "123" and out["2"]["inputs"]["lora_name"] == "detail.safetensors"
    assert api["3"]["inputs"]["seed"] == 5  # the original is untouched
    with pytest.raises(NodeInputError, match="'seed' = 'x'.*INT"):
        apply_assignments(api, [Assignment("3", "seed", "x")], REG)
    with pytest.raises(NodeInputError, match="no such input"):
        apply_assignments(api, [Assignment("3", "sed", "1")], REG)
    with pytest.raises(NodeInputError, match="takes a link"):
        apply_assignments(api, [Assignment("3", "model", "1")], REG)


def test_subgraph_inputs_pair_by_name_not_position():
    """An instance whose saved inputs lack a subgraph input's name leaves the inner widget alone
    (the old positional fallback wired the instance's linked model input into 'strength')."""
    ui = fixture("ui_subgraph.json")
    sg = ui["definitions"]["subgraphs"][0]
    sg["inputs"] = sg["inputs"][::-1]  # [strength, model]
    for lk in sg["links"]:
        if lk["origin_id"] == -10:
            lk["origin_slot"] = 1 - lk["origin_slot"]
    inst = next(n for n in ui["nodes"] if n["id"] == 2)
    inst["inputs"] = [i for i in inst["inputs"] if i["name"] == "model"]
    inst["widgets_values"] = []
    api = convert(ui)
    assert api["2:6"]["inputs"]["strength"] == 1.0  # the inner node's own value, not ['1', 0]
    assert api["2:6"]["inputs"]["model"] == ["1", 0]


def test_duplicate_node_ids_are_a_named_error():
    ui = fixture("ui_subgraph.json")
    ui["nodes"].append(dict(ui["nodes"][0], type="FakeSampler"))
    with pytest.raises(WorkflowError, match="duplicate node id 1 \\(FakeLoader and FakeSampler\\)"):
        convert(ui)


def test_png_prompt_of_an_older_comfyui_falls_back_to_its_workflow(tmp_path, caplog):
    """A prompt chunk lacking a required input (an input added to the node since) that the workflow
    chunk has: the converted workflow runs, with a warning naming node, class and input."""
    api, ui = fixture("api_basic.json"), fixture("ui_basic.json")
    old = copy.deepcopy(api)
    del old["3"]["inputs"]["steps"]  # id 3 is FakeSampler in neither graph: the ids must match too
    kept = load_workflow(_png(tmp_path / "ids.png", prompt=old, workflow=ui), REG)
    assert kept.prompt == old and kept.warnings == ()
    converted = ui_to_api(ui, REG)
    sampler = next(nid for nid, n in converted.items() if n["class_type"] == "FakeSampler")
    old = copy.deepcopy(converted)
    del old[sampler]["inputs"]["steps"]
    with caplog.at_level("WARNING"):
        wf = load_workflow(_png(tmp_path / "old.png", prompt=old, workflow=ui), REG)
    assert wf.prompt == converted and wf.ui == ui
    assert len(wf.warnings) == 1 and f"node {sampler} (FakeSampler).steps" in wf.warnings[0]
    assert "older ComfyUI" in caplog.text
    # a problem both graphs share (a value not offered, e.g. an input file not there yet) does not stop it
    shared_ui = copy.deepcopy(ui)
    ui_sampler = next(n for n in shared_ui["nodes"] if n["type"] == "FakeSampler")
    ui_sampler["widgets_values"][-1] = "nope"
    shared = copy.deepcopy(old)
    shared[sampler]["inputs"]["sampler_name"] = "nope"
    assert load_workflow(_png(tmp_path / "shared.png", prompt=shared, workflow=shared_ui), REG).warnings
    # the conversion would bring a problem of its own: the prompt chunk stays, its errors are reported
    other = load_workflow(_png(tmp_path / "other.png", prompt=old, workflow=shared_ui), REG)
    assert other.prompt == old and other.warnings == ()
    # a complete prompt chunk is used as it is, even where the workflow differs
    assert load_workflow(_png(tmp_path / "full.png", prompt=api, workflow=ui), REG).prompt == api


def test_run_one_records_the_fallback_warning(tmp_path):
    from lora_lab.nodes.cli.run_plan import RunRecord, run_one
    from lora_lab.nodes.graph.workflow import Workflow

    rec = RunRecord("g.png", "g")
    wf = Workflow("g.png", "g", fixture("api_basic.json"), warnings=("ran its 'workflow' chunk",))
    run_one(rec, wf, [], executor=None, validate_only=True, registry=REG)
    assert rec.status == "valid" and rec.warnings == [{"node": None, "title": None,
                                                       "message": "ran its 'workflow' chunk"}]
