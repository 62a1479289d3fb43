"""Strength sweep: value lists, the contact sheet's layout, and the invariants: a cell is exactly
the image the model + LoRA at that strength gives, and the input model (with its upstream
LoRAs) is left untouched."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_handle
from lora_factory import kohya
from safetensors.torch import save_file

from lora_lab.nodes.io import paths
from lora_lab.nodes.sampling import sweep
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.io.image_io import to_pil
from lora_lab.nodes.lora.lora_stack import StackEntry, add_loras
from lora_lab.nodes.defs.nodes_sweep import LoraLabStrengthSweep
from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

S = SampleSettings("a cat", "", seed=3, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                   width=64, height=64)


@pytest.fixture(scope="module")
def h():
    return make_handle("sd1", seed=31)


@pytest.fixture(scope="module")
def models(tmp_path_factory, h):
    root = tmp_path_factory.mktemp("sweep_models")
    (root / "loras" / "sub").mkdir(parents=True)
    save_file(kohya(h, rank=4, seed=1), root / "loras" / "cat.safetensors")
    save_file(kohya(h, rank=2, seed=2, with_te=False), root / "loras" / "sub" / "ink.safetensors")
    return root


@pytest.fixture
def dirs(models, tmp_path):
    with paths.standalone_dirs(models, tmp_path / "out"):
        yield


def crop(sheet: torch.Tensor, lay: sweep.SheetLayout, r: int, c: int) -> np.ndarray:
    x0, y0, x1, y1 = lay.image_box(r, c)
    return np.rint(sheet[0, y0:y1, x0:x1].numpy() * 255).astype(np.uint8)


def as_u8(image: torch.Tensor) -> np.ndarray:
    return np.asarray(to_pil(image))


# ------------------------------------------------------------------------------------------ values
def test_parse_values():
    assert sweep.parse_values("0, 0.25,0.5 1") == (0.0, 0.25, 0.5, 1.0)
    assert sweep.parse_values("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert sweep.parse_values("0:0.3:0.1; -1") == (0.0, 0.1, 0.2, 0.3, -1.0)
    assert sweep.parse_values("1\n2\n5:9:2", int, "values2") == (1, 2, 5, 7, 9)
    for bad, msg in [("", "at least one"), ("0, x", "'x' is not a number"), ("0:1", "start:stop:step"),
                     ("0:1:0", "step must be positive"), ("1:0:0.5", "gives 0 values"), ("nan", "finite")]:
        with pytest.raises(NodeInputError, match=msg) as e:
            sweep.parse_values(bad)
        assert e.value.node == "LoraLabStrengthSweep" and e.value.input_name == "strengths"
    with pytest.raises(NodeInputError, match="whole number"):
        sweep.parse_values("1.5", int, "values2")


def test_plans_and_labels():
    p = sweep.make_plan("style/cat.safetensors", "0, 1")
    assert p.values2 == (None,) and sweep.labels(p) == ("cat: strength", ["0", "1"], [])
    p = sweep.make_plan("cat.safetensors", "0,1", "seeds", "none", "4 5")
    assert sweep.labels(p)[2] == ["seed 4", "seed 5"]
    p = sweep.make_plan("cat.safetensors", "0.5", "lora strengths", "sub/ink.safetensors", "0, 0.75")
    assert sweep.labels(p) == ("cat: strength x ink", ["0.5"], ["ink 0", "ink 0.75"])
    with pytest.raises(NodeInputError, match="needs a second LoRA"):
        sweep.make_plan("cat", "1", "lora strengths", "none", "1")
    with pytest.raises(NodeInputError, match="values2"):
        sweep.make_plan("cat", "1", "seeds", "none", "")
    with pytest.raises(NodeInputError, match="at most 64"):
        sweep.make_plan("cat", "0:1:0.1", "seeds", "none", "1:7:1")
    with pytest.raises(NodeInputError, match="axis2"):
        sweep.make_plan("cat", "1", "rows")


def test_contact_sheet_layout():
    g = torch.Generator().manual_seed(0)
    rows = [[torch.rand(24, 32, 3, generator=g) for _ in range(3)] for _ in range(2)]
    sheet = sweep.contact_sheet(rows, ["0", "0.5", "a long label"], ["seed 1", "seed 2"], "cat: strength")
    lay = sweep.sheet_layout(2, (24, 32), ["0", "0.5", "a long label"], ["seed 1", "seed 2"], "cat: strength")
    assert sheet.shape == (1, lay.height, lay.width, 3) and sheet.dtype == torch.float32
    assert lay.cell_w > 32 and lay.label_w > 0 and lay.top > 0
    for r in range(2):
        for c in range(3):
            assert np.array_equal(crop(sheet, lay, r, c), as_u8(rows[r][c]))
    bg = np.array([24, 24, 24]) / 255
    band = sheet[0, : lay.top].numpy()
    assert (np.abs(band - bg).sum(-1) > 0.5).any()  # the labels are drawn
    with pytest.raises(ValueError, match="rows of images"):
        sweep.contact_sheet(rows, ["0", "1"], [])


# ------------------------------------------------------------------------------------------ sweeps
def test_cells_match_the_model_with_the_lora(h, dirs):
    upstream, _ = add_loras(h, [StackEntry("sub/ink.safetensors", 0.7, 0.7)], "test")
    before = upstream.patches
    plan = sweep.make_plan("cat.safetensors", "0, 1", "seeds", "none", "3, 9")
    sheet = sweep.run_sweep(upstream, plan, S)
    assert upstream.patches is before and h.patches == ()  # inputs untouched
    title, cols, rows = sweep.labels(plan)
    lay = sweep.sheet_layout(2, (64, 64), cols, rows, title)
    assert sheet.shape == (1, lay.height, lay.width, 3)
    for r, seed in enumerate((3, 9)):
        s = dataclasses.replace(S, seed=seed)
        base = generate(upstream, s)[0]  # strength 0 == the upstream model alone
        assert np.array_equal(crop(sheet, lay, r, 0), as_u8(base))
        with_cat, _ = add_loras(upstream, [StackEntry("cat.safetensors", 1.0, 1.0)], "test")
        assert [p.name for p in with_cat.patches] == ["sub/ink.safetensors", "cat.safetensors"]
        assert np.array_equal(crop(sheet, lay, r, 1), as_u8(generate(with_cat, s)[0]))
        assert not np.array_equal(crop(sheet, lay, r, 0), crop(sheet, lay, r, 1))


def test_input_model_samples_the_same_after_a_sweep(h, dirs):
    before = generate(h, S)
    sweep.run_sweep(h, sweep.make_plan("cat.safetensors", "1, 2"), S)
    assert torch.equal(generate(h, S), before)  # the shared weights went back to the base


def test_second_lora_axis(h, dirs):
    plan = sweep.make_plan("cat.safetensors", "0.5", "lora strengths", "sub/ink.safetensors", "0, 1")
    sheet = sweep.run_sweep(h, plan, S)
    title, cols, rows = sweep.labels(plan)
    lay = sweep.sheet_layout(2, (64, 64), cols, rows, title)
    both, _ = add_loras(h, [StackEntry("cat.safetensors", 0.5, 0.5), StackEntry("sub/ink.safetensors", 1, 1)], "t")
    assert np.array_equal(crop(sheet, lay, 1, 0), as_u8(generate(both, S)[0]))


def test_node(h, dirs):
    node = LoraLabStrengthSweep()
    types = node.INPUT_TYPES()
    assert "cat.safetensors" in types["required"]["lora_name"][0]
    assert types["optional"]["lora2_name"][0][0] == "none"
    (sheet,) = node.sweep(h, "cat.safetensors", "0,1", "a cat", "", 3, 2, 5.0, "euler", "normal", 64, 64,
                          axis2="seeds", values2="1")
    assert sheet.shape[0] == 1 and sheet.shape[-1] == 3 and 0 <= sheet.min() and sheet.max() <= 1
    with pytest.raises(NodeInputError, match="lora_name"):
        node.sweep(h, "missing.safetensors", "1", "", "", 0, 1, 5.0, "euler", "normal", 64, 64)
