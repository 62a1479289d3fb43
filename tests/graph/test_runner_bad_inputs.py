"""The runner against graphs a user can own: deep JSON, long reroute / bypass / node chains,
deeply nested subgraphs (no RecursionError), malformed UI fields (named by node and field),
`mode: "4"` strings, a failing file among good ones (the others still get their results),
unknown node names (the error lists what exists) and --quiet on a huge invalid graph."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from conftest import load_fake_nodes

from lora_lab.nodes.cli.main import main
from lora_lab.nodes.graph.workflow import OverrideError, WorkflowError, find_node, load_workflow
from lora_lab.nodes.graph.workflow_ui import ui_to_api

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS
UI = json.loads((FIXTURES / "ui_basic.json").read_text())
API = json.loads((FIXTURES / "api_basic.json").read_text())
DEEP = 3 * sys.getrecursionlimit()  # well past Python's limit


@pytest.fixture(autouse=True)
def _reset():
    fakes.reset()


def _node(ui, nid):
    return next(n for n in ui["nodes"] if n["id"] == nid)


def _chain(kind: str, length: int) -> dict:
    """ui_basic with `length` Reroutes (or bypassed FakeLoras) between the loader and the lora."""
    ui = copy.deepcopy(UI)
    loader, first = _node(ui, 1), _node(ui, 2)  # loader -> reroute 2 -> (bypassed lora 3) -> lora 5
    link = next(lk for lk in ui["links"] if lk[0] == 1)
    next_id, next_link = 1000, 1000
    prev_id, prev_link = 1, 1
    for _ in range(length):
        n = {"id": next_id, "type": "Reroute" if kind == "reroute" else "FakeLora", "mode": 0 if kind == "reroute"
             else 4, "inputs": [{"name": "model", "type": "LORA_LAB_MODEL", "link": prev_link}],
             "outputs": [{"name": "model", "type": "LORA_LAB_MODEL", "links": [next_link + 1]}],
             "widgets_values": [] if kind == "reroute" else ["style.safetensors", 0.5]}
        ui["nodes"].append(n)
        ui["links"].append([prev_link, prev_id, 0, next_id, 0, "LORA_LAB_MODEL"])
        prev_id, prev_link = next_id, next_link + 1
        next_id, next_link = next_id + 1, next_link + 1
    ui["links"].remove(link)
    loader["outputs"][0]["links"] = [1]
    ui["links"].append([prev_link, prev_id, 0, 2, 0, "LORA_LAB_MODEL"])
    first["inputs"][0]["link"] = prev_link
    return ui


@pytest.mark.parametrize("kind", ["reroute", "bypass"])
def test_long_chains_convert(kind):
    short = ui_to_api(UI, REG)
    long = ui_to_api(_chain(kind, DEEP), REG)
    assert long == short  # the chain vanishes, the graph is the same


def test_deeply_nested_subgraphs_convert():
    """Subgraph k holds one instance of subgraph k+1; the innermost holds a FakeLoader."""
    depth = DEEP // 3
    defs = []
    for k in range(depth):
        inner = ({"id": 1, "type": f"sg-{k + 1}", "mode": 0, "inputs": [], "outputs": [
            {"name": "model", "type": "LORA_LAB_MODEL", "links": [1]}]} if k + 1 < depth else
            {"id": 1, "type": "FakeLoader", "mode": 0, "inputs": [],
             "outputs": [{"name": "model", "type": "LORA_LAB_MODEL", "links": [1]}],
             "widgets_values": ["b.safetensors"]})
        defs.append({"id": f"sg-{k}", "name": f"level {k}", "nodes": [inner], "inputs": [],
                     "outputs": [{"name": "model", "type": "LORA_LAB_MODEL"}],
                     "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                                "type": "LORA_LAB_MODEL"}]})
    ui = copy.deepcopy(UI)
    loader = _node(ui, 1)
    loader["type"] = "sg-0"
    loader.pop("widgets_values")
    ui["definitions"] = {"subgraphs": defs}
    api = ui_to_api(ui, REG)
    # every level's node 1 collides (with the root's node 1, then with the level above's), so the
    # frontend renumbers them in definition order: last_node_id + 1, + 2, ...
    base = ui["last_node_id"]
    assert base >= max(n["id"] for n in ui["nodes"])
    inner_id = ":".join(["1", *(str(base + k) for k in range(1, depth + 1))])
    assert api[inner_id]["class_type"] == "FakeLoader" and api["5"]["inputs"]["model"] == [inner_id, 0]


def test_deep_graph_runs_through_the_cli(tmp_path, capsys):
    """DEEP FakeLoras in a row: validation, cache keys and execution without recursion."""
    api = {"1": {"class_type": "FakeLoader", "inputs": {"ckpt_name": "a.safetensors"}}}
    prev = "1"
    for i in range(2, DEEP):
        api[str(i)] = {"class_type": "FakeLora", "inputs": {"model": [prev, 0], "lora_name": "style.safetensors",
                                                            "strength": 0.0}}
        prev = str(i)
    api["s"] = {"class_type": "FakeSampler", "inputs": {"model": [prev, 0], "prompt": "x", "seed": 1, "steps": 1,
                                                        "cfg": 1.0, "sampler_name": "euler"}}
    api["o"] = {"class_type": "FakeSaveImage", "inputs": {"images": ["s", 0], "filename_prefix": "deep"}}
    g = tmp_path / "deep.json"
    g.write_text(json.dumps(api))
    assert main(["run", str(g), "--quiet", "--json", "--output-dir", str(tmp_path / "out")], registry=REG) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"][0]["status"] == "ok" and len(summary["runs"][0]["files"]) == 1


def test_one_bad_file_never_stops_the_others(tmp_path, capsys):
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / "a_deep.json").write_text("[" * (10 * DEEP) + "]" * (10 * DEEP))
    bad = copy.deepcopy(UI)
    _node(bad, 6)["type"] = None
    (folder / "b_null_type.json").write_text(json.dumps(bad))
    (folder / "c_good.json").write_text(json.dumps(API))
    (folder / "d_chain.json").write_text(json.dumps(_chain("reroute", DEEP)))
    code = main(["run", str(folder), "--quiet", "--json", "--output-dir", str(tmp_path / "out")], registry=REG)
    assert code == 1
    runs = {Path(r["graph"]).name: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs["a_deep.json"]["status"] == "failed" and "nested too deeply" in runs["a_deep.json"]["error"]
    assert runs["b_null_type.json"]["status"] == "failed"
    assert "node 6" in runs["b_null_type.json"]["error"] and "'type'" in runs["b_null_type.json"]["error"]
    assert runs["c_good.json"]["status"] == "ok" and runs["d_chain.json"]["status"] == "ok"


@pytest.mark.parametrize("field,edit,named", [
    ("type", lambda n: n.update(type=None), "'type' = 'None'"),
    ("inputs[0].link", lambda n: n["inputs"][0].update(link="4"), "'inputs[0].link' = '4'"),
    ("inputs", lambda n: n.update(inputs="model"), "'inputs' = 'model'"),
    ("outputs[0].links", lambda n: n["outputs"][0].update(links=["6"]), "'outputs[0].links'"),
    ("mode", lambda n: n.update(mode="bypass"), "'mode' = 'bypass'"),
    ("widgets_values", lambda n: n.update(widgets_values="a cat"), "'widgets_values' = 'a cat'"),
])
def test_malformed_ui_fields_are_named(tmp_path, field, edit, named):
    ui = copy.deepcopy(UI)
    edit(_node(ui, 6))
    g = tmp_path / "g.json"
    g.write_text(json.dumps(ui))
    with pytest.raises(WorkflowError) as info:
        load_workflow(g, REG)
    msg = str(info.value)
    assert str(g) in msg and "node 6" in msg and named in msg, msg


def test_malformed_link_is_named(tmp_path):
    ui = copy.deepcopy(UI)
    ui["links"][0] = [1, 1, "0", 2, 0, "LORA_LAB_MODEL"]
    with pytest.raises(WorkflowError, match="'origin_slot' = '0'"):
        ui_to_api(ui, REG)


def test_mode_as_a_string():
    ui = copy.deepcopy(UI)
    for n in ui["nodes"]:
        n["mode"] = str(n.get("mode") or 0)
    assert ui_to_api(ui, REG) == ui_to_api(UI, REG)  # "4" bypasses, "2" mutes, as 4 and 2 do
    assert "3" not in ui_to_api(ui, REG) and "9" not in ui_to_api(ui, REG)


def test_unknown_node_names_list_what_exists():
    prompt = {"1": {"class_type": "A", "inputs": {}, "_meta": {"title": "Sample (LoRA Lab)"}},
              "2": {"class_type": "B", "inputs": {}}}
    with pytest.raises(OverrideError) as info:
        find_node(prompt, "Sample")
    assert "'Sample'" in str(info.value) and "1 (Sample (LoRA Lab))" in str(info.value) and "2 (B)" in str(info.value)


def test_quiet_on_a_huge_invalid_graph_stays_short(tmp_path, capsys):
    api = {str(i): {"class_type": "Nope", "inputs": {}} for i in range(20000)}
    api["o"] = {"class_type": "FakeSaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    g = tmp_path / "huge.json"
    g.write_text(json.dumps(api))
    assert main(["run", str(g), "--quiet", "--output-dir", str(tmp_path / "out")], registry=REG) == 1
    cap = capsys.readouterr()
    assert len(cap.err) < 20000 and "huge.json" in cap.err and cap.out == ""
