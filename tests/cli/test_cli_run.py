"""`lora-lab run`: graphs, folders, PNGs, overrides, sweeps, --json and exit codes."""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_fake_nodes

from lora_lab.nodes.cli.main import SUBCOMMANDS, main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS
API = json.loads((FIXTURES / "api_basic.json").read_text())


@pytest.fixture(autouse=True)
def _reset():
    fakes.reset()


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def write(path: Path, graph) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(graph))
    return path


def run(*argv, out_dir=None):
    args = ["run", *map(str, argv), "--quiet"]
    if out_dir is not None:
        args += ["--output-dir", str(out_dir)]
    return main(args, registry=REG)


def run_json(capsys, *argv, out_dir=None):
    code = run(*argv, "--json", out_dir=out_dir)
    captured = capsys.readouterr()
    run_json.err = captured.err
    return code, json.loads(captured.out)


def test_run_writes_into_the_output_dir(tmp_path, out, capsys):
    g = write(tmp_path / "api_basic.json", API)
    assert main(["run", str(g), "--output-dir", str(out), "--models-dir", str(tmp_path / "m")], registry=REG) == 0
    assert [p.name for p in out.iterdir()] == ["cat_00001_.json"]
    text = capsys.readouterr().out
    assert f"ok      {g}" in text and "1 of 1 run(s) succeeded, 0 failed" in text


def test_json_summary(tmp_path, out, capsys):
    g = write(tmp_path / "api_basic.json", API)
    code, doc = run_json(capsys, g, out_dir=out)
    assert code == 0 and doc["status"] == "ok" and doc["exit_code"] == 0
    (r,) = doc["runs"]
    assert r["graph"] == str(g) and r["name"] == "api_basic" and r["status"] == "ok" and r["error"] is None
    assert r["files"] == [str(out / "cat_00001_.json")]
    assert set(r["timings"]) == {"1", "2", "3", "4"} and r["seconds"] >= 0
    assert r["executed_nodes"] == ["1", "2", "3", "4"] and r["label"] is None
    assert doc["cache"] == {"hits": 0, "misses": 3}


def test_ui_and_png_graphs_run_with_their_workflow(tmp_path, out, capsys):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    ui = json.loads((FIXTURES / "ui_basic.json").read_text())
    info = PngInfo()
    info.add_text("workflow", json.dumps(ui))
    (tmp_path / "g").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "g" / "from.png", pnginfo=info)
    write(tmp_path / "g" / "ui.json", ui)
    code, doc = run_json(capsys, tmp_path / "g", out_dir=out)
    assert code == 0 and [r["name"] for r in doc["runs"]] == ["from", "ui"]
    for r in doc["runs"]:
        (f,) = r["files"]
        saved = json.loads(Path(f).read_text())
        assert saved["extra_pnginfo"] == {"workflow": ui}  # EXTRA_PNGINFO carries the UI workflow
        assert saved["prompt"]["6"]["inputs"]["steps"] == 30
    assert fakes.LOADS == ["a.safetensors"]  # two graphs, one checkpoint load


def test_checkpoint_loaded_once_across_a_folder(tmp_path, out, capsys):
    for i in range(6):
        g = copy.deepcopy(API)
        g["3"]["inputs"]["seed"] = i
        write(tmp_path / "many" / f"g{i}.json", g)
    code, doc = run_json(capsys, tmp_path / "many", out_dir=out)
    assert code == 0 and len(doc["runs"]) == 6 and fakes.LOADS == ["a.safetensors"]
    assert [r["cached_nodes"] for r in doc["runs"][1:]] == [["1", "2"]] * 5


def test_set_by_id_and_title(tmp_path, out, capsys):
    g = write(tmp_path / "api_basic.json", API)
    code, doc = run_json(capsys, g, "--set", "3.seed=99", "--set", "Style LoRA.strength=-0.5",
                         "--set", "Save.filename_prefix=x", out_dir=out)
    assert code == 0 and doc["runs"][0]["overrides"] == {"3.seed": "99", "Style LoRA.strength": "-0.5",
                                                         "Save.filename_prefix": "x"}
    assert [c for n, c in fakes.CALLS if n == "FakeSampler"][0]["seed"] == 99
    assert [c for n, c in fakes.CALLS if n == "FakeLora"][0]["strength"] == -0.5


def test_sweeps_run_every_combination_with_deterministic_names(tmp_path, out, capsys):
    g = write(tmp_path / "api_basic.json", API)
    code, doc = run_json(capsys, g, "--sweep", "3.seed=1,2", "--sweep", "Style LoRA.strength=0.5,1", out_dir=out)
    assert code == 0
    assert [r["label"] for r in doc["runs"]] == [
        "api_basic_seed-1_strength-0.5", "api_basic_seed-1_strength-1",
        "api_basic_seed-2_strength-0.5", "api_basic_seed-2_strength-1"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"cat_{r['label']}_00001_.json" for r in doc["runs"])
    assert [c["seed"] for n, c in fakes.CALLS if n == "FakeSampler"] == [1, 1, 2, 2]
    assert fakes.LOADS == ["a.safetensors"]
    # the same sweep again gives the same names (counter 2: the saver never overwrites)
    run(g, "--sweep", "3.seed=1,2", "--sweep", "Style LoRA.strength=0.5,1", out_dir=out)
    assert len(list(out.glob("*_00002_.json"))) == 4


def test_sweep_values_as_a_json_list(tmp_path, out, capsys):
    g = write(tmp_path / "api_basic.json", API)
    code, doc = run_json(capsys, g, "--sweep", 'Sample.prompt=["a, b", "c/d"]', out_dir=out)
    assert code == 0 and [r["label"] for r in doc["runs"]] == ["api_basic_prompt-a_b", "api_basic_prompt-c_d"]


