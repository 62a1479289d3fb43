"""Model folders: names resolve inside their folder, everything else is refused."""
from __future__ import annotations

import os

import pytest

from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import ModelPathError


@pytest.fixture
def dirs(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints" / "sub").mkdir(parents=True)
    (models / "loras").mkdir()
    (models / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (models / "checkpoints" / "sub" / "b.safetensors").write_bytes(b"x")
    (models / "checkpoints" / "notes.txt").write_text("x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    with paths.standalone_dirs(models, tmp_path / "out"):
        yield tmp_path


def test_resolve_inside(dirs):
    assert paths.resolve("checkpoints", "a.safetensors") == (dirs / "models/checkpoints/a.safetensors").resolve()
    assert paths.resolve("checkpoints", "sub/b.safetensors").name == "b.safetensors"
    assert paths.resolve("checkpoints", "sub\\b.safetensors").name == "b.safetensors"


@pytest.mark.parametrize("name", ["../../secret.safetensors", "sub/../../../secret.safetensors",
                                  "/etc/passwd", "C:\\x.safetensors", ""])
def test_escapes_refused(dirs, name):
    with pytest.raises(ModelPathError):
        paths.resolve("checkpoints", name)


def test_symlink_leaving_folder_refused(dirs):
    os.symlink(dirs / "secret.safetensors", dirs / "models/checkpoints/link.safetensors")
    with pytest.raises(ModelPathError, match="outside"):
        paths.resolve("checkpoints", "link.safetensors")
    assert "link.safetensors" not in paths.list_names("checkpoints")


def test_missing_named(dirs):
    with pytest.raises(ModelPathError, match="not found"):
        paths.resolve("checkpoints", "nope.safetensors")


def test_list_names(dirs):
    assert paths.list_names("checkpoints") == ["a.safetensors", "sub/b.safetensors"]
    assert paths.list_names("loras") == []


def test_env_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("LORA_LAB_OUTPUT_DIR", str(tmp_path / "o"))
    assert paths.folders("loras") == [tmp_path / "m" / "loras"]
    assert paths.output_dir() == tmp_path / "o"
    monkeypatch.delenv("LORA_LAB_MODELS_DIR")
    monkeypatch.chdir(tmp_path)
    assert paths.models_dir() == tmp_path / "models"
    with paths.standalone_dirs(tmp_path / "x", None):
        assert paths.models_dir() == tmp_path / "x"
