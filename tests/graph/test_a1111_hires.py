"""A1111's hires fix: the target size rule, the second pass a parameters text describes (latent
and pixel upscalers, its own steps / sampler / prompt), the Hires fields written for a graph with
a second pass (ours and core nodes), and the round trip text -> graph -> text."""
from __future__ import annotations


import pytest
import torch

from lora_lab.nodes.graph.a1111 import graph_from_parameters
from lora_lab.nodes.graph.a1111_hires import target_size
from lora_lab.nodes.graph.a1111_write import parameters_for
from lora_lab.nodes.graph.workflow import WorkflowError
from lora_lab.nodes.io.png_params import parse_infotext

BASE = """a castle, <lora:lora-lab-demo-style:0.8>
Negative prompt: lowres
Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 3, Size: 64x96, \
Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, {hires}Version: v1.10.1"""


def _text(hires: str) -> str:
    return BASE.format(hires=hires)


def test_target_size_follows_a1111():
    # calculate_target_resolution: scale; resize with one side 0 keeps the aspect; both sides: cover + crop
    assert target_size(512, 768, 2.0, 0, 0) == (1024, 1536, 1024, 1536)
    assert target_size(512, 512, 1.5, 0, 0) == (768, 768, 768, 768)
    assert target_size(512, 768, 2.0, 1024, 0) == (1024, 1536, 1024, 1536)
    assert target_size(512, 768, 2.0, 0, 1152) == (768, 1152, 768, 1152)
    assert target_size(512, 768, 2.0, 1024, 1024) == (1024, 1536, 1024, 1024)  # 512 rows cut (64 latent)
    assert target_size(768, 512, 2.0, 1000, 1000) == (1500, 1000, 1000, 1000)


def test_latent_hires_builds_the_second_pass(demo_models):
    g = graph_from_parameters(_text("Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent, "), "h").prompt
    up, second = g["4"], g["5"]["inputs"]
    assert up["class_type"] == "LatentUpscale" and up["inputs"] == {
        "samples": ["2", 1], "upscale_method": "bilinear", "width": 128, "height": 192, "crop": "disabled"}
    assert g["3"]["inputs"]["images"] == ["5", 0]
    assert (second["latent"], second["denoise"], second["steps"], second["width"], second["height"]) == \
        (["4", 0], 0.45, 4, 128, 192)
    first = g["2"]["inputs"]
    assert {k: second[k] for k in ("prompt", "negative_prompt", "seed", "cfg", "sampler_name", "scheduler",
                                   "clip_skip")} == \
        {k: first[k] for k in ("prompt", "negative_prompt", "seed", "cfg", "sampler_name", "scheduler", "clip_skip")}
    assert (first["width"], first["height"], first.get("denoise", 1.0)) == (64, 96, 1.0)
    assert graph_from_parameters(_text("Hires upscale: 2, Hires upscaler: Latent, RNG: CPU, "), "h").unmapped == {}
    assert second["a1111_noise"] == first["a1111_noise"] == ["6", 0]  # a new ImageRNG per pass, same settings


def test_hires_own_settings_and_defaults(demo_models):
    g = graph_from_parameters(_text(
        'Hires upscale: 1.5, Hires sampler: Euler a, Hires schedule type: Simple, Hires CFG Scale: 4, '
        'Hires prompt: "a castle, detailed", Hires upscaler: Latent (nearest-exact), '), "h")
    second = g.prompt["5"]["inputs"]
    assert (second["sampler_name"], second["scheduler"], second["cfg"], second["prompt"]) == \
        ("euler_ancestral", "simple", 4.0, "a castle, detailed")
    assert second["steps"] == 6  # no Hires steps (0): the first pass's
    assert (g.prompt["4"]["inputs"]["upscale_method"], second["width"], second["height"]) == ("nearest-exact", 96, 144)
    only_sampler = graph_from_parameters(_text("Hires upscale: 2, Hires sampler: Euler, "), "h").prompt["5"]
    assert only_sampler["inputs"]["scheduler"] == "karras"  # hr_scheduler = the first pass's schedule
    with pytest.raises(WorkflowError, match="Hires Sampler: 'PLMS'"):
        graph_from_parameters(_text("Hires upscale: 2, Hires sampler: PLMS, "))