def test_a_failing_graph_does_not_stop_the_others(tmp_path, out, capsys):
    bad = copy.deepcopy(API)
    bad["3"]["inputs"]["steps"] = 0
    write(tmp_path / "g" / "a_bad.json", bad)
    write(tmp_path / "g" / "b_good.json", API)
    (tmp_path / "g" / "c_broken.json").write_text("{")
    code, doc = run_json(capsys, tmp_path / "g", tmp_path / "missing.json", out_dir=out)
    assert code == 1 and doc["status"] == "failed"
    assert [r["status"] for r in doc["runs"]] == ["failed", "ok", "failed", "failed"]
    bad_run = doc["runs"][0]
    assert bad_run["problems"][0]["kind"] == "out_of_range" and bad_run["problems"][0]["node_id"] == "3"
    assert "not valid JSON" in doc["runs"][2]["error"] and "no such file" in doc["runs"][3]["error"]


def test_validation_errors_go_to_stderr(tmp_path, out, capsys):
    bad = copy.deepcopy(API)
    bad["5"] = {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "KSampler"}}
    bad["2"]["inputs"]["lora_name"] = "nope.safetensors"
    assert run(write(tmp_path / "bad.json", bad), out_dir=out) == 1
    err = capsys.readouterr().err
    assert "KSampler is a ComfyUI core node the headless runner does not run" in err
    assert "the headless runner runs these node types: " in err
    assert "node 2 \"Style LoRA\" (FakeLora) input 'lora_name' = 'nope.safetensors'" in err
    assert fakes.CALLS == []


def test_validate_only_runs_nothing(tmp_path, out, capsys):
    code, doc = run_json(capsys, write(tmp_path / "g.json", API), "--validate-only", out_dir=out)
    assert code == 0 and doc["runs"][0]["status"] == "valid" and fakes.CALLS == [] and not out.exists()


def test_fail_fast(tmp_path, out, capsys):
    write(tmp_path / "g" / "a.json", {"1": {"class_type": "Nope", "inputs": {}}})
    write(tmp_path / "g" / "b.json", API)
    code, doc = run_json(capsys, tmp_path / "g", "--fail-fast", out_dir=out)
    assert code == 1 and [r["status"] for r in doc["runs"]] == ["failed", "skipped"]


def test_ctrl_c_stops_cleanly_with_130(tmp_path, out, capsys):
    stop = copy.deepcopy(API)
    stop["3"] = {"class_type": "FakeInterrupt", "inputs": {"model": ["2", 0]}}
    write(tmp_path / "g" / "a.json", API)
    write(tmp_path / "g" / "b.json", stop)
    write(tmp_path / "g" / "c.json", API)
    code, doc = run_json(capsys, tmp_path / "g", out_dir=out)
    assert code == 130 and doc["status"] == "interrupted" and doc["exit_code"] == 130
    assert [r["status"] for r in doc["runs"]] == ["ok", "interrupted", "skipped"]
    assert [p.name for p in out.iterdir()] == ["cat_00001_.json"]  # no temp or partial files
    assert "interrupted; stopped cleanly" in run_json.err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_real_signal_stops_the_process_cleanly(tmp_path, out, sig, code):
    slow = copy.deepcopy(API)
    slow["3"] = {"class_type": "FakeSlow", "inputs": {"model": ["2", 0], "seconds": 30.0}}
    write(tmp_path / "g" / "a.json", API)
    write(tmp_path / "g" / "b.json", slow)
    write(tmp_path / "g" / "c.json", API)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fakes', {str(FIXTURES / 'fake_nodes.py')!r})\n"
        "fakes = importlib.util.module_from_spec(spec); spec.loader.exec_module(fakes)\n"
        "from lora_lab.nodes.cli.main import main\n"
        f"sys.exit(main(['run', {str(tmp_path / 'g')!r}, '--json', '--quiet', '--output-dir', {str(out)!r}],"
        " registry=fakes.NODE_CLASS_MAPPINGS))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    doc = json.loads(stdout)
    assert doc["status"] == "interrupted" and [r["status"] for r in doc["runs"]] == ["ok", "interrupted", "skipped"]
    assert sorted(p.name for p in out.iterdir()) == ["cat_00001_.json", "started"]


def test_usage_errors_exit_2(tmp_path, capsys):
    g = write(tmp_path / "g.json", API)
    assert run(g, "--set", "nodot") == 2
    assert run(g, "--set", "3.seed=1", "--sweep", "3.seed=2,3") == 2
    assert run(g, "--sweep", "3.seed=") == 2
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty") == 2
    assert main(["run"], registry=REG) == 2
    assert main(["bogus"], registry=REG) == 2
    err = capsys.readouterr().err
    assert "expected NODE.input=VALUE" in err and "set more than once" in err and "no graph files" in err


def test_bad_override_fails_that_graph(tmp_path, out, capsys):
    code, doc = run_json(capsys, write(tmp_path / "g.json", API), "--set", "3.seed=abc", out_dir=out)
    assert code == 1 and "'seed' = 'abc'" in doc["runs"][0]["error"]
    code, doc = run_json(capsys, write(tmp_path / "g.json", API), "--set", "Nowhere.seed=1", out_dir=out)
    assert code == 1 and "no node with id, title or class type 'Nowhere'" in doc["runs"][0]["error"]


def test_subcommand_table():
    assert "run" in SUBCOMMANDS and callable(SUBCOMMANDS["run"][2])
