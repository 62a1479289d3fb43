"""The parameters text written for a graph: our nodes and ComfyUI's core nodes, LoRAs from
prompt tags and from loader nodes (as tags, with Lora hashes), embeddings (TI hashes), model
name and A1111's short hash."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from lora_lab.nodes.demo.demo_lora import ensure_demo_lora
from lora_lab.nodes.graph.a1111_write import parameters_for
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.file_hashes import embedding_short_hash, lora_short_hash, model_short_hash
from lora_lab.nodes.io.png_params import parse_infotext
from lora_lab.nodes.io.safetensors_io import read_header


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    for sub in ("checkpoints", "loras/style", "embeddings"):
        (root / sub).mkdir(parents=True)
    (root / "checkpoints" / "real.safetensors").write_bytes(b"not really a checkpoint, but hashable" * 100)
    with paths.standalone_dirs(root, tmp_path / "out"):
        shutil.copy(ensure_demo_lora(), root / "loras" / "style" / "ink.safetensors")
        save_file({"emb_params": torch.zeros(1, 32)}, root / "embeddings" / "EasyNegative.safetensors")
        yield root


def _graph_ours(prompt, loras_text="", lora_node=None):
    g = {"1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": "real.safetensors"}}}
    model = ["1", 0]
    if lora_node:
        g["4"] = {"class_type": "LoraLabLoraLoader", "inputs": {"model": model, **lora_node}}
        model = ["4", 0]
    if loras_text:
        g["5"] = {"class_type": "LoraLabLoraStack", "inputs": {"model": model, "loras": loras_text}}
        model = ["5", 0]
    g["2"] = {"class_type": "LoraLabSampler", "inputs": {
        "model": model, "prompt": prompt, "negative_prompt": "EasyNegative, blurry", "seed": 9, "steps": 20,
        "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "width": 512, "height": 768,
        "batch_size": 1, "clip_skip": 2}}
    g["3"] = {"class_type": "LoraLabSaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
    return g


def test_our_graph_with_tag_loader_and_stack_loras(models):
    ink = models / "loras" / "style" / "ink.safetensors"
    ink_hash = lora_short_hash(ink, read_header(ink)[1])
    g = _graph_ours("a cat <lora:ink:0.6>", "lora-lab-demo-style:0.5:0.25",
                    {"lora_name": "style/ink.safetensors", "strength_unet": 0.8, "strength_text": 0.8,
                     "block_weights": "OUTALL"})
    text = parameters_for(g, "3")
    prompt, negative, fields = parse_infotext(text)
    # loader LoRAs (apply order: Load LoRA, then the stack) become the tags A1111 needs
    assert prompt == "a cat <lora:ink:0.6> <lora:ink:0.8:lbw=OUTALL> <lora:lora-lab-demo-style:0.25:0.5>"
    assert negative == "EasyNegative, blurry"
    assert text.splitlines()[-1].startswith(
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 9, Size: 512x768, "
        f"Model hash: {model_short_hash(models / 'checkpoints' / 'real.safetensors')}, Model: real, Clip skip: 2, "
        "Lora hashes: ")
    assert len(fields["Model hash"]) == 10
    assert fields["Lora hashes"] == f"ink: {ink_hash}, lora-lab-demo-style: {ink_hash}"  # the copy: same bytes
    ti = embedding_short_hash(models / "embeddings" / "EasyNegative.safetensors")
    assert fields["TI hashes"] == f"EasyNegative: {ti}" and len(ti) == 12


def test_core_comfyui_nodes(models):
    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "real.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                      "lora_name": "style/ink.safetensors",
                                                      "strength_model": 1.0, "strength_clip": 0.5}},
        "11": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["10", 1], "stop_at_clip_layer": -2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["11", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["11", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }
    prompt, negative, fields = parse_infotext(parameters_for(g, "9"))
    assert (prompt, negative) == ("a castle <lora:ink:0.5:1>", "lowres")
    assert fields["Sampler"] == "Euler" and fields["Schedule type"] == "Normal"
    assert (fields["Seed"], fields["Size"], fields["CFG scale"], fields["Clip skip"]) == (
        "156680208700286", "640x512", "8", "2")
    assert fields["Model"] == "real" and "ink: " in fields["Lora hashes"]


def test_missing_files_write_no_hash(models):
    g = _graph_ours("a cat <lora:nothing:1>")
    g["1"]["inputs"]["ckpt_name"] = "gone.safetensors"
    _, _, fields = parse_infotext(parameters_for(g, "3"))
    assert fields["Model"] == "gone" and "Model hash" not in fields and "Lora hashes" not in fields


def test_core_save_image_writes_the_parameters(models, tmp_path):
    from PIL import Image

    from lora_lab.nodes.defs.core_image import SaveImage

    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "real.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 2, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }
    res = SaveImage().save_images(torch.rand(1, 8, 8, 3), "ComfyUI", prompt=g, unique_id="9")
    name = res["ui"]["images"][0]["filename"]
    with Image.open(tmp_path / "out" / name) as im:
        text = im.text["parameters"]
    assert text.splitlines()[0] == "a castle"
    assert text.splitlines()[1].startswith("Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5")
