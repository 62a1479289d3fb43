"""The README's example commands work as written on a fresh clone (demo files only).

`lora-lab run` examples are run with `--validate-only` appended: that resolves every
--set/--sweep node title and value against the real node classes (what failed as written:
`no node with id, title or class type 'Sample'`) without sampling full runs on the CPU;
the workflows themselves are executed by tests/test_workflows.py. The merge and LoRA-tool
examples run for real and their outputs are checked.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lora_lab.nodes.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

EXAMPLES = [
    "lora-lab run workflows/",
    'lora-lab run workflows/lora_txt2img.json --sweep "Sample (LoRA Lab).seed=1,2" '
    '--sweep "Load LoRA (LoRA Lab).strength_unet=0.5,1.0" --json',
    "lora-lab merge lora-lab-demo-sd15.safetensors --lora lora-lab-demo-style:0.8 "
    "--lora lora-lab-demo-star:0.5:0.3 -o output/demo-merged.safetensors",
    "lora-lab lora resize lora-lab-demo-star -o output/demo-star-r4.safetensors --rank 4",
]


def readme_commands() -> list[str]:
    """Every `lora-lab ...` line of the README's bash blocks (continuations joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"\s+", " ", cmd.split("  #")[0]).strip()
            if cmd.startswith("lora-lab "):
                out.append(cmd)
    return out


def test_the_examples_are_in_the_readme():
    cmds = readme_commands()
    for ex in EXAMPLES:
        assert ex in cmds, ex


def test_no_file_the_readme_names_is_missing():
    for name in re.findall(r"-r ([\w./-]+\.txt)", README):
        assert (ROOT / name).is_file(), f"README names {name}, which does not exist"
    assert "pip install -r requirements" not in README


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A fresh clone's working directory: the workflows, no models, no output."""
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORA_LAB_MODELS_DIR", raising=False)
    monkeypatch.delenv("LORA_LAB_OUTPUT_DIR", raising=False)
    return tmp_path


@pytest.mark.parametrize("cmd", EXAMPLES[:2])
def test_run_examples_validate_as_written(fresh, cmd, capsys):
    argv = shlex.split(cmd)[1:] + ["--validate-only"]
    code = cli.main(argv)
    cap = capsys.readouterr()
    assert code == 0, cap.err[-3000:]
    assert "no node with" not in cap.err


def test_merge_and_resize_examples_run_as_written(fresh, capsys):
    for cmd in EXAMPLES[2:]:
        assert cli.main(shlex.split(cmd)[1:] + ["-q"]) == 0, capsys.readouterr().err[-3000:]
    merged = load_file(fresh / "output" / "demo-merged.safetensors")
    assert any(k.startswith("model.diffusion_model.") for k in merged)
    resized = load_file(fresh / "output" / "demo-star-r4.safetensors")
    assert max(v.shape[0] for k, v in resized.items() if k.endswith("lora_down.weight")) <= 4
