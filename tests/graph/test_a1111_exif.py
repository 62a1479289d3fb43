"""A1111 parameters in JPEG / WebP EXIF (UserComment, as piexif.helper.UserComment.dump(...,
encoding="unicode") writes it for A1111), ComfyUI's WebP EXIF graph tags, and `lora-lab run
IMAGE.jpg` / `.webp` working like a PNG."""
from __future__ import annotations

import json

import pytest
from lora_lab.nodes.graph.a1111 import graph_from_parameters
from lora_lab.nodes.graph.workflow import WorkflowError, load_workflow, read_png_chunks
from lora_lab.nodes.io.exif_params import decode_user_comment
from lora_lab.nodes.io.png_params import parse_infotext
from PIL import Image

TEXT = """a café at night, <lora:lora-lab-demo-style:0.7>, 東京
Negative prompt: lowres, "bad"
Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 21, Size: 64x64, \
Model: v1-5-pruned-emaonly, ENSD: 31337, RNG: CPU, Version: v1.10.1"""


def piexif_unicode(text: str) -> bytes:
    """piexif.helper.UserComment.dump(text, encoding="unicode"): the code, then UTF-16 BE."""
    return b"UNICODE\x00" + text.encode("utf_16_be")


def save_with_exif(path, comment: bytes | None = None, tags: dict | None = None):
    exif = Image.Exif()
    if comment is not None:
        exif.get_ifd(0x8769)[0x9286] = comment
    for tag, value in (tags or {}).items():
        exif[tag] = value
    Image.new("RGB", (16, 16), (200, 120, 40)).save(path, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("raw", [
    piexif_unicode(TEXT),  # A1111 (piexif)
    b"UNICODE\x00" + TEXT.encode("utf-16-le"),  # little-endian writers
    b"UNICODE\x00" + TEXT.encode("utf-16"),  # with a byte-order mark
    b"\x00" * 8 + TEXT.encode("utf-8"),  # "undefined" code
    TEXT.encode("utf-8"),  # no code at all (A1111's reader falls back to UTF-8)
])
def test_user_comment_encodings(raw):
    assert decode_user_comment(raw) == TEXT
    assert decode_user_comment(b"ASCII\x00\x00\x00Steps: 3\x00") == "Steps: 3"


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_a1111_jpeg_and_webp_read_like_png(demo_models, tmp_path, suffix):
    pic = save_with_exif(tmp_path / f"civitai{suffix}", piexif_unicode(TEXT))
    assert read_png_chunks(pic) == {"parameters": TEXT}
    wf = load_workflow(pic, {})
    assert wf.prompt == graph_from_parameters(TEXT, "civitai").prompt
    bare = save_with_exif(tmp_path / f"bare{suffix}")
    with pytest.raises(WorkflowError, match="no A1111 'parameters' chunk .nor EXIF UserComment"):
        load_workflow(bare, {})


def test_comfyui_webp_graph_tags(tmp_path):
    graph = {"1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": "x.safetensors"}}}
    pic = save_with_exif(tmp_path / "comfy.webp", tags={0x0110: "prompt:" + json.dumps(graph),
                                                        0x010F: "workflow:" + json.dumps({"nodes": [], "links": []})})
    chunks = read_png_chunks(pic)
    assert chunks["prompt"] == graph and chunks["workflow"] == {"nodes": [], "links": []}
    assert load_workflow(pic, {}).prompt == graph


def test_run_a1111_jpeg_headless(demo_models, tmp_path, capsys):
    from lora_lab.nodes.cli.main import main

    pic = save_with_exif(tmp_path / "posted.jpg", piexif_unicode(TEXT))
    code = main(["run", str(pic), "--models-dir", str(demo_models), "--output-dir", str(tmp_path / "out"), "--json",
                 "--quiet"])
    assert code == 0, capsys.readouterr()
    (png,) = sorted((tmp_path / "out" / "a1111").glob("posted_*.png"))
    with Image.open(png) as im:
        prompt, negative, got = parse_infotext(im.text["parameters"])
    want_prompt, want_negative, want = parse_infotext(TEXT)
    assert (prompt, negative) == (want_prompt, want_negative)
    for key in ("Steps", "Sampler", "CFG scale", "Seed", "Size", "ENSD", "RNG"):
        assert got[key] == want[key], key
