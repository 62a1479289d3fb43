"""Load LoRA / Stack LoRAs nodes: files in the loras folder, stack syntax, trigger words,
prompt tags, caching, immutability and clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_handle
from lora_factory import kohya
from safetensors.torch import save_file

from lora_lab.nodes.lora import lora_formats, patcher
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.lora.lora_stack import parse_stack_text, strip_prompt_loras
from lora_lab.nodes.defs.node_defs import LoraLabLoraLoader, LoraLabLoraStack


@pytest.fixture(scope="module")
def h():
    return make_handle("sd1", seed=21)


@pytest.fixture
def loras(tmp_path, h):
    folder = tmp_path / "models" / "loras"
    (folder / "style").mkdir(parents=True)
    meta = {"ss_tag_frequency": json.dumps({"10_cat": {"mycat": 9, "sitting": 3, "grass": 1}}),
            "ss_network_dim": "4"}
    save_file(kohya(h, rank=4, seed=1), folder / "cat.safetensors", metadata=meta)
    save_file(kohya(h, rank=2, seed=2), folder / "style" / "ink.safetensors")
    (folder / "style" / "ink.txt").write_text("ink drawing")
    (folder / "style" / "ink.json").write_text(json.dumps({"activation text": "inkstyle"}))
    xl = make_handle("sdxl", seed=3)
    save_file(kohya(xl, ldm_names=True), folder / "xl.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield folder


def test_stack_text_syntax():
    text = "cat\ncat:0.5\n# off:1\nstyle/ink:0.8:0.2\n<lora:a:0.7>\n<lora:b:0.3:0.9>\n\n  dog : 1.5 \n"
    got = [(e.name, e.strength_unet, e.strength_text) for e in parse_stack_text(text)]
    assert got == [("cat", 1.0, 1.0), ("cat", 0.5, 0.5), ("style/ink", 0.8, 0.2), ("a", 0.7, 0.7),
                   ("b", 0.9, 0.3), ("dog", 1.5, 1.5)]
    with pytest.raises(NodeInputError, match="loras"):
        parse_stack_text("cat:x")


def test_prompt_tags_stripped():
    text, entries = strip_prompt_loras("a <lora:cat:0.6> photo, <lora:ink:0.5:1.2> of a cat")
    assert text == "a photo, of a cat"
    assert [(e.name, e.strength_text, e.strength_unet) for e in entries] == [("cat", 0.6, 0.6), ("ink", 0.5, 1.2)]


def test_load_lora_node(loras, h):
    model, words = LoraLabLoraLoader().load(h, "cat.safetensors", 0.8, 0.4)
    assert h.patches == () and len(model.patches) == 1  # the input handle is untouched
    assert model.unet is h.unet  # base modules shared
    assert (model.patches[0].strength_unet, model.patches[0].strength_text) == (0.8, 0.4)
    assert words == "mycat, sitting, grass"
    from lora_lab.nodes.demo.demo_lora import DEMO_LORA_NAMES

    assert LoraLabLoraLoader.INPUT_TYPES()["required"]["lora_name"][0] == [
        "broken.safetensors", "cat.safetensors", "style/ink.safetensors", "xl.safetensors", *DEMO_LORA_NAMES]


def test_stack_node_order_stack_input_and_triggers(loras, h):
    out, stack, words = LoraLabLoraStack().stack(h, "style/ink:0.5\n#cat\ncat", lora_stack=[("cat", 0.3, 0.2)])
    assert [(p.name, p.strength_unet, p.strength_text) for p in out.patches] == [
        ("cat", 0.3, 0.2), ("style/ink", 0.5, 0.5), ("cat", 1.0, 1.0)]
    assert stack == [("cat", 0.3, 0.2), ("style/ink", 0.5, 0.5), ("cat", 1.0, 1.0)]
    assert "inkstyle" in words and "ink drawing" in words and "mycat" in words


def test_strength_change_does_not_reread(loras, h):
    lora_formats.LORA_CACHE.clear()
    before = lora_formats.LORA_CACHE.reads
    for s in (0.1, 0.5, 0.9):
        LoraLabLoraLoader().load(h, "cat.safetensors", s, s)
    assert lora_formats.LORA_CACHE.reads == before + 1


@pytest.mark.parametrize("name,match", [
    ("xl.safetensors", "made for SDXL, but the model is SD 1.x"),
    ("broken.safetensors", "corrupt"),
    ("missing.safetensors", "not found"),
    ("../secret.safetensors", "leaves the loras folder"),
])
def test_errors_name_node_input_value(loras, h, name, match):
    with pytest.raises(NodeInputError, match=match) as e:
        LoraLabLoraLoader().load(h, name, 1.0, 1.0)
    assert "LoraLabLoraLoader" in str(e.value) and "lora_name" in str(e.value) and name in str(e.value)


def test_pickled_lora_refused(loras, h, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, loras / "evil.pt", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(NodeInputError, match="cannot be loaded safely"):
        LoraLabLoraLoader().load(h, "evil.pt", 1.0, 1.0)


def test_block_weights(loras, h):
    model, _ = LoraLabLoraLoader().load(h, "cat.safetensors", 1.0, 1.0, block_weights="OUTALL")
    plan = patcher.plan(model)
    ldm = patcher.state_for(h).index.ldm_unet
    for (comp, mod, _), entries in plan.items():
        if comp == "unet":
            assert ldm[mod].startswith("output_blocks"), mod  # IN and MID are 0 in OUTALL
    assert any(comp == "te1" for comp, _, _ in plan)  # BASE = 1 keeps the text encoder
    with pytest.raises(NodeInputError, match="block_weights"):
        LoraLabLoraLoader().load(h, "cat.safetensors", 1.0, 1.0, block_weights="1,2,3")


def test_prompt_lora_changes_the_image_and_leaves_model(loras, h):
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

    s = dict(negative_prompt="", seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", width=64,
             height=64)
    base = generate(h, SampleSettings("a cat", **s))
    tagged = generate(h, SampleSettings("a cat <lora:cat:1.0>", **s))
    again = generate(h, SampleSettings("a cat", **s))
    assert not torch.equal(base, tagged)
    assert torch.equal(base, again) and h.patches == ()
    # the tag is the same as a Load LoRA node with text 1.0 / unet 1.0
    model, _ = LoraLabLoraLoader().load(h, "cat.safetensors", 1.0, 1.0)
    assert torch.equal(generate(model, SampleSettings("a cat", **s)), tagged)