def test_pixel_upscalers_and_models_are_named(demo_models):
    g = graph_from_parameters(_text("Hires upscale: 2, Hires upscaler: Lanczos, "), "h")
    assert g.prompt["4"]["class_type"] == "ImageScale" and g.prompt["4"]["inputs"]["image"] == ["2", 0]
    assert g.prompt["5"]["inputs"]["image"] == ["4", 0] and "latent" not in g.prompt["5"]["inputs"]
    assert set(g.unmapped) == {"RNG"}
    esrgan = graph_from_parameters(_text("Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+ Anime6B, "), "h")
    assert esrgan.prompt["4"]["inputs"]["upscale_method"] == "lanczos"
    assert "upscaler model" in esrgan.unmapped["Hires upscaler"] and "R-ESRGAN 4x+ Anime6B" in \
        esrgan.unmapped["Hires upscaler"]
    bicubic_aa = graph_from_parameters(_text("Hires upscale: 2, Hires upscaler: Latent (bicubic antialiased), "))
    assert "antialiased bicubic" in bicubic_aa.unmapped["Hires upscaler"]
    crop = graph_from_parameters(_text("Hires resize: 128x128, Hires upscaler: Latent, "))
    assert crop.prompt["4"]["inputs"]["crop"] == "center" and "Hires resize" in crop.unmapped
    assert (crop.prompt["5"]["inputs"]["width"], crop.prompt["5"]["inputs"]["height"]) == (128, 128)
    ckpt = graph_from_parameters(_text("Hires upscale: 2, Hires checkpoint: other, "))
    assert "Hires checkpoint" in ckpt.unmapped
    img2img = graph_from_parameters(_text(""))  # Denoising strength without Hires: an img2img image
    assert "5" not in img2img.prompt and "img2img" in img2img.unmapped["Denoising strength"]


HIRES_FIELDS = ("Denoising strength", "Hires sampler", "Hires prompt", "Hires schedule type", "Hires CFG Scale",
                "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")


@pytest.mark.parametrize("hires", [
    "Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent, ",
    "Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Latent (bicubic), ",
    ("Hires sampler: Euler, Hires schedule type: Simple, Hires CFG Scale: 4, Hires resize: 96x96, Hires steps: 2, "
     "Hires upscaler: Lanczos, "),
])
def test_round_trip_text_graph_text(demo_models, hires):
    text = _text(hires)
    written = parameters_for(graph_from_parameters(text, "h").prompt, "3")
    _, _, want = parse_infotext(text)
    prompt, negative, got = parse_infotext(written)
    assert (prompt, negative) == parse_infotext(text)[:2]
    want.setdefault("Hires steps", want["Steps"])  # we always write the steps A1111 ran
    for key in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip") + HIRES_FIELDS:
        assert got.get(key) == want.get(key), key
    # A1111's order: the fixed fields, then Hires (processing init order), then the hashes
    keys = [k for k in got if k in HIRES_FIELDS[1:]]
    assert keys == [k for k in HIRES_FIELDS[1:] if k in got]
    order = list(got)
    assert order.index("Denoising strength") < order.index("Clip skip") < order.index(keys[0])
    assert order[-len(keys):] == keys  # nothing written after them here (no hashes: the demo LoRA is not a file)


