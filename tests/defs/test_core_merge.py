"""ComfyUI's model merging nodes in the runner: ComfyUI's patch formula key by key on tiny models,
inputs untouched, LoRAs before and after a merge, and (COMFYUI_DIR) the strengths ComfyUI's own
nodes give each key and its calculate_weight arithmetic."""
from __future__ import annotations

import importlib

import pytest
import torch
from comfy_env import comfy_modules_or_skip
from conftest import make_handle
from lora_lab.nodes.defs import core_loaders as cload
from lora_lab.nodes.defs import core_merge as cm
from lora_lab.nodes.io import notices, paths
from lora_lab.nodes.lora.patcher import activate, restore
from lora_lab.nodes.merge.model_merge import blend, clip_keys, unet_keys
from lora_lab.nodes.model.runner_types import ClipHandle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unet_sd(h):
    activate(h)
    return {k: v.clone() for k, v in h.unet.state_dict().items()}


def te_sd(h, i=0):
    activate(h)
    return {k: v.clone() for k, v in h.text_encoders[i].state_dict().items()}


@pytest.fixture(scope="module")
def pair(tiny_handles):
    return tiny_handles["sd1"], make_handle("sd1", seed=11)


def ldm(h):
    return {d: n for n, d in unet_keys(h.unet).items()}  # diffusers key -> LDM key


def block_r(k):
    """ModelMergeBlocks(input 0.2, middle 0.5, out 0.9): 'out' covers output_blocks too, the rest take input's."""
    return 0.5 if k.startswith("middle") else 0.9 if k.startswith("out") else 0.2


@pytest.mark.parametrize("node,args,formula", [
    ("ModelMergeSimple", (0.3,), lambda a, b, k: a * 0.3 + (1.0 - 0.3) * b),
    ("ModelMergeSimple", (1.0,), lambda a, b, k: a),
    ("ModelMergeSimple", (0.0,), lambda a, b, k: a * 0.0 + 1.0 * b),
    ("ModelMergeSubtract", (0.7,), lambda a, b, k: a * 0.7 + (-0.7) * b),
    ("ModelMergeAdd", (), lambda a, b, k: a + 1.0 * b),
    ("ModelMergeBlocks", (0.2, 0.5, 0.9), lambda a, b, k: a * block_r(k) + (1.0 - block_r(k)) * b),
])
def test_merge_nodes_follow_comfyuis_patch_formula(pair, node, args, formula):
    m1, m2 = pair
    before1, before2 = unet_sd(m1), unet_sd(m2)
    (merged,) = getattr(cm, node)().merge(m1, m2, *args)
    assert merged.unet is not m1.unet and merged.patches == () and merged.text_encoders == m1.text_encoders
    got, names = unet_sd(merged), ldm(m1)
    assert set(got) == set(before1)
    for k, w in got.items():
        want = formula(before1[k].float(), before2[k].float(), names[k]) if (node, args) != ("ModelMergeSimple", (1.0,)) \
            else before1[k]
        assert torch.equal(w, want.to(w.dtype)), k
    assert all(torch.equal(v, before1[k]) for k, v in unet_sd(m1).items())  # the inputs are untouched
    assert all(torch.equal(v, before2[k]) for k, v in unet_sd(m2).items())


def test_blocks_cover_every_key_as_comfyui_names_them(pair):
    names = set(unet_keys(pair[0].unet))
    assert {n.split(".")[0] for n in names} >= {"input_blocks", "middle_block", "output_blocks", "out", "time_embed"}


def test_loras_before_and_after_a_merge(lora_dir, pair):
    m1, m2 = pair
    (m1_lora,) = cload.LoraLoaderModelOnly().load_lora_model_only(m1, "fox.safetensors", 0.8)
    patched = unet_sd(m1_lora)
    (merged,) = cm.ModelMergeSimple().merge(m1_lora, m2, 0.6)  # model 1's LoRA is baked in first
    theirs = unet_sd(m2)
    got = unet_sd(merged)
    assert all(torch.equal(got[k], (patched[k] * 0.6 + 0.4 * theirs[k]).to(got[k].dtype)) for k in got)
    (after,) = cload.LoraLoaderModelOnly().load_lora_model_only(merged, "fox.safetensors", 1.0)
    on_merged = unet_sd(after)
    (plain,) = cload.LoraLoaderModelOnly().load_lora_model_only(m1, "fox.safetensors", 1.0)
    delta_plain = {k: v - w for (k, v), w in zip(unet_sd(plain).items(), unet_sd(m1).values())}
    changed = [k for k, d in delta_plain.items() if d.abs().max() > 0]
    assert changed and all(torch.allclose(on_merged[k] - got[k], delta_plain[k], atol=1e-6) for k in changed)
    assert all(torch.equal(on_merged[k], got[k]) for k in got if k not in changed)
    restore(m1)


