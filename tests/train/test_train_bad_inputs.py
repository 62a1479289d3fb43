"""Bad training inputs: damaged or hostile resume states, captions that are not UTF-8,
decompression bombs, an empty dataset (refused before the model is loaded), and the help
text of every `lora-lab train` option. Each error names the node, the input and the value;
the models and output folders are hashed before and after."""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_handle
from lora_lab.nodes.cli import main as cli
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.io.paths import standalone_dirs
from lora_lab.nodes.train.train_config import TrainConfig
from lora_lab.nodes.train.train_data import scan_dataset
from lora_lab.nodes.train.train_loop import train_lora
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree_hash(*roots: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots if root.exists() for p in sorted(root.rglob("*")) if p.is_file()}


def _image(path: Path, size=(32, 32), seed=0):
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _dataset(root: Path) -> Path:
    d = root / "data" / "2_sks"
    d.mkdir(parents=True)
    _image(d / "a.png", seed=1)
    (d / "a.txt").write_text("sks, red", encoding="utf-8")
    _image(d / "b.png", seed=2)
    return root / "data"


def _cfg(data, name, **kw):
    return TrainConfig(str(data), name, steps=2, rank=2, alpha=1.0, learning_rate=1e-3, batch_size=1,
                       resolution=32, seed=3, save_dtype="fp32", target="attention", use_accelerate=False, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model and the state folder of a finished 2-step run."""
    root = tmp_path_factory.mktemp("train_bad")
    data = _dataset(root)
    h = make_handle("sd1", seed=5)
    with standalone_dirs(root / "models", root / "out"):
        result = train_lora(h, _cfg(data, "base"))
    return h, data, root, Path(result.state_dir)


def _damaged(trained, tmp_path, damage) -> Path:
    state = tmp_path / "state"
    src = trained[3]
    state.mkdir()
    for p in src.iterdir():
        (state / p.name).write_bytes(p.read_bytes())
    damage(state)
    return state


class _Hostile:
    def __reduce__(self):
        import os

        return os.system, (f"touch {_Hostile.marker}",)


def _hostile_optimizer(state: Path) -> None:
    torch.save({"state": {}, "param_groups": [], "x": _Hostile()}, state / "optimizer.pt")


@pytest.mark.parametrize("damage,says", [
    (lambda s: (s / "train_state.json").write_text("{not json"), "unreadable train_state.json"),
    (lambda s: (s / "train_state.json").write_text("[1, 2]"), "JSON object"),
    (lambda s: (s / "train_state.json").write_text(json.dumps(
        {k: v for k, v in json.loads((s / "train_state.json").read_text()).items() if k != "step"})), "'step'"),
    (lambda s: (s / "train_state.json").write_text(json.dumps(
        dict(json.loads((s / "train_state.json").read_text()), step="2"))), "'step'"),
    (lambda s: (s / "lora_state.safetensors").write_bytes((s / "lora_state.safetensors").read_bytes()[:100]),
     "lora_state.safetensors"),
    (lambda s: (s / "optimizer.pt").write_bytes(b"\x80\x04garbage"), "optimizer.pt"),
    (_hostile_optimizer, "optimizer.pt"),
], ids=["garbage-json", "not-an-object", "no-step", "step-text", "truncated-safetensors", "garbage-pickle",
        "hostile-pickle"])
def test_resume_from_a_damaged_state(trained, tmp_path, damage, says):
    h, data, _, _ = trained
    _Hostile.marker = tmp_path / "pwned"
    state = _damaged(trained, tmp_path, damage)
    models, out = tmp_path / "models", tmp_path / "out"
    with standalone_dirs(models, out):
        before = tree_hash(models, out, state)
        with pytest.raises(NodeInputError) as info:
            train_lora(h, _cfg(data, "again", resume=str(state)))
        assert tree_hash(models, out, state) == before
    err = info.value
    assert err.node == "LoraLabTrainLora" and err.input_name == "resume" and err.value == str(state)
    assert says in str(err) and str(state) in str(err)
    assert not _Hostile.marker.exists()  # never unpickled unsafely


def test_latin1_caption_is_named(tmp_path):
    data = _dataset(tmp_path)
    cap = data / "2_sks" / "b.txt"
    cap.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(NodeInputError) as info:
        scan_dataset(str(data), 32)
    msg = str(info.value)
    assert info.value.input_name == "dataset_dir" and str(cap) in msg and "0xe9" in msg and "UTF-8" in msg
    cap.write_bytes("\ufeffcaf\xe9, cr\xe8me".encode())  # UTF-8 with a BOM: read, BOM dropped
    caps = {i.path.name: i.caption for i in scan_dataset(str(data), 32).items}
    assert caps["b.png"] == "caf\xe9, cr\xe8me"


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A valid 1x1 PNG whose header claims side x side pixels (PIL's bomb check reads the header)."""
    _image(path, (1, 1))
    raw = bytearray(path.read_bytes())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", side, side)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


def test_decompression_bomb_is_named(tmp_path):
    data = _dataset(tmp_path)
    bomb = data / "2_sks" / "bomb.png"
    _bomb_png(bomb)
    with pytest.raises(NodeInputError) as info:
        scan_dataset(str(data), 32)
    assert info.value.input_name == "dataset_dir" and str(bomb) in str(info.value) and "too large" in str(info.value)


def test_cli_train_empty_dataset_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from lora_lab.nodes.cli import cli_train

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the dataset was checked")

    monkeypatch.setattr(cli_train, "_load_model", no_load)
    (tmp_path / "empty").mkdir()
    before = tree_hash(tmp_path)
    argv = ["train", "--model", "nothing.safetensors", "--dataset-dir", str(tmp_path / "empty"), "--output-name", "x",
            "--models-dir", str(tmp_path / "m"), "--output-dir", str(tmp_path / "o"), "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "LoraLabTrainLora" in err and "'dataset_dir'" in err and str(tmp_path / "empty") in err
    assert "no images found" in err and tree_hash(tmp_path) == before


def test_train_help_has_text_and_default_for_every_option(capsys):
    import argparse

    from lora_lab.nodes.cli.cli_train import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    for action in p._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help text"
        if not action.required:
            shown = action.help % {"default": action.default} if "%(default)" in action.help else action.help
            assert "default" in shown, action.option_strings
    helps = {a.option_strings[0]: a.help for a in p._actions}
    assert helps["--steps"].endswith("(default: 500)") and helps["--target"].endswith("(default: 'attention+ff')")
    assert helps["--enable-bucket"].endswith("(default: --enable-bucket)")
    assert helps["--overwrite"].endswith("(default: --no-overwrite)")
    p.format_help()  # every help text formats


def test_loss_chart_average_is_not_the_last_loss():
    from lora_lab.nodes.train.train_export import loss_curve_image, moving_average

    k, avg = moving_average([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert k == 6 and avg[-1] == pytest.approx(3.5) and avg[0] == 1.0
    k, avg = moving_average([float(i % 2) for i in range(400)])
    assert k == 20 and avg[-1] == pytest.approx(0.5)
    img = loss_curve_image([0.5, float("nan"), float("inf"), 0.25])  # a diverged step draws nothing odd
    assert img.shape == (1, 256, 512, 3) and torch.isfinite(img).all()
