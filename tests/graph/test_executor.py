"""Execution with ComfyUI's semantics: output-driven, cached by input signature across graphs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import load_fake_nodes

from lora_lab.nodes.io import paths
from lora_lab.nodes.graph.executor import Executor, OutputCache, RunInterrupted, current_run_label

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS


@pytest.fixture
def out(tmp_path):
    fakes.reset()
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield tmp_path / "out"


@pytest.fixture
def api():
    return json.loads((FIXTURES / "api_basic.json").read_text())


def calls(cls_name):
    return [kw for name, kw in fakes.CALLS if name == cls_name]


def test_runs_the_graph_and_reports_files_and_timings(out, api):
    res = Executor(REG, quiet=True).run(api, extra_pnginfo={"workflow": {"nodes": []}}, name="g")
    assert res.ok and res.error is None
    assert res.executed == ["1", "2", "3", "4"] and res.cached == []
    assert set(res.timings) == {"1", "2", "3", "4"} and all(t >= 0 for t in res.timings.values())
    assert res.files == [str(out / "cat_00001_.json")]
    saved = json.loads((out / "cat_00001_.json").read_text())
    assert saved["prompt"]["3"]["inputs"]["seed"] == 5  # hidden PROMPT: the API graph
    assert saved["extra_pnginfo"] == {"workflow": {"nodes": []}} and saved["node"] == "4"
    assert saved["image"]["model"]["loras"] == [["style.safetensors", 0.8]]


def test_fifty_graphs_on_one_checkpoint_load_it_once(out, api):
    ex = Executor(REG, quiet=True)
    for seed in range(50):
        g = copy.deepcopy(api)
        g["3"]["inputs"]["seed"] = seed
        assert ex.run(g, name=f"g{seed}").ok
    assert fakes.LOADS == ["a.safetensors"]
    assert len(calls("FakeLora")) == 1 and len(calls("FakeSampler")) == 50
    assert len(list(out.glob("*.json"))) == 50
    assert ex.cache.hits == 2 * 49


def test_output_nodes_always_run_and_only_what_outputs_need_runs(out, api):
    api["9"] = {"class_type": "FakeLoader", "inputs": {"ckpt_name": "b.safetensors"}}  # feeds nothing
    ex = Executor(REG, quiet=True)
    first, second = ex.run(api), ex.run(api)
    assert fakes.LOADS == ["a.safetensors"]
    assert second.executed == ["4"] and second.cached == ["1", "2", "3"]
    assert len(first.files) == len(second.files) == 1 and first.files != second.files


def test_a_changed_input_reruns_only_what_depends_on_it(out, api):
    ex = Executor(REG, quiet=True)
    ex.run(api)
    api["2"]["inputs"]["strength"] = 0.3
    res = ex.run(api)
    assert res.cached == ["1"] and res.executed == ["2", "3", "4"]
    assert [c["strength"] for c in calls("FakeLora")] == [0.8, 0.3]


def test_cache_keeps_what_recent_runs_used(out, api):
    other = copy.deepcopy(api)
    other["1"]["inputs"]["ckpt_name"] = "b.safetensors"
    for keep, loads in ((1, ["a.safetensors", "b.safetensors", "a.safetensors"]),
                        (2, ["a.safetensors", "b.safetensors"])):
        fakes.reset()
        ex = Executor(REG, quiet=True, keep_runs=keep)
        for g in (api, other, api):
            assert ex.run(g).ok
        assert fakes.LOADS == loads


def test_output_cache_eviction():
    c = OutputCache(keep_runs=1)
    c.put("a", [1])
    c.end_run()
    assert c.get("a") == [1]  # used by this run: kept
    c.end_run()
    c.end_run()
    assert c.get("a") is None and len(c) == 0
    with pytest.raises(ValueError):
        OutputCache(keep_runs=0)


def test_run_label_names_the_files(out, api):
    assert current_run_label() is None
    res = Executor(REG, quiet=True).run(api, label="api_seed-5")
    assert [Path(f).name for f in res.files] == ["cat_api_seed-5_00001_.json"]
    assert current_run_label() is None


def test_a_failing_node_fails_the_run_with_its_name_and_later_runs_work(out, api):
    ex = Executor(REG, quiet=True)
    bad = copy.deepcopy(api)
    bad["3"] = {"class_type": "FakeBroken", "inputs": {"model": ["2", 0]}, "_meta": {"title": "Breaks"}}
    res = ex.run(bad)
    assert res.status == "failed" and res.files == []
    assert res.error == 'node 3 "Breaks" (FakeBroken) failed: RuntimeError: the fake node broke'
    assert ex.run(api).ok and fakes.LOADS == ["a.safetensors"]


def test_validation_failure_runs_nothing(out, api):
    api["3"]["inputs"]["steps"] = 0
    res = Executor(REG, quiet=True).run(api)
    assert res.status == "failed" and fakes.CALLS == []
    assert [p["kind"] for p in res.problems] == ["out_of_range"] and "node 3" in res.error


def test_interrupt_raises_with_the_partial_result(out, api):
    api["3"] = {"class_type": "FakeInterrupt", "inputs": {"model": ["2", 0]}}
    with pytest.raises(RunInterrupted) as e:
        Executor(REG, quiet=True).run(api, name="g")
    res = e.value.result
    assert res.status == "interrupted" and res.executed == ["1", "2"] and res.files == []
    assert isinstance(e.value.cause, KeyboardInterrupt)
    assert not out.exists() or list(out.iterdir()) == []


def test_is_changed_nan_runs_every_time(out, api):
    api["5"] = {"class_type": "FakeTick", "inputs": {"model": ["1", 0]}}
    api["2"]["inputs"]["model"] = ["5", 0]
    fakes.FakeTick.COUNT = 0
    ex = Executor(REG, quiet=True)
    ex.run(api)
    res = ex.run(api)
    assert fakes.FakeTick.COUNT == 2 and res.cached == ["1"]


def test_list_outputs_map_over_downstream_nodes(out, api):
    api["6"] = {"class_type": "FakeList", "inputs": {"text": "a cat\na dog"}}
    api["3"]["inputs"]["prompt"] = ["6", 0]
    res = Executor(REG, quiet=True).run(api)
    assert [c["prompt"] for c in calls("FakeSampler")] == ["a cat", "a dog"]
    assert len(res.files) == 2 and len(res.ui["4"]["images"]) == 2


def test_nodes_run_in_inference_mode(out, api):
    import torch

    seen = []

    class Probe(fakes.FakeLora):
        def apply(self, model, lora_name, strength):
            seen.append(torch.is_inference_mode_enabled())
            return super().apply(model, lora_name, strength)

    api["2"]["class_type"] = "Probe"
    assert Executor({**REG, "Probe": Probe}, quiet=True).run(api).ok
    assert seen == [True]


def test_bad_return_values_are_named(out, api):
    class Wrong(fakes.FakeLora):
        def apply(self, model, lora_name, strength):
            return (model, model)

    api["2"]["class_type"] = "Wrong"
    res = Executor({**REG, "Wrong": Wrong}, quiet=True).run(api)
    assert res.status == "failed" and "returned 2 output(s), RETURN_TYPES declares 1" in res.error
