"""Merge to Checkpoint: streamed single files equal base + stack (our loader and diffusers'),
merged outputs equal patched outputs, metadata, extra keys, atomic writes, node and CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_diffusers_config_folder
from lora_factory import ATTN, FF, kohya
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_lab.nodes.cli import main as cli
from lora_lab.nodes.merge import merge
from lora_lab.nodes.lora import patcher
from lora_lab.nodes.io import paths
from lora_lab.nodes.model.checkpoint import load_diffusers_folder, load_single_file
from lora_lab.nodes.io.errors import CheckpointError, NodeInputError
from lora_lab.nodes.lora.lora_formats import parse_state_dict
from lora_lab.nodes.io.destination import Destination
from lora_lab.nodes.defs.node_defs import NODE_CLASS_MAPPINGS
from lora_lab.nodes.defs.nodes_merge import LoraLabMergeToCheckpoint

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def openclip_lora(handle, comp_index: int, rank: int = 3, seed: int = 5) -> dict:
    """A LoRA on the fused OpenCLIP in_proj of text layer 0 (q/k/v rows of one adapter)."""
    g = torch.Generator().manual_seed(seed)
    width = handle.text_encoders[comp_index].config.hidden_size
    pre = {"sd2": "lora_te1_", "sdxl": "lora_te2_"}[handle.family]
    base = pre + "transformer_resblocks_0_attn_in_proj"
    return {base + ".lora_down.weight": torch.randn(rank, width, generator=g) * 0.1,
            base + ".lora_up.weight": torch.randn(3 * width, rank, generator=g) * 0.1,
            base + ".alpha": torch.tensor(2.0)}


def stack_for(h):
    """Two LoRAs: kohya (LDM names on SDXL) with negative text strength, plus an OpenCLIP-named one."""
    a = kohya(h, rank=4, alpha=2.0, ldm_names=(h.family == "sdxl"), unet_suffixes=ATTN + FF + ("proj_in",),
              te_suffixes=("q_proj", "v_proj", "fc1", "out_proj"), seed=1)
    patches = [patcher.LoraPatch("a.safetensors", parse_state_dict(a, name="a"), 0.7, -0.5)]
    b = kohya(h, rank=2, alpha=None, seed=2, with_te=False)
    if h.family != "sd1":
        b.update(openclip_lora(h, 1 if h.family == "sdxl" else 0))
    patches.append(patcher.LoraPatch("b.safetensors", parse_state_dict(b, name="b"), -1.2, 0.8))
    return h.with_patches(tuple(patches))


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    """{family: handle loaded from its tiny file (own modules)}; weights restored afterwards."""
    out = {f: load_single_file(p) for f, p in tiny_checkpoints.items()}
    yield out
    for h in out.values():
        patcher.release(h)


def patched_state(h) -> dict:
    patcher.activate(h)
    return {f"{i}.{k}": v.clone() for i, m in enumerate((h.unet, h.vae, *h.text_encoders))
            for k, v in m.state_dict().items()}


def state(h) -> dict:
    return {f"{i}.{k}": v for i, m in enumerate((h.unet, h.vae, *h.text_encoders)) for k, v in m.state_dict().items()}


def differing(a: dict, b: dict, cast=None) -> list:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k].to(cast) if cast and a[k].is_floating_point() else a[k], b[k])]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_streamed_merge_equals_base_plus_stack(family, loaded, tmp_path):
    hp = stack_for(loaded[family])
    out = merge.merge_checkpoint(hp, Destination(tmp_path / "m.safetensors"), progress=False)
    want = patched_state(hp)
    assert differing(want, state(load_single_file(out))) == []  # fp32 file: bit-exact
    # fp16 output: the patched fp32 weights rounded once
    out16 = merge.merge_checkpoint(hp, Destination(tmp_path / "m16.safetensors"), dtype="fp16", progress=False)
    assert differing(want, state(load_single_file(out16, dtype=torch.float16)), cast=torch.float16) == []
    with safe_open(str(out16), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} <= {"F16", "I64"}


def test_half_precision_source_to_fp32(loaded, tmp_path):
    """An fp16 file merged to fp32: every patched tensor goes through the reused fp32 scratch."""
    from lora_lab.nodes.model.checkpoint_save import save_single_file

    src = save_single_file(tmp_path / "half.safetensors", loaded["sdxl"], dtype=torch.float16)
    h = load_single_file(src)  # fp32 modules holding the fp16 values exactly
    hp = h.with_patches(stack_for(loaded["sdxl"]).patches)
    out = merge.merge_checkpoint(hp, Destination(tmp_path / "m.safetensors"), dtype="fp32", progress=False)
    assert differing(patched_state(hp), state(load_single_file(out))) == []
    patcher.release(h)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_from_single_file_loads_the_merge(family, loaded, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    hp = stack_for(loaded[family])
    out = merge.merge_checkpoint(hp, Destination(tmp_path / "m.safetensors"), dtype="bf16", progress=False)
    cfg = write_diffusers_config_folder(tmp_path / "config", hp)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_single_file(str(out), config=str(cfg), local_files_only=True, torch_dtype=torch.float32)
    want = patched_state(hp)
    theirs = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    got = {f"{i}.{k}": v for i, m in enumerate(theirs) for k, v in m.state_dict().items() if "position_ids" not in k}
    want = {k: v.to(torch.bfloat16).float() for k, v in want.items() if k in got}
    assert differing(want, got) == []


def test_merged_model_outputs_equal_patched(loaded, tmp_path):
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

    hp = stack_for(loaded["sd1"])
    merged = load_single_file(merge.merge_checkpoint(hp, Destination(tmp_path / "m.safetensors"), progress=False))
    patcher.activate(hp)
    # the promise is bit-identical weights; outputs of the two copies agree to fp32 rounding only
    # (CPU GEMM results depend on the tensors' memory alignment)
    for ours, theirs in [(hp.unet, merged.unet), (hp.vae, merged.vae), (hp.text_encoders[0], merged.text_encoders[0])]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s = SampleSettings("a cat", "blurry", seed=3, steps=1, cfg=5.0, width=64, height=64)
    torch.testing.assert_close(generate(hp, s), generate(merged, s), rtol=0, atol=1e-5)
    patcher.activate(hp)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    torch.testing.assert_close(hp.unet(x, t, ctx).sample, merged.unet(x, t, ctx).sample, rtol=0, atol=1e-5)


def test_header_only_skeleton_gives_the_same_file(loaded, tiny_checkpoints, tmp_path):
    hp = stack_for(loaded["sdxl"])
    skel = merge.skeleton_handle(tiny_checkpoints["sdxl"])
    assert skel.unet.device.type == "meta" and skel.family == "sdxl"
    a = merge.merge_checkpoint(hp, Destination(tmp_path / "a.safetensors"), progress=False)
    b = merge.merge_checkpoint(skel.with_patches(hp.patches), Destination(tmp_path / "b.safetensors"), progress=False)
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_metadata_extra_keys_and_module_fallback(loaded, tiny_handles, tmp_path):
    sd = load_file(loaded["sd1"].source)
    sd["model_ema.decay"] = torch.tensor(0.999)
    sd["model_ema.diffusion_modelout2weight"] = torch.zeros(4)
    sd["alphas_cumprod"] = torch.ones(1000)
    save_file(sd, tmp_path / "src.safetensors", metadata={"modelspec.hash_sha256": "0xstale", "prompt": "{}"})
    hp = stack_for(load_single_file(tmp_path / "src.safetensors"))
    out = merge.merge_checkpoint(hp, Destination(tmp_path / "m.safetensors"), prompt={"1": {"class_type": "X"}},
                                 extra_pnginfo={"workflow": {"nodes": [1]}}, progress=False)
    with safe_open(str(out), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {k for k in sd if not k.startswith("model_ema.")}  # the source's own layout, EMA dropped
    assert "alphas_cumprod" in keys and "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    assert meta["lora_lab.dropped_keys"].startswith("2 EMA tensors")
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.prediction_type"] == "epsilon"
    assert "modelspec.hash_sha256" not in meta
    assert json.loads(meta["prompt"]) == {"1": {"class_type": "X"}} and json.loads(meta["workflow"]) == {"nodes": [1]}
    mf = json.loads(meta["merged_from"])
    assert mf["base"] == "src.safetensors"
    assert [(r["name"], r["strength_unet"], r["strength_text"]) for r in mf["loras"]] == [
        ("a.safetensors", 0.7, -0.5), ("b.safetensors", -1.2, 0.8)]
    # a handle not backed by a file: patched modules written; same weights as streaming
    mem = stack_for(tiny_handles["sd1"])
    try:
        m2 = merge.merge_checkpoint(mem, Destination(tmp_path / "mem.safetensors"), progress=False)
        assert differing(patched_state(mem), state(load_single_file(m2))) == []
    finally:
        patcher.restore(mem)


def test_failure_mid_write_leaves_no_file(loaded, tmp_path, monkeypatch):
    hp = stack_for(loaded["sd1"])
    calls = {"n": 0}
    real = merge.apply_entries

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(merge, "apply_entries", flaky)
    for dest in (Destination(tmp_path / "m.safetensors"), Destination(folder=tmp_path / "c", stem="x")):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="disk on fire"):
            merge.merge_checkpoint(hp, dest, progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_refuses_to_overwrite_and_stale_source(loaded, tiny_checkpoints, tmp_path):
    hp = stack_for(loaded["sd1"])
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        merge.merge_checkpoint(hp, Destination(target), progress=False)
    assert target.read_bytes() == b"keep me"
    merge.merge_checkpoint(hp, Destination(target, overwrite=True), progress=False)
    assert load_file(target)
    # the source file changed after loading: refused, not merged onto other weights
    copy = tmp_path / "src.safetensors"
    copy.write_bytes(Path(tiny_checkpoints["sd1"]).read_bytes())
    h = load_single_file(copy)
    sd = load_file(copy)
    sd = {k: (v + 1 if v.is_floating_point() else v) for k, v in sd.items()}
    save_file(sd, copy)
    with pytest.raises(CheckpointError, match="no longer holds"):
        merge.merge_checkpoint(h.with_patches(hp.patches), Destination(tmp_path / "x.safetensors"), progress=False)


def test_diffusers_format(loaded, tmp_path):
    for family in ("sd1", "sd2"):
        hp = stack_for(loaded[family])
        out = merge.merge_checkpoint(hp, Destination(tmp_path / f"{family}-folder"), fmt="diffusers", progress=False)
        back = load_diffusers_folder(out)
        want = patched_state(hp)
        got = state(back)
        if family == "sd2":  # diffusers' SD 2.x layout: the unused last text layer is left out
            assert back.text_layers_dropped == 1
            last = hp.text_encoders[0].config.num_hidden_layers - 1
            want = {k: v for k, v in want.items() if f"layers.{last}." not in k}
        assert differing(want, got) == []


def test_node_counters_metadata_and_errors(loaded, tmp_path):
    hp = stack_for(loaded["sd1"])
    node = LoraLabMergeToCheckpoint()
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        r1 = node.merge(hp, "checkpoints/baked", "fp16", "single-file", prompt={"1": {}},
                        extra_pnginfo={"workflow": {}})
        r2 = node.merge(hp, "checkpoints/baked", "same", "single-file")
        with pytest.raises(NodeInputError, match="filename_prefix"):
            node.merge(hp, "../escape", "same", "single-file")
        with pytest.raises(NodeInputError, match="dtype"):
            node.merge(hp, "x", "fp8", "single-file")
    assert Path(r1["result"][0]) == tmp_path / "out" / "checkpoints" / "baked_00001_.safetensors"
    assert Path(r2["result"][0]).name == "baked_00002_.safetensors"
    assert r1["ui"]["files"] == [{"filename": "baked_00001_.safetensors", "subfolder": "checkpoints", "type": "output"}]
    with safe_open(r1["result"][0], "pt") as f:
        assert f.metadata()["workflow"] == "{}"


def test_cli_merge(loaded, tiny_checkpoints, tmp_path, capsys):
    h = loaded["sd1"]
    lora = tmp_path / "models" / "loras" / "a.safetensors"
    lora.parent.mkdir(parents=True)
    save_file(kohya(h, rank=4, seed=1), lora)
    out = tmp_path / "m.safetensors"
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", "a:0.5:0.25", "-o", str(out), "--models-dir",
            str(tmp_path / "models"), "-q"]
    assert cli.main(argv) == 0 and capsys.readouterr().out.strip() == str(out)
    hp = h.with_patches((patcher.LoraPatch("a", parse_state_dict(kohya(h, rank=4, seed=1)), 0.5, 0.25),))
    ref = load_file(merge.merge_checkpoint(hp, Destination(tmp_path / "ref.safetensors"), progress=False))
    got = load_file(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    meta = safe_open(str(out), "pt").metadata()
    assert json.loads(meta["merged_from"])["loras"][0]["sha256"] and "a.safetensors" in meta["modelspec.merged_from"]
    assert cli.main(argv) == 1 and "exists" in capsys.readouterr().err


@pytest.mark.parametrize("name,family", [("sd15", "sd1"), ("sdxl", "sdxl")])
def test_every_patchable_reference_key_has_a_slot(name, family):
    """On the full-size key lists, every UNet / text tensor maps to a module parameter."""
    from lora_lab.nodes.model import ckpt_config, ckpt_keys

    path = REFERENCE / f"{name}_checkpoint_keys.json"
    if not path.exists():
        pytest.skip(f"reference key list not found at {path}")
    shapes = {k: tuple(v[0]) for k, v in json.loads(path.read_text()).items()}
    slots = merge.source_slots(family, shapes, ckpt_config.infer_unet_config(shapes, family))
    model_keys = [k for k in shapes if k.startswith((ckpt_keys.UNET_PREFIX,) + tuple(
        p for p, _ in ckpt_keys.TEXT_PREFIXES[family])) and not ckpt_keys.is_non_model_key(k, family)]
    assert sorted(model_keys) == sorted(slots)
    fused = [s for s in slots.values() if len(s) == 3]
    assert len(fused) == (64 if family == "sdxl" else 0)  # in_proj weight + bias of 32 bigG layers
    assert all([x.rows for x in s] == [(0, 1280), (1280, 2560), (2560, 3840)] for s in fused)


def test_destination_commits_atomically(tmp_path):
    d = Destination(folder=tmp_path / "o", stem="x")
    for _ in range(2):
        with d.writing(".bin") as tmp:
            tmp.write_bytes(b"a")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x_00001_.bin", "x_00002_.bin"]
    folder = Destination(tmp_path / "f")
    with folder.writing("", is_dir=True) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError):
        Destination(tmp_path / "f").check()
    with Destination(tmp_path / "f", overwrite=True).writing("", is_dir=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "o"]  # no temp or old folders left
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["b"]


def test_graph_through_the_executor(tmp_path):
    """Load Checkpoint -> Load LoRA -> Merge to Checkpoint and Merge LoRAs -> Save LoRA, headless."""
    from lora_lab.nodes.demo.demo import DEMO_NAME, ensure_demo_checkpoint
    from lora_lab.nodes.graph.executor import Executor

    models = tmp_path / "models"
    ensure_demo_checkpoint(models / "checkpoints")
    h = merge.skeleton_handle(models / "checkpoints" / DEMO_NAME)
    (models / "loras").mkdir()
    save_file(kohya(h, rank=4, seed=3), models / "loras" / "cat.safetensors")
    graph = {
        "1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": DEMO_NAME}},
        "2": {"class_type": "LoraLabLoraLoader", "inputs": {"model": ["1", 0], "lora_name": "cat.safetensors",
                                                            "strength_unet": 0.8, "strength_text": 0.5}},
        "3": {"class_type": "LoraLabMergeToCheckpoint", "inputs": {
            "model": ["2", 0], "filename_prefix": "checkpoints/cat", "dtype": "fp16", "format": "single-file"}},
        "4": {"class_type": "LoraLabMergeLoras", "inputs": {
            "model": ["2", 0], "mode": "exact", "rank": 8, "conv_rank": 0}},
        "5": {"class_type": "LoraLabSaveLora", "inputs": {"lora": ["4", 0], "filename_prefix": "loras/cat_baked",
                                                         "dtype": "fp16"}},
    }
    with paths.standalone_dirs(models, tmp_path / "out"):
        res = Executor(NODE_CLASS_MAPPINGS, quiet=True).run(graph, extra_pnginfo={"workflow": {"nodes": []}}, name="g")
    assert res.ok, res.error
    out = tmp_path / "out"
    assert sorted(res.files) == [str(out / "checkpoints" / "cat_00001_.safetensors"),
                                 str(out / "loras" / "cat_baked_00001_.safetensors")]
    meta = safe_open(str(out / "checkpoints" / "cat_00001_.safetensors"), "pt").metadata()
    assert json.loads(meta["prompt"])["3"]["class_type"] == "LoraLabMergeToCheckpoint"
    assert json.loads(meta["merged_from"])["loras"][0]["name"] == "cat.safetensors"


def test_unchanged_tensors_copied_without_the_kernel_too(loaded, tmp_path, monkeypatch):
    """Where copy_file_range is missing (not Linux) or refused (EXDEV), the bytes are the same."""
    import errno
    import os

    from lora_lab.nodes.io import safetensors_stream as merge_stream

    hp = stack_for(loaded["sd1"])
    ref = load_file(merge.merge_checkpoint(hp, Destination(tmp_path / "ref.safetensors"), progress=False))
    monkeypatch.setattr(merge, "CAN_COPY_RANGE", False)
    a = load_file(merge.merge_checkpoint(hp, Destination(tmp_path / "a.safetensors"), progress=False))
    monkeypatch.setattr(merge, "CAN_COPY_RANGE", True)
    monkeypatch.setattr(merge_stream, "CAN_COPY_RANGE", True)

    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    b = load_file(merge.merge_checkpoint(hp, Destination(tmp_path / "b.safetensors"), progress=False))
    for got in (a, b):
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_diffusers_format_from_a_bf16_load_holds_the_files_values(loaded, tiny_checkpoints, tmp_path):
    """On a GPU the model is held in bf16; the diffusers folder must still hold the source
    file's values plus the stack (loaded again in fp32), exactly as from an fp32 load, and
    "same" is the file's dtype. A skeleton handle (nothing loaded) writes the folder too."""
    hp = stack_for(loaded["sd1"])
    want = patched_state(hp)
    low = load_single_file(tiny_checkpoints["sd1"], dtype=torch.bfloat16)
    assert next(low.unet.parameters()).dtype == torch.bfloat16
    for i, h in enumerate((low, merge.skeleton_handle(tiny_checkpoints["sd1"]))):
        out = merge.merge_checkpoint(h.with_patches(hp.patches), Destination(tmp_path / f"folder{i}"),
                                     fmt="diffusers", progress=False)
        got = state(load_diffusers_folder(out))
        assert {v.dtype for v in got.values() if v.is_floating_point()} == {torch.float32}  # the file's
        assert differing(want, got) == []
    assert next(low.unet.parameters()).dtype == torch.bfloat16  # the caller's model is left as it was
