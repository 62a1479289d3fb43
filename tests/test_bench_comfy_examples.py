"""bench/comfy_examples.py on synthetic graphs (no ComfyUI_examples checkout needed): the family a
graph is counted under, the settings it is capped to, and one survey that runs a UI workflow on a
tiny stand-in `.ckpt`, refuses a ControlNet graph naming the feature, and leaves Flux out of scope."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("comfy_examples_bench", ROOT / "bench" / "comfy_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def api_default(ckpt: str) -> dict:
    """ComfyUI's default text-to-image graph in API format."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 4}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "seed": 1,
            "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }


def test_family_from_names_and_node_types(bench):
    assert bench.classify(api_default("v1-5-pruned-emaonly.ckpt"))[0] == "SD 1.x"
    assert bench.classify(api_default("Anything-V3.0.ckpt"))[0] == "SD 1.x"  # no marker: SD 1.x
    assert bench.classify(api_default("v2-1_768-ema-pruned.ckpt"))[0] == "SD 2.x"
    assert bench.classify(api_default("sd_xl_base_1.0.safetensors"))[0] == "SDXL"
    assert bench.classify(api_default("sd_xl_refiner_1.0.safetensors"))[1] == {
        "sd_xl_refiner_1.0.safetensors": "SDXL refiner"}
    assert bench.classify(api_default("flux1-dev-fp8.safetensors"))[0] == "Flux"
    g = api_default("some_model.safetensors")
    g["5"]["class_type"] = "EmptySD3LatentImage"
    assert bench.classify(g)[0] == "SD3-class (Flux/SD3/...)"
    # a UI-only graph: model names of nodes we have no schema for come from the widgets
    ui = {"nodes": [{"id": 1, "type": "UNETLoader", "widgets_values": ["wan2.1_t2v_1.3B_fp16.safetensors", "default"]}]}
    assert bench.classify({"1": {"class_type": "UNETLoader", "inputs": {}}}, ui)[0] == "Wan (video)"


def test_capped_settings(bench):
    g = api_default("v1-5-pruned-emaonly.ckpt")
    g["10"] = {"class_type": "KSamplerAdvanced", "inputs": {"steps": 25, "start_at_step": 20, "end_at_step": 10000}}
    g["11"] = {"class_type": "LatentUpscale", "inputs": {"width": 768, "height": 1152, "samples": ["3", 0]}}
    before = copy.deepcopy(g)
    c = bench.cap_graph(g, max_side=64, max_steps=3, image_sizes={})
    assert g == before  # the graph read is not changed
    assert (c["5"]["inputs"]["width"], c["5"]["inputs"]["height"], c["5"]["inputs"]["batch_size"]) == (40, 64, 1)
    assert (c["11"]["inputs"]["width"], c["11"]["inputs"]["height"]) == (64, 96)  # same factor as the first pass
    assert c["3"]["inputs"]["steps"] == 3 and c["3"]["inputs"]["cfg"] == 7.0
    assert c["10"]["inputs"] == {"steps": 3, "start_at_step": 2, "end_at_step": 10000}
    # ConditioningSetArea keeps areas of at least 64 px (its minimum): the graph is scaled less
    g["12"] = {"class_type": "ConditioningSetArea", "inputs": {"width": 256, "height": 384, "x": 256, "y": 0}}
    c = bench.cap_graph(g, max_side=64, max_steps=3, image_sizes={})
    assert c["12"]["inputs"] == {"width": 64, "height": 96, "x": 64, "y": 0}
    assert (c["5"]["inputs"]["width"], c["5"]["inputs"]["height"]) == (128, 192)


def test_survey_runs_classifies_and_explains(bench, tmp_path, capsys):
    ex = tmp_path / "examples"
    (ex / "sd15").mkdir(parents=True)
    ui = json.loads((ROOT / "workflows" / "core_txt2img.json").read_text())
    loader = next(n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["widgets_values"][0] = "v1-5-pruned-emaonly.ckpt"  # a pickled name: the stand-in is a .ckpt
    (ex / "sd15" / "default_ui.json").write_text(json.dumps(ui))
    cn = api_default("v1-5-pruned-emaonly.ckpt")
    cn["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_scribble.safetensors"}}
    cn["21"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["20", 0],
                                                            "image": ["22", 0], "strength": 1.0}}
    cn["22"] = {"class_type": "LoadImage", "inputs": {"image": "scribble.png"}}
    cn["3"]["inputs"]["positive"] = ["21", 0]
    (ex / "controlnet").mkdir()
    (ex / "controlnet" / "cn.json").write_text(json.dumps(cn))
    from PIL import Image

    Image.new("RGB", (96, 96), "white").save(ex / "controlnet" / "scribble.png")  # an input, not a graph
    (ex / "flux").mkdir()
    (ex / "flux" / "flux.json").write_text(json.dumps(api_default("flux1-schnell-fp8.safetensors")))
    assert bench.main([str(ex), "--max-side", "32", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("sd15/", "controlnet/", "flux/"))}
    assert set(rows) == {"sd15/default_ui.json", "controlnet/cn.json", "flux/flux.json"}
    assert rows["sd15/default_ui.json"].split()[1:4] == ["SD", "1.x", "ran"]
    assert "unsupported nodes: ControlNet / T2I-Adapter" in rows["controlnet/cn.json"]
    assert rows["flux/flux.json"].split()[1:] == ["Flux", "out", "of", "scope"]
    assert "1 of 2 SD 1.x/2.x/SDXL examples run headless (1 as `lora-lab run FILE` reads them" in out
    assert "   1  ControlNet / T2I-Adapter: cn" in out
    assert "steps capped at 2" in out


def test_stand_ins_take_the_layout_their_name_asks_for(bench, tmp_path):
    """An inpainting name gets a 9-channel UNet, an SD 2.x 768 name a v-prediction checkpoint, a
    pickled name a .ckpt our loader reads; a LoRA under any name matches every one of its layers."""
    from lora_lab.nodes.lora.lora_formats import read_lora
    from lora_lab.nodes.lora.patcher import match_report
    from lora_lab.nodes.model.checkpoint import load_single_file

    stand_ins = bench.stand_ins
    want = {"512-inpainting-ema.safetensors": ("SD 2.x", "sd2", "epsilon", 9),
            "v2-1_768-ema-pruned.ckpt": ("SD 2.x", "sd2", "v_prediction", 4),
            "sd_xl_base_1.0.safetensors": ("SDXL", "sdxl", "epsilon", 4)}
    for name, (fam, family, prediction, channels) in want.items():
        stand_ins.write_checkpoint(tmp_path, name, fam)
        h = load_single_file(tmp_path / "checkpoints" / name)
        assert (h.family, h.prediction_type, h.unet.config.in_channels) == (family, prediction, channels), name
    stand_ins.write_lora(tmp_path, "lcm_lora_sdxl.safetensors", "SDXL")
    report = match_report(h, read_lora(tmp_path / "loras" / "lcm_lora_sdxl.safetensors"))
    assert report.total > 0 and len(report.adapters) == report.total and not report.unmatched
