"""Every example in workflows/ runs through the headless runner, as the editor saved it (UI
format) and converted to API format (what ComfyUI's /prompt takes), with the same pixels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_lab.nodes.demo import demo, demo_lora
from lora_lab.nodes.cli.main import main
from lora_lab.nodes.graph.graph_validate import COMFYUI_ONLY_NODES, COMFYUI_TYPED_NODES
from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS as NODE_CLASS_MAPPINGS
from lora_lab.nodes.graph.workflow import load_workflow
from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS as REGISTRY, RUNNER_DISPLAY_NAME_MAPPINGS as NAMES
from lora_lab.nodes.graph.workflow_widgets import widget_specs, widget_values

ROOT = Path(__file__).resolve().parents[1]
# The bridges work on ComfyUI's own objects (ModelPatcher, CLIP, VAE): only ComfyUI runs that graph
# (tests/test_comfyui_host.py queues it through /prompt); the headless runner, which runs the core
# nodes around them, must refuse it naming exactly those nodes (test below).
COMFYUI_ONLY_WORKFLOWS = {
    "comfy_bridge.json": "bridges ComfyUI's MODEL/CLIP/VAE to a LoRA Lab model and back, sampled by KSampler",
}
# Graphs naming ComfyUI's default checkpoint and an SD 1.5 LoRA a fresh machine lacks: run headless
# with these --set overrides (the demo checkpoint and LoRAs), and as they are through ComfyUI.
ON_DEMO_MODELS = {
    "comfy_native_lora_stack.json": ["1.ckpt_name=lora-lab-demo-sd15.safetensors",
                                     "2.loras=lora-lab-demo-style.safetensors:0.8:0.6\n# lora-lab-demo-star.safetensors"],
}
ALL_WORKFLOWS = (sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "workflows" / "comfyui").glob("*.json")))
BY_NAME = {p.name: p for p in ALL_WORKFLOWS}  # the ComfyUI-side examples sit in workflows/comfyui/
WORKFLOWS = [p for p in ALL_WORKFLOWS if p.name not in COMFYUI_ONLY_WORKFLOWS and p.name not in ON_DEMO_MODELS]
# one example per capability (issue 7); merge/train examples join when their nodes exist
CAPABILITIES = {"lora_txt2img.json": "LoraLabLoraLoader", "lora_stack.json": "LoraLabLoraStack",
                "strength_sweep.json": "LoraLabStrengthSweep", "merge_checkpoint.json": "LoraLabMergeToCheckpoint",
                "train_then_sample.json": "LoraLabTrainLora", "comfy_native_lora_stack.json": "LoraLabLoraStackModelClip",
                "comfy_bridge.json": "LoraLabFromComfy",
                # issue 13: ComfyUI's own graphs (core node ids) and ours for img2img, inpainting, hires fix
                "core_txt2img.json": "KSampler", "core_lora_txt2img.json": "LoraLoader",
                "core_img2img.json": "VAEEncode", "core_inpaint.json": "SetLatentNoiseMask",
                "core_hires_fix.json": "LatentUpscale", "img2img.json": "LoadImage", "inpaint.json": "LoadImage",
                "hires_fix.json": "LatentUpscaleBy"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A models folder with the demo checkpoint and the demo LoRAs (what a fresh install writes)."""
    root = tmp_path_factory.mktemp("models")
    demo.ensure_demo_checkpoint(root / "checkpoints")
    demo_lora.ensure_demo_loras(root / "loras")
    demo_lora.ensure_demo_dataset(root / demo_lora.DEMO_DATASET)
    return root


def dataset_overrides(prompt: dict, models: Path) -> list[str]:
    """--set for Train LoRA nodes that name the demo dataset: its folder here (a user points
    dataset_dir at their own images)."""
    return [f"{nid}.dataset_dir={models / demo_lora.DEMO_DATASET}" for nid, n in prompt.items()
            if n["class_type"] == "LoraLabTrainLora" and n["inputs"].get("dataset_dir") == demo_lora.DEMO_DATASET]


def run_json(capsys, graph: Path, models: Path, out: Path) -> dict:
    sets = [a for s in dataset_overrides(load_workflow(graph, REGISTRY, NAMES).prompt, models) for a in ("--set", s)]
    code = main(["run", str(graph), "--models-dir", str(models), "--output-dir", str(out), "--json", "--quiet",
                 "--input-dir", str(models / "input"), *sets])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, json.dumps(summary["runs"], indent=1)[:3000]
    return summary


def pixels(files) -> list[np.ndarray]:
    out = []
    for f in sorted(files):
        if f.endswith(".png"):
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB")))
    return out


def same_tensors(a: str, b: str) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_one_example_per_capability():
    names = {p.name for p in ALL_WORKFLOWS}
    for name, node_type in CAPABILITIES.items():
        assert name in names
        types = {n["type"] for n in json.loads((BY_NAME[name]).read_text())["nodes"]}
        assert node_type in types, (name, types)


