"""Save Image: counters, never overwriting, ComfyUI and A1111 chunks."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.defs.node_defs import LoraLabSaveImage

GRAPH = {
    "1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": "demo.safetensors"}},
    "2": {"class_type": "LoraLabSampler", "inputs": {
        "model": ["1", 0], "prompt": "a cat", "negative_prompt": "blurry", "seed": 7, "steps": 4, "cfg": 5.0,
        "sampler_name": "euler_ancestral", "scheduler": "karras", "width": 64, "height": 64, "batch_size": 2}},
    "3": {"class_type": "LoraLabSaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "run/cat"}},
}


@pytest.fixture
def out(tmp_path):
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield tmp_path / "out"


def test_counters_chunks_and_pixels(out):
    images = torch.rand(2, 16, 24, 3)
    res = LoraLabSaveImage().save(images, "run/cat", prompt=GRAPH, extra_pnginfo={"workflow": {"nodes": []}},
                                  unique_id="3")
    names = [u["filename"] for u in res["ui"]["images"]]
    assert names == ["cat_00001_.png", "cat_00002_.png"]
    assert {u["subfolder"] for u in res["ui"]["images"]} == {"run"}
    im = Image.open(out / "run" / "cat_00001_.png")
    assert im.size == (24, 16)
    assert json.loads(im.text["prompt"]) == GRAPH
    assert json.loads(im.text["workflow"]) == {"nodes": []}
    params = im.text["parameters"]
    assert params.splitlines()[0] == "a cat"
    assert params.splitlines()[1] == "Negative prompt: blurry"
    # A1111 >= 1.9: sampler and schedule are two fields (never the old combined "Euler a Karras")
    assert params.splitlines()[2] == "Steps: 4, Sampler: Euler a, Schedule type: Karras, CFG scale: 5, Seed: 7, " \
                                     "Size: 64x64, Model: demo"
    expected = (255 * images[0].numpy()).clip(0, 255).astype("uint8")
    assert (torch.from_numpy(__import__("numpy").array(im)) == torch.from_numpy(expected)).all()


def test_never_overwrites(out):
    (out / "x").mkdir(parents=True)
    (out / "x" / "a_00001_.png").write_bytes(b"keep")
    (out / "x" / "a_00007_.png").write_bytes(b"keep")
    res = LoraLabSaveImage().save(torch.zeros(1, 8, 8, 3), "x/a")
    assert res["ui"]["images"][0]["filename"] == "a_00008_.png"
    assert (out / "x" / "a_00001_.png").read_bytes() == b"keep"
    assert not [p for p in (out / "x").iterdir() if p.name.endswith((".tmp", ".lora-lab-tmp"))]


@pytest.mark.parametrize("prefix", ["../evil", "/abs/x", "a/../../b", "dir/"])
def test_prefix_outside_output_refused(out, prefix):
    with pytest.raises(NodeInputError, match="filename_prefix"):
        LoraLabSaveImage().save(torch.zeros(1, 8, 8, 3), prefix)


def test_bad_images_named(out):
    with pytest.raises(NodeInputError, match="images"):
        LoraLabSaveImage().save(torch.zeros(8, 8, 3), "a")
