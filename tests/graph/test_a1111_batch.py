"""A batch drawn with A1111's noise is written as A1111 writes it (image i: Seed + i, or with a
variation strength Variation seed + i), and each image's parameters remake that image alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from lora_lab.nodes.graph.a1111_write import parameters_for, parameters_for_batch
from lora_lab.nodes.io.png_params import parse_infotext
from PIL import Image
from PIL.PngImagePlugin import PngInfo

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "a1111_noise.json"


def _graph(strength=0.0, noise=True):
    g = {"1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": "x.safetensors"}},
         "2": {"class_type": "LoraLabSampler", "inputs": {
             "model": ["1", 0], "prompt": "a fox", "negative_prompt": "", "seed": 42, "steps": 3, "cfg": 7.0,
             "sampler_name": "euler_ancestral", "scheduler": "normal", "width": 64, "height": 64, "batch_size": 3}},
         "3": {"class_type": "LoraLabSaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    if noise:
        g["4"] = {"class_type": "LoraLabA1111Noise", "inputs": {
            "rng": "NV", "variation_seed": 7, "variation_strength": strength, "resize_seed_from_width": 0,
            "resize_seed_from_height": 0, "eta_noise_seed_delta": 0, "sgm_noise_multiplier": False}}
        g["2"]["inputs"]["a1111_noise"] = ["4", 0]
    return g


def test_batch_texts_follow_a1111_seeds(tmp_path):
    texts = parameters_for_batch(_graph(), "3", 3)
    assert [parse_infotext(t)[2]["Seed"] for t in texts] == ["42", "43", "44"]
    varied = parameters_for_batch(_graph(0.3), "3", 3)
    fields = [parse_infotext(t)[2] for t in varied]
    assert [(f["Seed"], f["Variation seed"], f["Variation seed strength"]) for f in fields] == \
        [("42", "7", "0.3"), ("42", "8", "0.3"), ("42", "9", "0.3")]
    # ComfyUI's noise: one draw for the batch, which A1111 cannot describe per image: one text
    assert parameters_for_batch(_graph(noise=False), "3", 3) == parameters_for(_graph(noise=False), "3")


def test_each_image_of_a_batch_is_remade_from_its_own_parameters(tmp_path, capsys):
    from lora_lab.nodes.cli.main import main

    models, out = tmp_path / "models", tmp_path / "out"
    assert main(["run", str(WORKFLOW), "--models-dir", str(models), "--output-dir", str(out), "--quiet"]) == 0
    first, second = sorted((out / "a1111").glob("noise_*.png"))
    with Image.open(second) as im:
        want, text = np.asarray(im.convert("RGB")).astype(int), im.text["parameters"]
    assert parse_infotext(text)[2]["Seed"] == "43"
    # the second image's parameters alone (as A1111 would save them; our PNG also carries the graph,
    # which `run` prefers): a batch of one from seed 43, ENSD step noise included
    info = PngInfo()
    info.add_text("parameters", text)
    posted = tmp_path / "posted.png"
    Image.new("RGB", (8, 8)).save(posted, pnginfo=info)
    capsys.readouterr()
    assert main(["run", str(posted), "--models-dir", str(models), "--output-dir", str(tmp_path / "again"),
                 "--json", "--quiet"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    (again,) = run["files"]
    got = np.asarray(Image.open(again).convert("RGB")).astype(int)
    assert np.abs(got - want).max() <= 2  # a batch of 2 vs 1: the UNet's rounding only
    with Image.open(first) as im:
        other = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(got - other).max() > 10  # and not the first image
