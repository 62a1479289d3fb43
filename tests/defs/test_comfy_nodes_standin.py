"""The MODEL/CLIP LoRA nodes on a stand-in of ComfyUI's ModelPatcher (fake_comfy.py): the
weights ComfyUI would sample with equal those our own patcher gives, bit for bit, for every
family and format; inputs are never changed; the errors are our nodes' errors."""
from __future__ import annotations

import json

import fake_comfy
import pytest
import torch
from conftest import make_handle
from lora_factory import kohya, peft_unet, unet_layers
from lora_lab.nodes.defs import comfy_patches
from lora_lab.nodes.defs.comfy_lora_nodes import (
    LoraLabLoraLoaderModelClip,
    LoraLabLoraStackModelClip,
    LoraLabPromptLoraTags,
)
from lora_lab.nodes.defs.node_defs import LoraLabLoraStack
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.lora import patcher
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def comfy(monkeypatch):
    fake_comfy.install(monkeypatch)
    comfy_patches.patch_class.cache_clear()
    yield
    comfy_patches.patch_class.cache_clear()


@pytest.fixture(scope="module")
def handles():
    return {f: make_handle(f, seed=40 + i) for i, f in enumerate(("sd1", "sd2", "sdxl"))}


def dora(handle, seed=5, row_wise=True):
    """kohya names + dora_scale on the attention layers (row or column magnitudes)."""
    sd = kohya(handle, rank=4, alpha=4.0, seed=seed, with_te=False)
    g = torch.Generator().manual_seed(seed)
    for name, mod in unet_layers(handle):
        o, i = mod.weight.shape[:2]
        shape = (o, 1) if row_wise else (1, i)
        sd["lora_unet_" + name.replace(".", "_") + ".dora_scale"] = torch.rand(shape, generator=g) + 0.5
    return sd


@pytest.fixture
def loras(tmp_path, handles):
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    for fam, h in handles.items():
        meta = {"ss_tag_frequency": json.dumps({"1_x": {f"{fam}word": 3}})}
        save_file(kohya(h, rank=4, seed=1, ldm_names=(fam == "sdxl")), folder / f"{fam}_kohya.safetensors", metadata=meta)
        save_file(peft_unet(h, rank=4, seed=2), folder / f"{fam}_peft.safetensors")
        save_file(dora(h, row_wise=True), folder / f"{fam}_dora_row.safetensors")
        save_file(dora(h, seed=6, row_wise=False), folder / f"{fam}_dora_col.safetensors")
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield folder


def ours(h, stack_text):
    """Our LORA_LAB_MODEL path: Stack LoRAs, then our patcher's weights under ComfyUI's names."""
    model, _, _ = LoraLabLoraStack().stack(h, stack_text)
    patcher.activate(model)
    try:
        unet, clip = fake_comfy.comfy_state_dicts(model)
        return {k: v.clone() for k, v in unet.items()}, {k: v.clone() for k, v in clip.items()}
    finally:
        patcher.restore(model)