def test_clip_merge_simple_and_a_lora_on_the_merged_clip(lora_dir, pair):
    m1, m2 = pair
    c1, c2 = ClipHandle(m1, -2), ClipHandle(m2)
    a, b = te_sd(m1), te_sd(m2)
    (merged,) = cm.CLIPMergeSimple().merge(c1, c2, 0.25)
    assert merged.clip_layer == -2 and merged.handle.unet is m1.unet
    got = te_sd(merged.handle)
    for k, w in got.items():
        want = a[k] if k.endswith((".position_ids", ".logit_scale")) else (a[k].float() * 0.25 + 0.75 * b[k].float())
        assert torch.equal(w, want.to(w.dtype)), k
    (sub,) = cm.CLIPMergeSubtract().merge(c1, c2, 2.0)
    key = next(iter(clip_keys(m1)[0].values()))
    assert torch.equal(te_sd(sub.handle)[key], a[key] * 2.0 + (-2.0) * b[key])
    # a LoRA on the merged CLIP patches the merged encoder, never clip 1's (the patcher keys on both)
    _, lora_clip = cload.LoraLoader().load_lora(m1, merged, "fox.safetensors", 0.0, 1.0)
    patched = te_sd(lora_clip.handle)
    assert any(not torch.equal(patched[k], got[k]) for k in got)
    assert all(torch.equal(v, a[k]) for k, v in te_sd(m1).items())
    assert all(torch.equal(v, got[k]) for k, v in te_sd(merged.handle).items())


def test_mismatched_shapes_are_scaled_not_merged_with_a_warning(tiny_handles):
    sd1, sd2 = tiny_handles["sd1"], tiny_handles["sd2"]
    a, b = unet_sd(sd1), unet_sd(sd2)
    with notices.collect() as notes:
        (merged,) = cm.ModelMergeSimple().merge(sd1, sd2, 0.5)
    got = unet_sd(merged)
    odd = [k for k in a if k in b and a[k].shape != b[k].shape]
    assert odd and all(torch.equal(got[k], a[k] * 0.5) for k in odd)
    assert len(notes) == 1 and "not merged" in notes[0] and f"{len(odd)} weight(s)" in notes[0]


def test_blend_keeps_the_dtype():
    w1, w2 = torch.randn(4, 4).half(), torch.randn(4, 4).half()
    out = blend(w1, w2, 0.5, 0.5, "k")
    assert out.dtype == torch.float16 and torch.equal(out, (w1.float() * 0.5 + 0.5 * w2.float()).half())


# -- against ComfyUI's own nodes (COMFYUI_DIR) --------------------------------------------------------
@pytest.fixture(scope="module")
def comfy_merging():
    return tuple(comfy_modules_or_skip("comfy_extras.nodes_model_merging", "comfy.lora"))


class _Recorder:
    """What ComfyUI's merge nodes use of a ModelPatcher: clone, get_key_patches, add_patches."""

    def __init__(self, keys, prefix):
        self.keys, self.prefix, self.added = keys, prefix, {}

    def clone(self):
        return _Recorder(self.keys, self.prefix)

    def get_key_patches(self, filter_prefix=None):
        return {self.prefix + k: (k,) for k in self.keys if filter_prefix is None or (self.prefix + k).startswith(filter_prefix)}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        for k in patches:
            self.added[k[len(self.prefix):]] = (strength_patch, strength_model)


@pytest.mark.parametrize("node,args", [("ModelMergeSimple", (0.3,)), ("ModelMergeSubtract", (0.7,)),
                                       ("ModelMergeAdd", ()), ("ModelMergeBlocks", (0.2, 0.5, 0.9))])
def test_strengths_per_key_equal_comfyuis_nodes(comfy_merging, pair, node, args, monkeypatch):
    from lora_lab.nodes.merge import model_merge

    nodes_mod, _ = comfy_merging
    keys = list(unet_keys(pair[0].unet))
    cls = {"ModelMergeSubtract": "ModelSubtract", "ModelMergeAdd": "ModelAdd"}.get(node, node)
    rec = _Recorder(keys, "diffusion_model.")
    kw = dict(zip(("input", "middle", "out"), args)) if node == "ModelMergeBlocks" else {}
    (theirs,) = getattr(nodes_mod, cls)().merge(rec, rec, **kw) if kw else getattr(nodes_mod, cls)().merge(rec, rec, *args)
    seen = {}
    monkeypatch.setattr(model_merge, "merge_unets", lambda m1, m2, ratios: seen.update({k: ratios(k) for k in keys}))
    getattr(cm, node)().merge(pair[0], pair[1], *args)
    assert seen == theirs.added


def test_clip_merge_skips_what_comfyui_skips(comfy_merging, pair, monkeypatch):
    nodes_mod, _ = comfy_merging
    keys = [k for names in clip_keys(pair[0]) for k in names]
    full = keys + ["clip_l.transformer.text_model.embeddings.position_ids", "clip_l.logit_scale"]
    rec = _Recorder(full, "")
    (theirs,) = nodes_mod.CLIPMergeSimple().merge(rec, rec, 0.4)
    assert set(theirs.added) == set(keys) and all(v == (1.0 - 0.4, 0.4) for v in theirs.added.values())


