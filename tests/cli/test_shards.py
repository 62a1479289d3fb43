"""`lora-lab run --shard I/N` and `lora-lab merge-json`: N shard jobs together write exactly the
files of one sequential run (same names, same bytes), and their summaries merge into its summary."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from conftest import load_fake_nodes
from lora_lab.nodes.cli.main import main
from lora_lab.nodes.cli.run_plan import (
    Shard,
    UsageError,
    name_groups,
    parse_shard,
    shard_groups,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
fakes = load_fake_nodes()
REG = fakes.NODE_CLASS_MAPPINGS
API = json.loads((FIXTURES / "api_basic.json").read_text())
VOLATILE = ("seconds", "timings", "files", "executed_nodes", "cached_nodes")


@pytest.fixture(autouse=True)
def _reset():
    fakes.reset()


def write(path: Path, graph) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(graph))
    return path


def run_json(capsys, out: Path, *argv) -> tuple[int, dict]:
    code = main(["run", *map(str, argv), "--quiet", "--json", "--output-dir", str(out)], registry=REG)
    return code, json.loads(capsys.readouterr().out)


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def graphs(root: Path, prefixes: list[str]) -> Path:
    """One graph per prefix (its seed = its position), in a folder."""
    for i, prefix in enumerate(prefixes):
        g = copy.deepcopy(API)
        g["3"]["inputs"]["seed"] = i
        g["4"]["inputs"]["filename_prefix"] = prefix
        write(root / f"g{i}.json", g)
    return root


def shard_runs(capsys, tmp_path, n: int, *argv) -> tuple[list[dict], Path]:
    """Every shard of an N-way split into one output folder (as N jobs on a shared file system
    would write it), one after another; their summaries."""
    out = tmp_path / f"shards{n}"
    docs = []
    for i in range(n):
        code, doc = run_json(capsys, out, *argv, "--shard", f"{i}/{n}")
        assert code == 0, doc
        assert doc["shard"] == {"index": i, "count": n, "runs_total": doc["shard"]["runs_total"],
                                "plan": docs[0]["shard"]["plan"] if docs else doc["shard"]["plan"]}
        docs.append(doc)
    return docs, out


CASES = {
    # a sweep: every combination labelled, so the runs are independent
    "sweep": lambda root: (write(root / "api_basic.json", API), "--sweep", "3.seed=1,2,3",
                           "--sweep", "Style LoRA.strength=0.5,1"),
    # graphs without a sweep sharing prefixes: counters are order-dependent (cat_00001_, cat_00002_)
    "shared_prefixes": lambda root: (graphs(root / "many", ["cat", "dog", "cat", "bird", "dog", "cat", "eel"]),),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n", [2, 3, 5])
def test_shards_together_equal_the_unsharded_run(tmp_path, capsys, case, n):
    argv = CASES[case](tmp_path / "in")
    code, whole = run_json(capsys, tmp_path / "whole", *argv)
    assert code == 0
    docs, out = shard_runs(capsys, tmp_path, n, *argv)
    assert tree(out) == tree(tmp_path / "whole")  # same names, same bytes
    assert len(tree(out)) == len(whole["runs"]) > 1
    ran = sorted(r["index"] for d in docs for r in d["runs"])
    assert ran == list(range(len(whole["runs"])))  # each run exactly once
    assert sum(bool(d["runs"]) for d in docs) >= 2  # really split
    if case == "shared_prefixes":  # the runs writing one prefix stay in one shard
        for prefix in ("cat", "dog"):
            holders = {i for i, d in enumerate(docs) for r in d["runs"]
                       if any(Path(f).name.startswith(prefix + "_") for f in r["files"])}
            assert len(holders) == 1, (prefix, holders)

    # the merged summary is the sequential one (up to timings and the shard folder's paths)
    merged_path = tmp_path / "merged.json"
    paths = []
    for i, d in enumerate(reversed(docs)):  # any order
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(d))
    assert main(["merge-json", *map(str, paths), "-o", str(merged_path)]) == 0
    merged = json.loads(merged_path.read_text())
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in merged["runs"]]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in whole["runs"]]
    assert [[Path(f).relative_to(out) for f in r["files"]] for r in merged["runs"]] == \
        [[Path(f).relative_to(tmp_path / "whole") for f in r["files"]] for r in whole["runs"]]
    assert merged["status"] == "ok" and merged["exit_code"] == 0 and len(merged["shard_seconds"]) == n
    assert merged["cache"]["misses"] >= whole["cache"]["misses"]


def test_merge_json_refuses_incomplete_or_mixed_shards(tmp_path, capsys):
    argv = CASES["sweep"](tmp_path / "in")
    docs, _ = shard_runs(capsys, tmp_path, 3, *argv)
    paths = []
    for i, d in enumerate(docs):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(d))
    assert main(["merge-json", str(paths[0]), str(paths[2])]) == 2
    assert "missing shard(s) 1/3 of 3" in capsys.readouterr().err
    (tmp_path / "again.json").write_text(paths[0].read_text())
    assert main(["merge-json", *map(str, paths), str(tmp_path / "again.json")]) == 2
    assert "shard 0/3 given twice" in capsys.readouterr().err
    other, _ = shard_runs(capsys, tmp_path / "b", 2, *argv)
    (tmp_path / "o.json").write_text(json.dumps(other[0]))
    assert main(["merge-json", *map(str, paths), str(tmp_path / "o.json")]) == 2
    assert "different run lists" in capsys.readouterr().err
    (tmp_path / "other").mkdir()  # the same count and length, another command line
    _, doc = run_json(capsys, tmp_path / "o3", *argv[:-1], "Style LoRA.strength=0.25,1", "--shard", "1/3")
    (tmp_path / "other" / "s1.json").write_text(json.dumps(doc))
    assert main(["merge-json", str(paths[0]), str(tmp_path / "other" / "s1.json"), str(paths[2])]) == 2
    assert "different run lists" in capsys.readouterr().err
    _, plain = run_json(capsys, tmp_path / "plain", *argv)  # not a shard's summary
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    assert main(["merge-json", str(tmp_path / "plain.json")]) == 2
    assert "not the --json summary of a `lora-lab run --shard I/N` job" in capsys.readouterr().err
    assert not list(tmp_path.glob("*merged*"))


def test_merged_status_is_the_worst_shard(tmp_path, capsys):
    root = tmp_path / "in"
    bad = copy.deepcopy(API)
    bad["3"]["inputs"]["steps"] = "many"  # fails validation in whichever shard has it
    write(root / "a.json", API)
    write(root / "b.json", bad)
    docs = []
    for i in range(2):
        _, doc = run_json(capsys, tmp_path / "out", root, "--sweep", "3.seed=1,2", "--shard", f"{i}/2")
        docs.append(doc)
        (tmp_path / f"s{i}.json").write_text(json.dumps(doc))
    assert sorted(d["status"] for d in docs) == ["failed", "ok"]
    assert main(["merge-json", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "-o", str(tmp_path / "m.json")]) == 1
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["status"] == "failed" and [r["status"] for r in merged["runs"]] == ["ok", "ok", "failed", "failed"]


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "0/0", "a/b", ""])
def test_bad_shard_is_a_usage_error(tmp_path, capsys, text):
    with pytest.raises(UsageError):
        parse_shard(text)
    g = write(tmp_path / "api_basic.json", API)
    assert main(["run", str(g), "--quiet", "--shard", text, "--output-dir", str(tmp_path / "o")], registry=REG) == 2
    assert "--shard" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_name_groups_join_runs_that_share_a_stem():
    keys = [["prefix:a"], ["prefix:b"], ["prefix:a", "prefix:c"], ["prefix:c"], ["*"], ["prefix:d", "*"]]
    assert name_groups(keys) == [[0, 2, 3], [1], [4, 5]]


def test_shard_groups_balance_and_cover_every_group():
    groups = [[i] for i in range(10)]
    split = shard_groups(groups, 3)
    assert sorted(i for s in split for i in s) == list(range(10)) and [len(s) for s in split] == [3, 4, 3]
    assert all(s == sorted(s) and (not s or s == list(range(s[0], s[-1] + 1))) for s in split)  # contiguous
    assert shard_groups([[0, 1, 2, 3]], 4) == [[], [], [0, 1, 2, 3], []]  # a group is never split
    assert Shard(0, 1).count == 1


def test_worker_chunks_group_runs_by_checkpoint(tmp_path):
    """Checkpoints swept fastest (A, B, A, B, ...): the chunks still hold one checkpoint each, in
    at most `workers` chunks per checkpoint, every run once, plan order inside a chunk."""
    from lora_lab.nodes.cli.run_plan import Sweep, expand, worker_chunks
    from lora_lab.nodes.graph.workflow import parse_assignment

    g = write(tmp_path / "api_basic.json", API)
    sweeps = [Sweep(parse_assignment("3.seed=1"), ["1", "2", "3", "4", "5"]),
              Sweep(parse_assignment("1.ckpt_name=a"), ["a.safetensors", "b.safetensors"])]
    plan = expand([g], [], sweeps)
    chunks = worker_chunks(plan, REG, None, workers=2)
    ckpts = [{r.record.overrides["1.ckpt_name"] for r in c} for c in chunks]
    assert ckpts == [{"a.safetensors"}, {"a.safetensors"}, {"b.safetensors"}, {"b.safetensors"}]
    indices = [[r.record.index for r in c] for c in chunks]
    assert sorted(i for c in indices for i in c) == list(range(10)) and all(c == sorted(c) for c in indices)
    assert [len(c) for c in worker_chunks(plan, REG, None, workers=1)] == [5, 5]


def test_ray_worker_resources():
    """One worker per GPU, else per node, with its CPUs (no ray needed: ray.nodes()' shape)."""
    from lora_lab.nodes.cli.ray_runner import worker_resources

    def node(cpu, gpu=0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": float(cpu), **({"GPU": float(gpu)} if gpu else {})}}

    assert worker_resources([node(32), node(16), node(8, alive=False)], None) == (2, {"num_cpus": 16})
    assert worker_resources([node(16, 4), node(16, 4)], None) == (8, {"num_gpus": 1, "num_cpus": 4})
    assert worker_resources([node(2)], 2) == (2, {"num_cpus": 1})
    assert worker_resources([node(16)], 3) == (3, {"num_cpus": 5})
    assert worker_resources([node(16, 2)], None, 6) == (2, {"num_gpus": 1, "num_cpus": 6})
    for nodes, asked, words in (([node(16, 2)], 3, "2 GPU(s)"), ([node(2)], 3, "2 CPU(s)"),
                                ([node(2)], 0, "at least 1"), ([node(4)], 1, "no node"), ([node(4, alive=False)], None, "no live node")):
        with pytest.raises(UsageError, match=re.escape(words)):
            worker_resources(nodes, asked, 8 if words == "no node" else None)