def comfy_typed_registry() -> dict:
    """The runner's nodes (ours + ComfyUI core ids) plus the MODEL/CLIP ones registered inside ComfyUI
    only (their classes import without it)."""
    from lora_lab.nodes.defs import comfy_bridge, comfy_lora_nodes
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS

    return {**RUNNER_CLASS_MAPPINGS, **comfy_lora_nodes.NODE_CLASS_MAPPINGS, **comfy_bridge.NODE_CLASS_MAPPINGS}


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_file_is_consistent(path):
    """Links agree with the nodes' slots, and every widget has its saved value (the editor relies on both)."""
    wf = json.loads(path.read_text())
    assert wf.get("version") in (0.4, 1) and is_unique([n["id"] for n in wf["nodes"]])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for lid, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        assert lid in nodes[src]["outputs"][src_slot]["links"], (path.name, lid)
        assert nodes[dst]["inputs"][dst_slot]["link"] == lid, (path.name, lid)
        assert nodes[src]["outputs"][src_slot]["type"] == type_ == nodes[dst]["inputs"][dst_slot]["type"]
    assert wf["last_link_id"] >= max((lk[0] for lk in wf["links"]), default=0)
    assert wf["last_node_id"] >= max(nodes)
    ours = comfy_typed_registry()
    for n in wf["nodes"]:
        cls = ours[n["type"]]
        specs = widget_specs(cls.INPUT_TYPES())
        assert len(n["widgets_values"]) == sum(1 + w.extra_slots for w in specs), (path.name, n["type"])


@pytest.mark.parametrize("name", sorted(COMFYUI_ONLY_WORKFLOWS))
def test_comfyui_only_workflows_are_refused_naming_their_comfyui_nodes(name, models_dir, tmp_path, capsys):
    path = BY_NAME[name]
    assert path.is_file() and COMFYUI_ONLY_WORKFLOWS[name]
    code = main(["run", str(path), "--models-dir", str(models_dir), "--output-dir", str(tmp_path), "--json", "--quiet"])
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert code == 1 and run["status"] == "failed" and not list(tmp_path.iterdir())
    types = {n["type"] for n in json.loads(path.read_text())["nodes"]}
    needs_comfy = types & COMFYUI_TYPED_NODES
    assert needs_comfy and types & COMFYUI_ONLY_NODES  # core nodes around them, which the runner runs
    assert {p["class_type"] for p in run["problems"] if p["kind"] == "comfyui_only"} == needs_comfy
    # anything else reported is only the example checkpoint / LoRA this models folder lacks
    others = [p for p in run["problems"] if p["kind"] != "comfyui_only"]
    assert all(p["kind"] == "not_in_list" and p["input"] in ("ckpt_name",) for p in others), others


@pytest.mark.parametrize("name", sorted(ON_DEMO_MODELS))
def test_comfy_native_workflow_runs_headless_on_the_demo_models(name, models_dir, tmp_path, capsys):
    sets = [a for s in ON_DEMO_MODELS[name] for a in ("--set", s)]
    code = main(["run", str(BY_NAME[name]), "--models-dir", str(models_dir), "--output-dir", str(tmp_path),
                 "--json", "--quiet", *sets])
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert code == 0 and run["status"] == "ok", json.dumps(run, indent=1)[:3000]
    (img,) = pixels(run["files"])
    assert img.shape == (64, 64, 3) and img.std() > 0


def is_unique(items) -> bool:
    return len(items) == len(set(items))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_headless_in_both_formats(path, models_dir, tmp_path, capsys):
    ui_out, api_out = tmp_path / "ui", tmp_path / "api"
    ui_run = run_json(capsys, path, models_dir, ui_out)["runs"][0]
    assert ui_run["status"] == "ok" and ui_run["files"], ui_run

    api_graph = tmp_path / f"{path.stem}_api.json"
    api_graph.write_text(json.dumps(load_workflow(path, REGISTRY, NAMES).prompt))
    api_run = run_json(capsys, api_graph, models_dir, api_out)["runs"][0]
    assert api_run["status"] == "ok"
    assert [Path(f).relative_to(api_out) for f in api_run["files"]] == \
        [Path(f).relative_to(ui_out) for f in ui_run["files"]]
    ui_px, api_px = pixels(ui_run["files"]), pixels(api_run["files"])
    # same graph, same seeds: same pixels (training on the CPU is reproducible to a rounding step only)
    tol = 2 if "LoraLabTrainLora" in {n["class_type"] for n in load_workflow(path, REGISTRY, NAMES).prompt.values()} else 0
    assert all(np.abs(a.astype(int) - b).max() <= tol for a, b in zip(ui_px, api_px))
    for f, g in zip(ui_run["files"], api_run["files"]):
        if f.endswith(".png"):
            with Image.open(f) as im:  # the editor's graph travels in the PNG
                assert json.loads(im.text["workflow"])["nodes"] and json.loads(im.text["prompt"])
        elif f.endswith(".safetensors"):
            assert same_tensors(f, g)  # e.g. a merged checkpoint
    if path.name == "strength_sweep.json":
        check_sweep_sheet(path, ui_px)


def check_sweep_sheet(path: Path, images: list) -> None:
    """The sweep's one image is a grid of strengths × values2 plus the label bands."""
    (sheet,) = images
    node = next(n for n in json.loads(path.read_text())["nodes"] if n["type"] == "LoraLabStrengthSweep")
    values = widget_values(widget_specs(NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES()), node["widgets_values"])
    cols, rows = len(values["strengths"].split(",")), len(values["values2"].split(","))
    assert sheet.shape[0] > rows * values["height"] and sheet.shape[1] > cols * values["width"]
