"""Whole-graph validation: every error kind, each naming node id, title, input and value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_fake_nodes

from lora_lab.nodes.graph.graph_validate import GraphValidationError, types_compatible, validate_graph

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS


@pytest.fixture
def api():
    return json.loads((FIXTURES / "api_basic.json").read_text())


def problems(graph):
    with pytest.raises(GraphValidationError) as e:
        validate_graph(graph, REG)
    return e.value.problems


def only(graph):
    found = problems(graph)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_a_valid_graph_comes_back_normalised_with_its_order(api):
    api["3"]["inputs"]["steps"] = "4"
    api["3"]["inputs"]["cfg"] = 6
    api["9"] = {"class_type": "FakeLora", "inputs": {}}  # dangling: not run, so not checked
    g = validate_graph(api, REG)
    assert g.outputs == ["4"] and g.order == ["1", "2", "3", "4"]
    assert g.prompt["3"]["inputs"]["steps"] == 4 and isinstance(g.prompt["3"]["inputs"]["cfg"], float)
    assert api["3"]["inputs"]["steps"] == "4"  # the caller's graph is not modified


def test_unknown_node_type_with_a_suggestion(api):
    api["2"]["class_type"] = "FakeLoar"
    p = only(api)
    assert p.kind == "unknown_node_type" and p.node_id == "2" and p.title == "Style LoRA"
    assert "FakeLora" in p.message and 'node 2 "Style LoRA" (FakeLoar)' in str(p)


def test_comfyui_core_nodes_are_reported_as_such(api):
    api["5"] = {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "KSampler"}}
    p = only(api)
    assert p.kind == "comfyui_only" and p.node_id == "5" and "the headless runner does not run" in str(p)
    with pytest.raises(GraphValidationError, match="the headless runner runs these node types: .*FakeLoader, FakeLora"):
        validate_graph(api, REG)


def test_third_party_and_comfyui_only_lora_lab_nodes_name_their_origin(api):
    api["5"] = {"class_type": "IPAdapterAdvanced", "inputs": {}}
    api["6"] = {"class_type": "Power Lora Loader (rgthree)", "inputs": {}}
    api["7"] = {"class_type": "LoraLabLoraLoaderModelClip", "inputs": {}}
    with pytest.raises(GraphValidationError) as e:
        validate_graph(api, REG)
    text = {p.node_id: p.message for p in e.value.problems}
    assert "custom node pack ComfyUI_IPAdapter_plus" in text["5"] and "rgthree-comfy" in text["6"]
    assert "only ComfyUI can run it" in text["7"] and "MODEL / CLIP" in text["7"]


def test_missing_required_input(api):
    del api["3"]["inputs"]["prompt"]
    p = only(api)
    assert (p.kind, p.node_id, p.title, p.input, p.value) == ("missing_input", "3", "Sample", "prompt", None)
    assert str(p) == "node 3 \"Sample\" (FakeSampler) input 'prompt' = None: required input is missing"


def test_link_type_mismatch(api):
    api["4"]["inputs"]["images"] = ["2", 0]
    p = only(api)
    assert (p.kind, p.node_id, p.input, p.value) == ("type_mismatch", "4", "images", ["2", 0])
    assert "LORA_LAB_MODEL" in p.message and "IMAGE" in p.message


def test_out_of_range_values(api):
    api["3"]["inputs"]["steps"] = 0
    api["2"]["inputs"]["strength"] = 11.5
    found = {p.input: p for p in problems(api)}
    assert found["steps"].kind == "out_of_range" and "smaller than min of 1" in found["steps"].message
    assert found["strength"].kind == "out_of_range" and found["strength"].value == 11.5
    assert "bigger than max of 10.0" in str(found["strength"]) and "node 2" in str(found["strength"])


def test_invalid_values(api):
    api["3"]["inputs"]["seed"] = "abc"
    api["3"]["inputs"]["cfg"] = 1.5j
    api["3"]["inputs"]["steps"] = 2.5
    found = {p.input: p for p in problems(api)}
    assert set(found) == {"seed", "cfg", "steps"} and all(p.kind == "invalid_value" for p in found.values())
    assert found["seed"].value == "abc" and "INT" in found["seed"].message


def test_combo_value_not_in_list(api):
    api["2"]["inputs"]["lora_name"] = "missing.safetensors"
    p = only(api)
    assert p.kind == "not_in_list" and p.input == "lora_name" and p.value == "missing.safetensors"
    assert "style.safetensors" in p.message


def test_constant_where_a_link_is_needed(api):
    api["2"]["inputs"]["model"] = "a.safetensors"
    p = only(api)
    assert p.kind == "invalid_value" and "takes a link of type LORA_LAB_MODEL" in p.message


def test_bad_links(api):
    api["2"]["inputs"]["model"] = ["7", 0]
    api["3"]["inputs"]["model"] = ["2", 3]
    api["4"]["inputs"]["images"] = ["3", 0, 1]
    found = {p.node_id: p for p in problems(api)}
    assert {p.kind for p in found.values()} == {"bad_link"}
    assert "not in the graph" in found["2"].message and "output 3 does not exist" in found["3"].message


def test_cycle(api):
    api["1"] = {"class_type": "FakeLora", "inputs": {"model": ["2", 0], "lora_name": "style.safetensors",
                                                     "strength": 1.0}}
    p = only(api)
    assert p.kind == "cycle" and p.node_id == "2"
    assert p.message == "dependency cycle: 2 (FakeLora) -> 1 (FakeLora) -> 2 (FakeLora)"


def test_no_output_node(api):
    del api["4"]
    p = only(api)
    assert p.kind == "no_outputs" and p.node_id is None


def int_chain(**noise_inputs):
    """Loader + an INT source feeding the sampler's steps + saver."""
    return {
        "1": {"class_type": "FakeEven", "inputs": {"n": 12}},
        "3": {"class_type": "FakeSaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
        "4": {"class_type": "FakeSampler", "inputs": {"model": ["5", 0], "prompt": "p", "seed": 1, "steps": ["1", 0],
                                                      "cfg": 1.0, "sampler_name": "euler"}},
        "5": {"class_type": "FakeLoader", "inputs": {"ckpt_name": "a.safetensors"}},
    }


def test_validate_inputs_hook_replaces_the_range_check():
    graph = int_chain()
    validate_graph(graph, REG)  # n = 12 is above max 10, but VALIDATE_INPUTS takes n and accepts it
    graph["1"]["inputs"]["n"] = 3
    p = only(graph)
    assert (p.kind, p.node_id, p.input, p.value) == ("custom_validation", "1", "n", 3) and "3 is odd" in p.message


def test_every_problem_is_reported_at_once(api):
    api["2"]["class_type"] = "Nope"
    api["3"]["inputs"]["seed"] = -1
    api["4"]["inputs"]["filename_prefix"] = {"a": 1}
    api["6"] = {"class_type": "SaveImage", "inputs": {}}
    with pytest.raises(GraphValidationError) as e:
        validate_graph(api, REG)
    kinds = sorted(p.kind for p in e.value.problems)
    assert kinds == ["comfyui_only", "invalid_value", "out_of_range", "unknown_node_type"]
    text = str(e.value)
    assert text.startswith("graph failed validation (4 problems):") and "node 3" in text and "'seed' = -1" in text
    d = e.value.problems[0].to_dict()
    assert set(d) == {"kind", "node_id", "title", "class_type", "input", "value", "message", "text"}


def test_boxed_values_and_booleans():
    graph = int_chain()
    graph["1"] = {"class_type": "FakeNoise", "inputs": {"noise_seed": 4, "mode": {"__value__": "b"}, "plain": 1,
                                                        "text_in": "t", "flag": "false"}}
    g = validate_graph(graph, REG)
    assert g.prompt["1"]["inputs"]["mode"] == "b" and g.prompt["1"]["inputs"]["flag"] is False
    graph["1"]["inputs"]["flag"] = "maybe"
    p = only(graph)
    assert (p.kind, p.input, p.value) == ("invalid_value", "flag", "maybe")


def test_only_what_the_outputs_need_is_checked(api):
    api["7"] = {"class_type": "FakeLora", "inputs": {"strength": 99}}  # dangling and broken: not run
    validate_graph(api, REG)
    api["8"] = {"class_type": "NotInstalled", "inputs": {}}  # unknown types are reported anywhere
    assert only(api).kind == "unknown_node_type"


def test_type_compatibility_rules():
    assert types_compatible("IMAGE", "IMAGE") and types_compatible("*", "MODEL") and types_compatible("A,B", "B,C")
    assert not types_compatible("IMAGE", "MASK") and not types_compatible("A,B", "C")
    assert types_compatible(["x", "y"], "COMBO") and types_compatible(["x"], ["x", "y"])
