"""The trained demo model and LoRAs (issue 14): shipped checksums, the loader's checks, the
config inferred from the file's shapes alone, a stored reference picture, the dataset, and
the README's demo command under a minute."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lora_lab.nodes.demo import demo, demo_lora
from lora_lab.nodes.demo import shapes as D
from lora_lab.nodes.io.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "demo_reference.png"
REFERENCE_PROMPT, REFERENCE_SEED = "a yellow triangle on a blue background", 42


def _scorer():
    spec = importlib.util.spec_from_file_location("demo_quality", ROOT / "bench" / "demo_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    from lora_lab.nodes.model.checkpoint import load_single_file

    return load_single_file(demo.ensure_demo_checkpoint(tmp_path_factory.mktemp("ckpt")))


def test_shipped_assets_match_their_checksums():
    assert demo.sha256_file(demo.ASSETS / demo.DEMO_NAME) == demo.DEMO_SHA256
    for spec in demo_lora.DEMO_LORAS.values():
        assert demo.sha256_file(demo.ASSETS / spec.name) == spec.sha256
    assert (demo.ASSETS / demo.DEMO_NAME).stat().st_size < 40 * 2 ** 20


def test_install_checks_the_copy_and_replaces_a_stale_file(tmp_path):
    target = tmp_path / demo.DEMO_NAME
    target.write_bytes(b"an older demo file")  # e.g. the random-weights demo of earlier versions
    assert demo.ensure_demo_checkpoint(tmp_path) == target
    assert demo.sha256_file(target) == demo.DEMO_SHA256


def test_a_damaged_asset_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match="SHA-256"):
        demo.ensure_demo_checkpoint(tmp_path)
    assert not (tmp_path / demo.DEMO_NAME).exists()


def test_config_comes_from_the_shapes(handle):
    u, v, te = handle.unet.config, handle.vae.config, handle.text_encoders[0].config
    assert handle.family == "sd1" and handle.prediction_type == "epsilon"
    assert tuple(u.block_out_channels) == (64, 128, 128) and u.cross_attention_dim == 64
    assert tuple(v.block_out_channels) == (32, 32, 64, 64)  # 8x downsampling: 64 px -> 8x8 latents
    assert (te.vocab_size, te.hidden_size, te.num_hidden_layers) == (49408, 64, 3)


def test_classifier_is_exact_on_the_dataset():
    assert _scorer().check_on_dataset(120) == (1.0, 1.0, 1.0)


def test_star_detector_on_the_dataset_and_rounded_stars():
    q = _scorer()
    assert q.check_star_detector(60) == (0.0, 1.0)
    star = np.asarray(D.draw("star", (255, 255, 255), (0, 0, 0), 32, 32, 22))[..., 0] > 127
    blurred = np.asarray(Image.fromarray(star.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(2.5))) > 140
    assert q.classify_shape(blurred, q.ALL_SHAPES)[0] != "star"  # the upright template misses a fat star
    assert q.is_star(blurred) and q.is_star(np.rot90(star)) and q.is_star(star[::-1])  # the detector doesn't
    disc = np.hypot(*np.mgrid[-32:32, -32:32]) < 20
    speck = disc.copy()
    speck[1:3, 60:62] = True  # a stray corner blotch is not part of the object
    assert not q.is_star(disc) and not q.is_star(speck)


def test_dataset_is_deterministic(tmp_path):
    a, b = D.sample(5, 7), D.sample(5, 7)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1] == b[1]
    assert len(D.combinations()) == 120
    folder = demo_lora.ensure_demo_dataset(tmp_path / "data")
    captions = sorted((folder / "5_llpurple").glob("*.txt"))
    assert len(captions) == 12 and captions[0].read_text().startswith("llpurple, a purple ")


def test_fixed_prompt_and_seed_reproduce_the_reference_picture(handle):
    scorer = _scorer()
    got = scorer.render(handle, REFERENCE_PROMPT, REFERENCE_SEED)
    with Image.open(REFERENCE) as im:
        want = np.asarray(im.convert("RGB"))
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 24, (diff.mean(), diff.max())
    r = scorer.classify(got)
    assert (r["background"], r["colour"], r["shape"]) == ("blue", "yellow", "triangle")


def test_demo_command_runs_well_under_a_minute(tmp_path, capsys):
    from lora_lab.nodes.cli.main import main

    t0 = time.perf_counter()
    code = main(["run", str(ROOT / "workflows" / "demo_txt2img.json"), "--models-dir", str(tmp_path / "m"),
                 "--output-dir", str(tmp_path / "o"), "--json", "--quiet"])
    elapsed = time.perf_counter() - t0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert code == 0 and run["status"] == "ok"
    assert elapsed < 30, elapsed
    with Image.open(run["files"][0]) as im:
        r = _scorer().classify(np.asarray(im.convert("RGB")))
    assert (r["background"], r["colour"], r["shape"]) == ("blue", "yellow", "triangle")