def test_core_node_hires_graph_writes_hires_fields(demo_models):
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a fox"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 8, "steps": 5, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0], "upscale_method": "bicubic",
                                                          "scale_by": 1.5}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["6", 0], "seed": 8, "steps": 3, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "karras", "denoise": 0.5}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}},
    }
    prompt, negative, got = parse_infotext(parameters_for(g, "9"))
    assert (prompt, negative, got["Size"], got["Steps"], got["Schedule type"]) == ("a fox", "blurry", "64x64", "5",
                                                                                     "Normal")
    assert {k: got.get(k) for k in HIRES_FIELDS if k in got} == {
        "Denoising strength": "0.5", "Hires schedule type": "Karras", "Hires upscale": "1.5", "Hires steps": "3",
        "Hires upscaler": "Latent (bicubic)"}
    # pixel path: VAEDecode -> ImageScale (lanczos) -> VAEEncode -> KSampler
    g["10"] = {"class_type": "ImageScale", "inputs": {"image": ["8b", 0], "upscale_method": "lanczos",
                                                      "width": 128, "height": 128, "crop": "disabled"}}
    g["8b"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    g["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["1", 2]}}
    g["7"]["inputs"]["latent_image"] = ["11", 0]
    _, _, got = parse_infotext(parameters_for(g, "9"))
    assert (got["Hires upscale"], got["Hires upscaler"]) == ("2", "Lanczos")


@pytest.mark.parametrize("hires", ["Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, ",
                                   "Hires upscale: 2, Hires steps: 2, Hires upscaler: 4x-UltraSharp, "])
def test_hires_parameters_run_headless(demo_models, tmp_path, hires, capsys):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from lora_lab.nodes.cli.main import main

    text = _text(hires).replace("Steps: 6", "Steps: 3")
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(tmp_path / "posted.png", pnginfo=info)
    torch.manual_seed(0)
    code = main(["run", str(tmp_path / "posted.png"), "--models-dir", str(demo_models), "--output-dir",
                 str(tmp_path / "out"), "--json", "--quiet"])
    assert code == 0, capsys.readouterr()
    (png,) = sorted((tmp_path / "out" / "a1111").glob("posted_*.png"))
    with Image.open(png) as im:
        size, params = im.size, im.text["parameters"]
    assert size == (128, 192)
    _, _, got = parse_infotext(params)
    assert (got["Size"], got["Hires upscale"], got["Hires steps"], got["Denoising strength"]) == \
        ("64x96", "2", "2", "0.45")
    assert got.get("Hires upscaler") == ("Latent" if "Latent" in hires else "Lanczos")


def test_seed_fields_round_trip(demo_models):
    """RNG, Variation seed (+ strength), Seed resize from, ENSD -> the A1111 Noise node -> the same text."""
    seed_fields = ("Variation seed: 77, Variation seed strength: 0.25, Seed resize from: 48x48, ENSD: 31337, "
                   "RNG: CPU, ")
    text = _text(seed_fields + "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, SGM noise multiplier: True, ")
    g = graph_from_parameters(text, "h")
    assert g.prompt["6"]["inputs"] == {"rng": "CPU", "variation_seed": 77, "variation_strength": 0.25,
                                       "resize_seed_from_width": 48, "resize_seed_from_height": 48,
                                       "eta_noise_seed_delta": 31337, "sgm_noise_multiplier": True}
    assert g.unmapped == {}
    _, _, want = parse_infotext(text)
    _, _, got = parse_infotext(parameters_for(g.prompt, "3"))
    for key in ("Variation seed", "Variation seed strength", "Seed resize from", "ENSD", "RNG", "SGM noise multiplier"):
        assert got[key] == want[key], key
    order = list(got)  # A1111's order: Seed ... Variation seed, strength, Seed resize from, ..., ENSD, RNG
    assert order.index("Seed") < order.index("Variation seed") < order.index("Seed resize from") < \
        order.index("Denoising strength") < order.index("Clip skip") < order.index("ENSD") < order.index("RNG") < \
        order.index("Hires upscale") < order.index("SGM noise multiplier")
    with pytest.raises(WorkflowError, match="RNG: 'AMD'"):
        graph_from_parameters(_text("RNG: AMD, "))