@pytest.mark.parametrize("sp,sm", [(0.7, 0.3), (-2.0, 2.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_blend_equals_comfyuis_calculate_weight(comfy_merging, sp, sm):
    _, comfy_lora = comfy_merging
    g = torch.Generator().manual_seed(5)
    w1, w2 = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    want = comfy_lora.calculate_weight([(sp, (w2,), sm, None, None)], w1.clone(), "k")
    assert torch.equal(blend(w1, w2, sp, sm, "k"), want)


def _specific_ratios(cls):
    return {k: round(0.05 * (i % 20), 2) for i, k in enumerate(cls.RATIOS)}


@pytest.mark.parametrize("node,family", [("ModelMergeSD1", "sd1"), ("ModelMergeSD2", "sd2"), ("ModelMergeSDXL", "sdxl")])
def test_model_specific_block_merges(tiny_handles, node, family, monkeypatch):
    from lora_lab.nodes.merge import model_merge

    cls = getattr(cm, node)
    ratios = _specific_ratios(cls)
    h = tiny_handles[family]
    seen = {}
    monkeypatch.setattr(model_merge, "merge_unets", lambda m1, m2, fn: seen.update({k: fn(k) for k in unet_keys(h.unet)}))
    cls().merge(h, h, **ratios)
    for k, (sp, sm) in seen.items():
        hits = [p for p in ratios if k.startswith(p)]
        r = ratios[max(hits, key=len)] if hits else ratios["time_embed."]
        assert (sp, sm) == (1.0 - r, r), k
    if family == "sdxl":
        assert seen["label_emb.0.0.weight"] == (1.0 - ratios["label_emb."], ratios["label_emb."])


@pytest.mark.parametrize("node,family", [("ModelMergeSD1", "sd1"), ("ModelMergeSDXL", "sdxl")])
def test_model_specific_strengths_equal_comfyuis(comfy_merging, tiny_handles, node, family, monkeypatch):
    from lora_lab.nodes.merge import model_merge

    specific = importlib.import_module("comfy_extras.nodes_model_merging_model_specific")
    h = tiny_handles[family]
    keys = list(unet_keys(h.unet))
    ratios = _specific_ratios(getattr(cm, node))
    assert list(getattr(specific, node).INPUT_TYPES()["required"]) == ["model1", "model2", *ratios]
    rec = _Recorder(keys, "diffusion_model.")
    (theirs,) = getattr(specific, node)().merge(rec, rec, **ratios)
    seen = {}
    monkeypatch.setattr(model_merge, "merge_unets", lambda m1, m2, fn: seen.update({k: fn(k) for k in keys}))
    getattr(cm, node)().merge(h, h, **ratios)
    assert seen == theirs.added


def test_merge_and_sampling_graph_through_the_runner(tmp_path, tiny_handles):
    """Two checkpoints -> ModelMergeSD1 (every per-block ratio as ComfyUI's UI queues it) / CLIPMergeSimple ->
    ModelSamplingDiscrete -> KSampler -> LatentComposite -> VAEDecode -> ImagePadForOutpaint -> SaveImage,
    headless through the executor and the runner registry."""
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS
    from lora_lab.nodes.graph.executor import Executor
    from lora_lab.nodes.model import checkpoint_save

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    checkpoint_save.save_single_file(models / "checkpoints" / "a.safetensors", tiny_handles["sd1"])
    checkpoint_save.save_single_file(models / "checkpoints" / "b.safetensors", make_handle("sd1", seed=11))
    ratios = {k: 0.5 for k in cm.ModelMergeSD1.RATIOS}
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "ModelMergeSD1", "inputs": {"model1": ["1", 0], "model2": ["2", 0], **ratios}},
        "4": {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.3}},
        "5": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["3", 0], "sampling": "v_prediction",
                                                                "zsnr": True}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 0], "text": "a fox"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 0], "text": ""}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "karras", "positive": ["6", 0],
                                                   "negative": ["7", 0], "latent_image": ["8", 0], "denoise": 1.0}},
        "10": {"class_type": "LatentComposite", "inputs": {"samples_to": ["8", 0], "samples_from": ["9", 0],
                                                           "x": 16, "y": 16, "feather": 8}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["11", 0], "left": 8, "top": 0, "right": 8,
                                                               "bottom": 16, "feathering": 4}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "merged"}},
    }
    with paths.standalone_dirs(models, tmp_path / "out"):
        res = Executor(RUNNER_CLASS_MAPPINGS, quiet=True).run(graph, name="g")
    assert res.ok, res.error
    from PIL import Image

    assert len(res.files) == 1 and Image.open(res.files[0]).size == (64 + 16, 64 + 16)
