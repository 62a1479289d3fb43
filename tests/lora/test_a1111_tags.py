"""A1111 prompt tags (<lora:...>, <lyco:...>, named te=/unet=/dyn=/lbw=), name lookup by file
name and ss_output_name alias, LBW presets and civitai trainedWords, as A1111 and the
extensions define them."""
from __future__ import annotations

import json

import pytest
from conftest import make_handle
from lora_factory import kohya
from safetensors.torch import save_file

from lora_lab.nodes.defs.node_defs import LoraLabLoraLoader, LoraLabLoraStack
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import ModelPathError, NodeInputError
from lora_lab.nodes.lora.block_weights import PRESETS, parse_block_weights
from lora_lab.nodes.lora.lora_stack import StackEntry, parse_stack_text, resolve_lora, strip_prompt_loras


def _tag(text):
    _, entries = strip_prompt_loras(text)
    assert len(entries) == 1
    e = entries[0]
    return e.name, e.strength_text, e.strength_unet, e.dyn, e.block_weights


@pytest.mark.parametrize("tag,want", [
    ("<lora:ink>", ("ink", 1.0, 1.0, None, "")),
    ("<lora:ink:0.7>", ("ink", 0.7, 0.7, None, "")),             # te, unet = te
    ("<lora:ink:0.7:0.2>", ("ink", 0.7, 0.2, None, "")),         # te, unet
    ("<lora:ink:0.7:0.2:8>", ("ink", 0.7, 0.2, 8, "")),          # te, unet, dyn
    ("<lora:ink:te=0.3>", ("ink", 0.3, 0.3, None, "")),          # named te: unet follows
    ("<lora:ink:unet=0.4>", ("ink", 1.0, 0.4, None, "")),
    ("<lora:ink:0.5:unet=0.9>", ("ink", 0.5, 0.9, None, "")),
    ("<lora:ink:unet=0.9:te=0.1:dyn=4>", ("ink", 0.1, 0.9, 4, "")),
    ("<lora:ink:0.5:0.5:te=0.2>", ("ink", 0.2, 0.5, None, "")),  # named wins over positional
    ("<lora:ink:1:lbw=OUTALL>", ("ink", 1.0, 1.0, None, "OUTALL")),
    ("<lyco:ink:0.6>", ("ink", 0.6, 0.6, None, "")),
    ("<lyco:ink:0.6:0.3:dyn=2>", ("ink", 0.6, 0.3, 2, "")),
    ("<lora:ink::0.4>", ("ink", 1.0, 0.4, None, "")),            # empty te keeps its default
])
def test_every_tag_form(tag, want):
    assert _tag(f"a photo, {tag} of a cat") == want


def test_tags_removed_from_prompt_text():
    text, entries = strip_prompt_loras("a <lyco:ink:0.6> photo, <lora:cat:te=1:unet=0.5> of <lora:x:1:lbw=1,0,1> x")
    assert text == "a photo, of x"
    assert [e.name for e in entries] == ["ink", "cat", "x"]


@pytest.mark.parametrize("tag,match", [
    ("<lora:ink:abc>", "not a number"),
    ("<lora:ink:te=x>", "not a number"),
    ("<lora:ink:1:1:dyn=1.5>", "whole number"),
    ("<lora:ink:1:start=3>", "unknown named argument"),
    ("<lora:ink:1:1:1:1>", "expected <lora:name"),
    ("<lora::1>", "names no LoRA"),
])
def test_bad_tags_name_node_input_and_tag(tag, match):
    with pytest.raises(NodeInputError, match=match) as e:
        strip_prompt_loras(f"x {tag}", node="LoraLabSampler", input_name="prompt")
    assert "LoraLabSampler" in str(e.value) and "'prompt'" in str(e.value) and tag in str(e.value)


def test_stack_text_takes_every_tag_form():
    got = parse_stack_text("<lyco:a:0.5>\n<lora:b:te=0.1:unet=0.9>\n<lora:c:1:lbw=INS>\nd:0.3")
    assert got == [StackEntry("a", 0.5, 0.5), StackEntry("b", 0.9, 0.1), StackEntry("c", 1.0, 1.0, "INS"),
                   StackEntry("d", 0.3, 0.3)]


@pytest.fixture(scope="module")
def h():
    return make_handle("sd1", seed=21)


