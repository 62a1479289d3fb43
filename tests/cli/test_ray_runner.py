"""`lora-lab run --ray` on a local Ray cluster (ray.init with 2 CPUs, 2 worker actors): the same
files as a local run, each checkpoint loaded once per worker, failures per run, files sent back
to the driver, Ctrl-C. Skipped without Ray (the optional extra `[ray]`)."""
from __future__ import annotations

import copy
import json
import shutil
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from conftest import load_fake_nodes
from PIL import Image

ray = pytest.importorskip("ray")

from lora_lab.nodes.cli import ray_runner
from lora_lab.nodes.cli.main import main
from lora_lab.nodes.cli.run_plan import Sweep, expand
from lora_lab.nodes.demo import demo
from lora_lab.nodes.graph.workflow import parse_assignment
from lora_lab.nodes.io.paths import standalone_dirs

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the 1-CPU actors run (OMP_NUM_THREADS=1)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module (starting one takes seconds)."""
    ray.cloudpickle.register_pickle_by_value(fakes)  # the test nodes are not importable by name
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo checkpoint and a second checkpoint (a copy under another name)."""
    root = tmp_path_factory.mktemp("models")
    path = demo.ensure_demo_checkpoint(root / "checkpoints")
    shutil.copy(path, root / "checkpoints" / "second.safetensors")
    return root


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def run_json(capsys, *argv, registry=None) -> tuple[int, dict]:
    code = main(["run", *map(str, argv), "--quiet", "--json"], registry=registry)
    return code, json.loads(capsys.readouterr().out)


DEMO = [ROOT / "workflows" / "demo_txt2img.json", "--set", "LoraLabSampler.steps=1", "--set", "LoraLabSampler.width=64",
        "--set", "LoraLabSampler.height=64", "--sweep",
        f"LoraLabCheckpointLoader.ckpt_name={demo.DEMO_NAME},missing.safetensors,second.safetensors",
        "--sweep", "LoraLabSampler.seed=1,2"]


