"""A1111 `parameters`: the text round trip, the graph a parameters text describes (checkpoint by
name or hash, LoRA tags, embeddings, sampler/schedule mapping, clip skip, unmapped fields),
and realistic A1111 / Civitai strings run headless on the demo model."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from lora_lab.nodes.demo.demo import DEMO_NAME, ensure_demo_checkpoint
from lora_lab.nodes.graph.a1111 import graph_from_parameters
from lora_lab.nodes.graph.workflow import WorkflowError, load_workflow
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.file_hashes import lora_short_hash, model_short_hash
from lora_lab.nodes.io.png_params import format_infotext, parse_infotext, split_sampler

# Written from A1111's conventions (modules/processing.py create_infotext, infotext_utils.quote,
# extra_networks_lora's Lora hashes, textual_inversion's TI hashes; sampler / schedule labels of
# sd_samplers_kdiffusion and sd_schedulers).
V110 = """masterpiece, best quality, 1girl, <lora:animeoutlineV4_16:0.8>, (ink sketch:1.2), lineart
Negative prompt: (worst quality, low quality:1.4), EasyNegative
Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 64x96, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, \
Lora hashes: "animeoutlineV4_16: 0123456789ab", TI hashes: "EasyNegative: c74b4e810b03", Version: v1.10.1"""
OLD_COMBINED = """a watercolor painting of a fox
Steps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 81761151, Model: sd-v1-5"""
OLD_KARRAS = """portrait <lyco:inkstyle:te=0.5:unet=1.1>
Negative prompt: blurry
Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 7, Size: 64x64, Model: v1-5-pruned-emaonly"""
HIRES = """castle on a hill, <lora:lora-lab-demo-style:1>
Negative prompt: lowres
Steps: 3, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 6, Seed: 3, Size: 64x64, \
Model hash: 0000000000, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, ENSD: 31337, \
Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, Version: v1.9.4"""
CIVITAI = """<lora:renamed_on_civitai:0.7> a cat
Negative prompt: EasyNegative
Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 5, Seed: 11, Size: 64x64, \
Model hash: {model_hash}, Lora hashes: "renamed_on_civitai: {lora_hash}", Version: v1.6.0"""


def test_round_trip_keeps_every_field_and_quotes_as_a1111():
    fields = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 5,
              "Size": "512x768", "Model hash": "6ce0161689", "Model": "v1-5", "Clip skip": 2, "Hires upscale": 2,
              "Lora hashes": "a: 0123456789ab, b: ba9876543210", "TI hashes": "neg: c74b4e810b03",
              "Version": "v1.10.1"}
    text = format_infotext("a cat,\n(dog:1.2)", "blurry\nugly", fields)
    assert text.splitlines()[-1] == (
        'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x768, '
        'Model hash: 6ce0161689, Model: v1-5, Clip skip: 2, Hires upscale: 2, '
        'Lora hashes: "a: 0123456789ab, b: ba9876543210", TI hashes: "neg: c74b4e810b03", Version: v1.10.1')
    prompt, negative, back = parse_infotext(text)
    assert (prompt, negative) == ("a cat,\n(dog:1.2)", "blurry\nugly")
    assert back == {k: ("7" if k == "CFG scale" else str(v)) for k, v in fields.items()}
    # order: A1111's for its fixed fields whatever order they came in; extras in the order given
    # (A1111's extra_generation_params insertion order: hires at init, then Lora / TI hashes), Version last
    fixed = [k for k in fields if k not in ("Hires upscale", "Lora hashes", "TI hashes")]
    shuffled = format_infotext("p", "", {**{k: fields[k] for k in reversed(fixed)},
                                         **{k: fields[k] for k in ("Hires upscale", "Lora hashes", "TI hashes")}})
    assert shuffled.splitlines()[1] == text.splitlines()[-1]
    assert format_infotext("p", "", {"Steps": 1, "Seed": None}) == "p\nSteps: 1"


def test_old_combined_sampler_names_split():
    assert split_sampler("DPM++ 2M Karras", None) == ("DPM++ 2M", "Karras")
    assert split_sampler("DPM++ 2M SDE Exponential", None) == ("DPM++ 2M SDE", "Exponential")
    assert split_sampler("Euler a", None) == ("Euler a", "Automatic")
    assert split_sampler("DPM++ 2M", "Karras") == ("DPM++ 2M", "Karras")


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    (root / "checkpoints" / "sd15").mkdir(parents=True)
    (root / "loras" / "style").mkdir(parents=True)
    (root / "embeddings").mkdir(parents=True)
    with paths.standalone_dirs(root, tmp_path / "out"):
        demo = ensure_demo_checkpoint()
        shutil.copy(demo, root / "checkpoints" / "sd15" / "v1-5-pruned-emaonly.safetensors")
        from lora_lab.nodes.demo.demo_lora import DEMO_CHARACTER, ensure_demo_lora
        from lora_lab.nodes.io.safetensors_io import read_header

        style = ensure_demo_lora()
        shutil.copy(style, root / "loras" / "style" / "animeoutlineV4_16.safetensors")
        shutil.copy(style, root / "loras" / "inkstyle.safetensors")
        shutil.copy(ensure_demo_lora(DEMO_CHARACTER), root / "loras" / "some_file.safetensors")
        header, _ = read_header(demo)
        width = next(v["shape"][1] for k, v in header.items() if k.endswith("token_embedding.weight"))
        save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(1))},
                  root / "embeddings" / "EasyNegative.safetensors")
        yield root


def _sample(g):
    return g.prompt["2"]["inputs"]


def test_v110_graph(models):
    g = graph_from_parameters(V110, "v110")
    assert g.prompt["1"]["inputs"]["ckpt_name"] == "sd15/v1-5-pruned-emaonly.safetensors"  # by name, anywhere
    s = _sample(g)
    assert (s["sampler_name"], s["scheduler"], s["steps"], s["cfg"], s["seed"]) == ("dpmpp_2m", "karras", 4, 7.0,
                                                                                     1234567890)
    assert (s["width"], s["height"], s["clip_skip"], s["batch_size"]) == (64, 96, 2, 1)
    assert s["prompt"].startswith("masterpiece") and "<lora:animeoutlineV4_16:0.8>" in s["prompt"]
    assert s["negative_prompt"] == "(worst quality, low quality:1.4), EasyNegative"
    assert [g.prompt[k]["class_type"] for k in "123"] == ["LoraLabCheckpointLoader", "LoraLabSampler",
                                                          "LoraLabSaveImage"]
    assert set(g.unmapped) == {"Model hash", "RNG"}  # the copy's hash is not 6ce0161689: named, name used
    assert "drawn as A1111's NV" in g.unmapped["RNG"]  # no RNG field: A1111's default GPU noise
    assert g.prompt["6"] == {"class_type": "LoraLabA1111Noise", "_meta": {"title": "A1111 Noise"}, "inputs": {
        "rng": "NV", "variation_seed": 0, "variation_strength": 0.0, "resize_seed_from_width": 0,
        "resize_seed_from_height": 0, "eta_noise_seed_delta": 0, "sgm_noise_multiplier": False}}
    assert s["a1111_noise"] == ["6", 0]


def test_sampler_schedule_mapping(models):
    old = _sample(graph_from_parameters(OLD_COMBINED.replace("sd-v1-5", "v1-5-pruned-emaonly")))
    assert (old["sampler_name"], old["scheduler"], old["cfg"]) == ("euler_ancestral", "normal", 7.5)
    karras = _sample(graph_from_parameters(OLD_KARRAS))
    assert (karras["sampler_name"], karras["scheduler"]) == ("dpmpp_2m", "karras")
    auto = _sample(graph_from_parameters(OLD_KARRAS.replace("DPM++ 2M Karras", "DPM++ 2M SDE, Schedule type: "
                                                                              "Automatic")))
    assert (auto["sampler_name"], auto["scheduler"]) == ("dpmpp_2m_sde", "exponential")  # its A1111 default
    with pytest.raises(WorkflowError, match="Sampler: 'PLMS'"):
        graph_from_parameters(OLD_KARRAS.replace("DPM++ 2M Karras", "PLMS"))
    with pytest.raises(WorkflowError, match="Align Your Steps"):
        graph_from_parameters(OLD_KARRAS.replace("DPM++ 2M Karras", "Euler, Schedule type: Align Your Steps"))


def test_checkpoint_by_hash_and_lora_by_hash(models):
    ckpt = models / "checkpoints" / "sd15" / "v1-5-pruned-emaonly.safetensors"
    lora = models / "loras" / "some_file.safetensors"
    from lora_lab.nodes.io.safetensors_io import read_header

    text = CIVITAI.format(model_hash=model_short_hash(ckpt), lora_hash=lora_short_hash(lora, read_header(lora)[1]))
    g = graph_from_parameters(text)
    # the demo copy and the demo itself have the same bytes: the hash finds one of them
    assert g.prompt["1"]["inputs"]["ckpt_name"] in ("sd15/v1-5-pruned-emaonly.safetensors", DEMO_NAME)
    # renamed to the file with the hash (the demo LoRA it was copied from has the same hash)
    from lora_lab.nodes.demo.demo_lora import DEMO_CHARACTER

    assert _sample(g)["prompt"].split(">")[0] in ("<lora:some_file:0.7", f"<lora:{DEMO_CHARACTER[:-12]}:0.7")
    assert _sample(g)["scheduler"] == "normal"  # Euler's Automatic: the model's own sigmas
    assert set(g.unmapped) == {"RNG"}
    with pytest.raises(WorkflowError, match="no checkpoint for Model: None, Model hash: 'ffffffffff'"):
        graph_from_parameters(CIVITAI.format(model_hash="ffffffffff", lora_hash="0"))
    missing = graph_from_parameters(text.replace(lora_short_hash(lora, read_header(lora)[1]), "000000000000"))
    assert "<lora:renamed_on_civitai>" in missing.unmapped


def test_unmapped_fields_are_named(models):
    g = graph_from_parameters(HIRES)
    # the hires fix is built (a1111_hires); the ESRGAN model is replaced by Lanczos, and named
    assert {"Hires upscaler", "RNG", "Model hash"} == set(g.unmapped)
    assert g.prompt["6"]["inputs"]["eta_noise_seed_delta"] == 31337  # ENSD: the ancestral step noise's seed
    assert "upscaler model" in g.unmapped["Hires upscaler"]


def _png(path, text):
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_load_workflow_reads_an_a1111_png(models, tmp_path, caplog):
    png = _png(tmp_path / "civitai_00012.png", HIRES)
    wf = load_workflow(png, {})
    assert wf.prompt == graph_from_parameters(HIRES, "civitai_00012").prompt
    assert "Hires upscaler" in caplog.text and set(wf.unmapped) >= {"Hires upscaler"}
    Image.new("RGB", (8, 8)).save(tmp_path / "bare.png")
    with pytest.raises(WorkflowError, match="no A1111 'parameters' chunk"):
        load_workflow(tmp_path / "bare.png", {})


@pytest.mark.parametrize("text", [V110, OLD_KARRAS, HIRES])
def test_realistic_parameters_run_headless_and_write_what_they_describe(models, tmp_path, text, capsys):
    from lora_lab.nodes.cli.main import main

    png = _png(tmp_path / "posted.png", text)
    out = tmp_path / "out"
    code = main(["run", str(png), "--models-dir", str(models), "--output-dir", str(out), "--json", "--quiet"])
    assert code == 0, capsys.readouterr()
    written = sorted((out / "a1111").glob("posted_*.png"))
    assert len(written) == 1
    with Image.open(written[0]) as im:
        size, params = im.size, im.text["parameters"]
    want_prompt, want_neg, want = parse_infotext(text)
    prompt, negative, got = parse_infotext(params)
    scale = int(want.get("Hires upscale", 1))  # the hires fix: the second pass's size
    assert size == tuple(int(v) * scale for v in want["Size"].split("x"))
    assert (prompt, negative) == (want_prompt, want_neg)
    for key in ("Steps", "CFG scale", "Seed", "Size", "Clip skip", "Hires upscale", "Hires steps",
                "Denoising strength"):
        assert got.get(key) == want.get(key), key
    want_sampler = split_sampler(want["Sampler"], want.get("Schedule type"))
    assert (got["Sampler"], got["Schedule type"]) == want_sampler
    assert got["Model"] == "v1-5-pruned-emaonly" and len(got["Model hash"]) == 10
    assert got["Model hash"] == model_short_hash(models / "checkpoints" / "sd15" / "v1-5-pruned-emaonly.safetensors")
    tags = [t for t in ("animeoutlineV4_16", "inkstyle", "lora-lab-demo-style") if f":{t}:" in text]
    assert [k.split(":")[0] for k in got["Lora hashes"].split(", ")] == tags
    if "EasyNegative" in text:
        assert got["TI hashes"].startswith("EasyNegative: ")
    json.dumps(got)