@pytest.fixture
def loras(tmp_path, h):
    folder = tmp_path / "models" / "loras"
    (folder / "style").mkdir(parents=True)
    (folder / "old").mkdir()
    (folder / "a" / "b").mkdir(parents=True)
    save_file(kohya(h, rank=2, seed=2), folder / "style" / "ink.safetensors")
    save_file(kohya(h, rank=2, seed=3), folder / "a" / "b" / "deep.safetensors",
              metadata={"ss_output_name": "animeoutlineV4_16"})
    save_file(kohya(h, rank=2, seed=4), folder / "style" / "twin.safetensors")
    save_file(kohya(h, rank=2, seed=5), folder / "old" / "twin.safetensors")
    save_file(kohya(h, rank=2, seed=6), folder / "x1.safetensors", metadata={"ss_output_name": "shared"})
    save_file(kohya(h, rank=2, seed=7), folder / "x2.safetensors", metadata={"ss_output_name": "shared"})
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield folder


def test_lookup_by_path_by_file_name_and_by_alias(loras):
    ink = (loras / "style" / "ink.safetensors").resolve()
    assert resolve_lora("style/ink.safetensors") == ink
    assert resolve_lora("style/ink") == ink
    assert resolve_lora("ink") == ink  # A1111: the file name anywhere under the folder
    assert resolve_lora("ink.safetensors") == ink
    assert resolve_lora("deep") == (loras / "a" / "b" / "deep.safetensors").resolve()
    assert resolve_lora("animeoutlineV4_16") == (loras / "a" / "b" / "deep.safetensors").resolve()  # ss_output_name
    assert resolve_lora("old/twin") == (loras / "old" / "twin.safetensors").resolve()


def test_ambiguous_names_list_the_candidates(loras):
    with pytest.raises(ModelPathError, match="ambiguous") as e:
        resolve_lora("twin")
    assert "old/twin.safetensors" in str(e.value) and "style/twin.safetensors" in str(e.value)
    with pytest.raises(ModelPathError, match="ss_output_name") as e:
        resolve_lora("shared")
    assert "x1.safetensors" in str(e.value) and "x2.safetensors" in str(e.value)
    with pytest.raises(ModelPathError, match="not found"):
        resolve_lora("nothing")
    with pytest.raises(ModelPathError, match="leaves the loras folder"):
        resolve_lora("../ink")


def test_prompt_tag_by_bare_name_and_alias_reaches_the_model(loras, h):
    _, entries = strip_prompt_loras("a <lora:ink:0.5> <lyco:animeoutlineV4_16:te=0:unet=0.7> b")
    out, _, _ = LoraLabLoraStack().stack(h, "\n".join(f"<lora:{e.name}:{e.strength_text}:{e.strength_unet}>"
                                                       for e in entries))
    assert [(p.name, p.strength_text, p.strength_unet) for p in out.patches] == [
        ("ink", 0.5, 0.5), ("animeoutlineV4_16", 0.0, 0.7)]
    with pytest.raises(NodeInputError, match="ambiguous"):
        LoraLabLoraLoader().load(h, "twin", 1.0, 1.0)


def test_per_tag_lbw_overrides_the_node_vector(loras, h):
    from lora_lab.nodes.lora import patcher

    out, _, _ = LoraLabLoraStack().stack(h, "<lora:ink:1:lbw=OUTALL>\n<lora:deep:1>", block_weights="INALL")
    assert out.patches[0].block_weights == parse_block_weights("OUTALL", "sd1")
    assert out.patches[1].block_weights == parse_block_weights("INALL", "sd1")
    assert patcher.plan(out)  # both apply
    with pytest.raises(NodeInputError, match="lbw=1,2"):
        LoraLabLoraStack().stack(h, "<lora:ink:1:lbw=1,2>")


def test_lbw_presets_are_the_extensions_defaults():
    # sd-webui-lora-block-weight, DEF_WEIGHT_PRESET (17 values: BASE, IN01..IN08, MID, OUT03..OUT11)
    ext = {"NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0", "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
           "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
           "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0", "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
           "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0", "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
           "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1", "ALL0.5": ",".join(["0.5"] * 17)}
    assert PRESETS["sd"] == ext
    ins = dict(parse_block_weights("INS", "sd1"))
    assert ins["IN04"] == 1.0 and ins["IN05"] == 0.0
    outd = dict(parse_block_weights("OUTD", "sd1"))
    assert outd["MID"] == 0.0 and outd["OUT03"] == 1.0 and outd["OUT06"] == 1.0 and outd["OUT07"] == 0.0


def test_civitai_trained_words_reach_the_trigger_output(loras, h):
    (loras / "style" / "ink.civitai.info").write_text(json.dumps(
        {"id": 1, "name": "v1", "trainedWords": ["inkstyle", " monochrome ", ""], "baseModel": "SD 1.5"}))
    _, words = LoraLabLoraLoader().load(h, "ink", 1.0, 1.0)
    assert words == "inkstyle, monochrome"
    (loras / "style" / "ink.civitai.info").write_text("{not json")
    _, words = LoraLabLoraLoader().load(h, "ink", 1.0, 1.0)
    assert words == ""