def test_ray_run_equals_the_local_run(tmp_path, capsys, models):
    code_local, local = run_json(capsys, *DEMO, "--models-dir", models, "--output-dir", tmp_path / "local")
    code, doc = run_json(capsys, *DEMO, "--models-dir", models, "--output-dir", tmp_path / "ray",
                         "--ray", "--ray-workers", "2")
    assert code == code_local == 1 and doc["status"] == "failed"  # the missing checkpoint's runs
    strip = ("seconds", "timings", "files", "executed_nodes", "cached_nodes", "worker")
    assert [{k: v for k, v in r.items() if k not in strip} for r in doc["runs"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in local["runs"]]

    # a failing combination is reported, the others ran
    failed = [r for r in doc["runs"] if r["status"] == "failed"]
    assert [r["overrides"]["LoraLabCheckpointLoader.ckpt_name"] for r in failed] == ["missing.safetensors"] * 2
    assert all("ckpt_name" in r["error"] and "missing.safetensors" in r["error"] for r in failed)
    assert [r["status"] for r in doc["runs"]].count("ok") == 4

    # the same files: names, PNG chunks, pixels
    mine, theirs = tree(tmp_path / "ray"), tree(tmp_path / "local")
    assert sorted(mine) == sorted(theirs) and len(mine) == 4
    for name in mine:
        with Image.open(mine[name]) as a, Image.open(theirs[name]) as b:
            assert a.text == b.text
            # one thread on both sides gives the same bits; the tolerance is for BLAS builds
            # whose kernels differ between processes (FIELD-NOTES: images within a tolerance)
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    assert {Path(f).relative_to(tmp_path / "ray").as_posix() for r in doc["runs"] for f in r["files"]} == set(mine)

    # two workers, each loading each checkpoint it ran once (the loader is node 1)
    ok = [r for r in doc["runs"] if r["status"] == "ok"]
    workers = {r["worker"] for r in doc["runs"]}
    assert len(workers) == 2
    loads: dict = {}
    for r in ok:
        key = (r["worker"], r["overrides"]["LoraLabCheckpointLoader.ckpt_name"])
        loads[key] = loads.get(key, 0) + ("1" in r["executed_nodes"])
    assert loads and all(n == 1 for n in loads.values()), loads
    assert doc["cache"]["hits"] >= len(ok) - len(loads)


def fake_graph(tmp_path: Path, seconds: float = 0.0) -> Path:
    g = json.loads((FIXTURES / "api_basic.json").read_text())
    if seconds:
        g["3"] = {"class_type": "FakeSlow", "inputs": {"model": ["2", 0], "seconds": seconds}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(g))
    return path


def test_files_sent_back_to_the_driver(tmp_path, capsys):
    g = fake_graph(tmp_path)
    sweep = ["--sweep", "3.seed=1,2,3,4", "--sweep", "Style LoRA.strength=0.5,1"]
    _, local = run_json(capsys, g, *sweep, "--output-dir", tmp_path / "local", registry=REG)
    (tmp_path / "fetched").mkdir()
    (tmp_path / "fetched" / f"cat_{local['runs'][0]['label']}_00001_.json").write_text("taken")  # never overwritten
    code, doc = run_json(capsys, g, *sweep, "--output-dir", tmp_path / "fetched", "--ray", "--ray-workers", "2",
                         "--ray-fetch-files", registry=REG)
    assert code == 0 and len(doc["runs"]) == 8 and len({r["worker"] for r in doc["runs"]}) == 2
    mine, theirs = tree(tmp_path / "fetched"), tree(tmp_path / "local")
    first = f"cat_{local['runs'][0]['label']}"
    assert mine.pop(f"{first}_00001_.json").read_text() == "taken"
    assert mine.pop(f"{first}_00002_.json").read_bytes() == theirs.pop(f"{first}_00001_.json").read_bytes()
    assert sorted(mine) == sorted(theirs) and all(mine[n].read_bytes() == theirs[n].read_bytes() for n in mine)
    assert doc["runs"][0]["files"] == [str(tmp_path / "fetched" / f"{first}_00002_.json")]


def test_ctrl_c_cancels_the_queued_runs(tmp_path):
    """KeyboardInterrupt in the driver (raised here by the first report): queued calls never
    start, the runs in progress finish whole, the actors go away."""
    g = fake_graph(tmp_path, seconds=1.0)
    sweep = Sweep(parse_assignment("3.seconds=1"), [str(1 + i / 100) for i in range(8)])
    plan = expand([g], [], [sweep])
    args = Namespace(ray="", ray_workers=2, ray_fetch_files=False, cache_runs=1, validate_only=False,
                     fail_fast=False, quiet=True)
    seen = []

    def report(rec):
        seen.append(rec.status)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with standalone_dirs(tmp_path / "m", tmp_path / "out"):
        interrupt, _ = ray_runner.run_on_ray(plan, args, REG, None, report)
    assert isinstance(interrupt, KeyboardInterrupt)
    statuses = [r.record.status for r in plan]
    # the run reported first, and at most the one the other worker had in progress
    assert 1 <= statuses.count("ok") <= 2 and statuses.count("skipped") >= 6, statuses
    assert set(statuses) <= {"ok", "skipped", "interrupted"}
    saved = sorted(p.name for p in (tmp_path / "out").glob("cat_*"))
    assert saved == sorted(Path(f).name for r in plan for f in r.record.files)  # whole files only
    assert not list((tmp_path / "out").glob("*.tmp"))
    deadline = time.monotonic() + 30  # the killed actors hand their CPUs back
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_no_ray_is_a_usage_error(monkeypatch, capsys, tmp_path):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    fakes.reset()
    monkeypatch.setattr(builtins, "__import__", no_ray)
    g = fake_graph(tmp_path)
    assert main(["run", str(g), "--quiet", "--ray", "--output-dir", str(tmp_path / "o")], registry=REG) == 2
    assert "pip install 'lora-lab[ray]'" in capsys.readouterr().err
    assert copy.copy(fakes.CALLS) == []


def test_a_real_ctrl_c_stops_the_ray_run_cleanly(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: exit 130, the runs in
    progress finish whole, nothing else starts, the summary lists every run."""
    import os
    import signal
    import subprocess
    import sys

    g = fake_graph(tmp_path, seconds=3.0)
    out = tmp_path / "out"
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fakes', {str(FIXTURES / 'fake_nodes.py')!r})\n"
        "fakes = importlib.util.module_from_spec(spec); sys.modules['fakes'] = fakes; spec.loader.exec_module(fakes)\n"
        "import ray; ray.cloudpickle.register_pickle_by_value(fakes)\n"
        "from lora_lab.nodes.cli.main import main\n"
        f"sys.exit(main(['run', {str(g)!r}, '--json', '--quiet', '--output-dir', {str(out)!r}, '--sweep',"
        " 'Style LoRA.strength=1,2,3,4,5,6', '--ray', '--ray-workers', '2'], registry=fakes.NODE_CLASS_MAPPINGS))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted; stopped cleanly" in stderr
    doc = json.loads(stdout)
    statuses = [r["status"] for r in doc["runs"]]
    assert doc["status"] == "interrupted" and len(statuses) == 6 and set(statuses) <= {"ok", "skipped", "interrupted"}
    assert 1 <= statuses.count("ok") <= 2 and statuses.count("skipped") >= 4, statuses
    written = sorted(p.name for p in out.iterdir() if p.name != "started")
    assert written == sorted(Path(f).name for r in doc["runs"] for f in r["files"])  # whole files only


class FakeCrash:
    """Kills its worker process (a segfault, the OOM killer) when `crash` is 13."""

    CATEGORY = "test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "go"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (fakes.MODEL,), "crash": ("INT", {"default": 0})}}

    def go(self, model, crash):
        import os

        if crash == 13:
            os._exit(1)
        return ({"crash": crash},)


def test_a_dead_worker_fails_only_its_runs(tmp_path, capsys):
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    g = json.loads((FIXTURES / "api_basic.json").read_text())
    g["3"] = {"class_type": "FakeCrash", "inputs": {"model": ["2", 0], "crash": 0}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(g))
    reg = {**REG, "FakeCrash": FakeCrash}
    code, doc = run_json(capsys, path, "--sweep", "3.crash=1,13,2,3,4,5", "--output-dir", tmp_path / "out",
                         "--ray", "--ray-workers", "2", registry=reg)
    assert code == 1 and doc["status"] == "failed"
    runs = doc["runs"]
    assert "the Ray worker running it died" in runs[1]["error"]
    # the rest of the dead worker's chunk goes to the other worker; only the crashing run fails
    assert [r["status"] for r in runs] == ["ok", "failed", "ok", "ok", "ok", "ok"], [r["error"] for r in runs]
    assert len({r["worker"] for r in runs if r["status"] == "ok"}) == 2 and runs[2]["worker"] == runs[3]["worker"] != runs[0]["worker"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(f).name for r in runs for f in r["files"])