def bit_diff(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_stack_on_model_clip_equals_our_patcher(family, handles, loras):
    h = handles[family]
    text = f"{family}_kohya:0.8:0.6\n{family}_peft:0.5\n# {family}_dora_col\n{family}_dora_row:0.7"
    want_unet, want_clip = ours(h, text)
    model, clip = fake_comfy.comfy_objects(h)
    base_unet = {k: v.clone() for k, v in model.model.state_dict().items()}
    new_model, new_clip, stack, words = LoraLabLoraStackModelClip().stack(model, text, clip=clip)
    assert stack == [(f"{family}_kohya", 0.8, 0.6), (f"{family}_peft", 0.5, 0.5), (f"{family}_dora_row", 0.7, 0.7)]
    assert words == f"{family}word"
    assert new_model is not model and new_clip is not clip and model.patches == {} and clip.patcher.patches == {}
    got_unet, got_clip = new_model.patched_state_dict(), new_clip.patcher.patched_state_dict()
    assert not bit_diff(got_unet, want_unet)
    assert not bit_diff(got_clip, want_clip)
    changed = [k for k in got_unet if not torch.equal(got_unet[k], base_unet[k])]
    assert len(changed) == len(unet_layers(h)) and all(k.startswith("diffusion_model.") for k in changed)
    assert not bit_diff(model.model.state_dict(), base_unet)  # ComfyUI patches lazily; nothing touched


@pytest.mark.parametrize("fmt", ["kohya", "peft", "dora_col"])
def test_loader_fp16_equals_our_patcher_fp16(fmt, handles, loras):
    h = handles["sd1"]
    h16 = make_handle("sd1", seed=40)
    h16.unet.half()
    for enc in h16.text_encoders:
        enc.half()
    want_unet, want_clip = ours(h16, f"sd1_{fmt}:0.9:0.4")
    model, clip = fake_comfy.comfy_objects(h, dtype=torch.float16)
    new_model, new_clip, stack, _ = LoraLabLoraLoaderModelClip().load(model, f"sd1_{fmt}", 0.9, 0.4, clip=clip)
    assert stack == [(f"sd1_{fmt}", 0.9, 0.4)]
    assert not bit_diff(new_model.patched_state_dict(), want_unet)
    assert not bit_diff(new_clip.patcher.patched_state_dict(), want_clip)


def test_model_only_and_block_weights(handles, loras):
    h = handles["sd1"]
    model, _ = fake_comfy.comfy_objects(h)
    m1, c1, _, _ = LoraLabLoraLoaderModelClip().load(model, "sd1_peft", 1.0, 1.0)
    assert c1 is None and len(m1.patches) == len(unet_layers(h))
    # block weights: the same multipliers as our nodes (here: only the output blocks)
    want_unet, _ = ours(h, "sd1_kohya")  # full strength, for reference
    m2, _, _, _ = LoraLabLoraLoaderModelClip().load(model, "sd1_kohya", 1.0, 1.0, block_weights="OUTALL")
    got = m2.patched_state_dict()
    base = model.model.state_dict()
    for k in got:
        moved = not torch.equal(got[k], base[k])
        assert moved == (k.startswith("diffusion_model.output_blocks.") and not torch.equal(want_unet[k], base[k]))


def test_prompt_tags_node(handles, loras):
    h = handles["sd2"]
    model, clip = fake_comfy.comfy_objects(h)
    m, c, text, _ = LoraLabPromptLoraTags().apply(model, clip, "a photo <lora:sd2_kohya:0.6:1.2>, sharp")
    assert text == "a photo , sharp"  # the tag is cut out, runs of spaces become one (as for our Sample)
    want_unet, want_clip = ours(h, "<lora:sd2_kohya:0.6:1.2>")
    assert not bit_diff(m.patched_state_dict(), want_unet)
    assert not bit_diff(c.patcher.patched_state_dict(), want_clip)
    m0, c0, text0, _ = LoraLabPromptLoraTags().apply(model, clip, "no tags")
    assert (m0, c0, text0) == (model, clip, "no tags")


def test_errors_are_our_nodes_errors(handles, loras):
    model, clip = fake_comfy.comfy_objects(handles["sd1"])
    with pytest.raises(NodeInputError, match=r"LoraLabLoraLoaderModelClip: input 'lora_name' = 'sdxl_kohya'.*SDXL"):
        LoraLabLoraLoaderModelClip().load(model, "sdxl_kohya", 1.0, 1.0, clip=clip)
    with pytest.raises(NodeInputError, match="LoraLabLoraStackModelClip: input 'loras'.*not found"):
        LoraLabLoraStackModelClip().stack(model, "nope", clip=clip)
    with pytest.raises(NodeInputError, match="lora_stack"):
        LoraLabLoraStackModelClip().stack(model, "", clip=clip, lora_stack=[("a", "x")])
    assert model.patches == {} and clip.patcher.patches == {}


def test_runner_reports_the_bridges_as_needing_comfyui():
    from lora_lab.nodes.defs.runner_registry import (
        RUNNER_CLASS_MAPPINGS as NODE_CLASS_MAPPINGS,
    )
    from lora_lab.nodes.graph.graph_validate import (
        COMFYUI_TYPED_NODES,
        GraphValidationError,
        validate_graph,
    )

    # headless: the LoRA nodes run on the runner's MODEL / CLIP, the bridges need ComfyUI's objects
    assert COMFYUI_TYPED_NODES - set(NODE_CLASS_MAPPINGS) == {"LoraLabFromComfy", "LoraLabToComfy"}
    prompt = {"1": {"class_type": "LoraLabToComfy", "inputs": {"model": ["2", 0]}},
              "2": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": "lora-lab-demo-sd15.safetensors"}}}
    with pytest.raises(GraphValidationError) as err:
        validate_graph(prompt, NODE_CLASS_MAPPINGS)
    problems = err.value.problems
    mine = [p for p in problems if p.node_id == "1"]
    assert [p.kind for p in mine] == ["comfyui_only"] and "MODEL / CLIP" in str(mine[0])
    assert problems == mine


def test_runner_path_matches_the_runners_lora_loader(handles, loras):
    """Headless, MODEL / CLIP are the runner's ModelHandle / ClipHandle: the stack is split into
    the UNet part (MODEL) and the text part (CLIP) exactly as its core LoraLoader splits a LoRA."""
    from lora_lab.nodes.defs.core_loaders import LoraLoader
    from lora_lab.nodes.model.runner_types import ClipHandle

    h = handles["sd1"]
    clip = ClipHandle(h, -2)
    m1, c1, stack, words = LoraLabLoraStackModelClip().stack(h, "sd1_kohya:0.8:0.6\nsd1_peft:0.5", clip=clip)
    m2, c2 = LoraLoader().load_lora(h, clip, "sd1_kohya", 0.8, 0.6)
    m2, c2 = LoraLoader().load_lora(m2, c2, "sd1_peft", 0.5, 0.5)
    sig = lambda hd: [(p.name, p.strength_unet, p.strength_text, p.block_weights) for p in hd.patches]
    assert sig(m1) == sig(m2) and sig(c1.handle) == sig(c2.handle) and c1.clip_layer == -2
    assert stack == [("sd1_kohya", 0.8, 0.6), ("sd1_peft", 0.5, 0.5)] and words == "sd1word"
    assert h.patches == () and clip.handle.patches == ()
    m3, c3, _, _ = LoraLabLoraLoaderModelClip().load(h, "sd1_kohya", 1.0, 1.0)  # model only
    assert c3 is None and sig(m3) == [("sd1_kohya", 1.0, 0.0, None)]
