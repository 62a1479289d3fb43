"""Bad inputs a user can type or own: each is refused with a named error (its class, and the
node or option, the input and the value in the message), through the nodes, the Python API
and the CLI alike, and no file in the output or models folders changes (hashed before and
after)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from lora_factory import kohya
from lora_lab.nodes.cli import main as cli
from lora_lab.nodes.defs.node_defs import LoraLabLoraLoader, LoraLabLoraStack
from lora_lab.nodes.io import paths
from lora_lab.nodes.io.checks import NonFiniteError, check_fits, check_strength
from lora_lab.nodes.io.destination import Destination
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.lora import patcher
from lora_lab.nodes.lora.lora_stack import parse_stack_text, strip_prompt_loras
from lora_lab.nodes.merge import merge
from lora_lab.nodes.model.checkpoint import load_single_file
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree_hash(*roots: Path) -> dict:
    """{path: sha256} of every file under `roots` (what must not change)."""
    out = {}
    for root in roots:
        if root.exists():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expect(exc, fn, *parts):
    """Call fn, expect `exc`, and every one of `parts` in its message; returns the error."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for part in parts:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    return info.value


@pytest.fixture(scope="module")
def sd1(tiny_checkpoints):
    return load_single_file(tiny_checkpoints["sd1"])


@pytest.fixture()
def dirs(tmp_path, sd1):
    """models/ with a good LoRA, a NaN one, an inf one and a huge one; output/ with a file."""
    models, out = tmp_path / "models", tmp_path / "output"
    (models / "loras").mkdir(parents=True)
    out.mkdir()
    (out / "keep.txt").write_text("existing output")
    good = kohya(sd1, rank=4, seed=1)
    save_file(good, models / "loras" / "good.safetensors")
    key = min(k for k in good if k.endswith("lora_up.weight"))
    for name, value in (("nan", math.nan), ("inf", math.inf)):
        bad = dict(good)
        bad[key] = bad[key].clone()
        bad[key][0, 0] = value
        save_file(bad, models / "loras" / f"{name}.safetensors")
    save_file({k: (v * 300 if v.ndim else v) for k, v in good.items()}, models / "loras" / "huge.safetensors")
    (models / "loras" / "folder.safetensors").mkdir()
    with paths.standalone_dirs(models, out):
        before = tree_hash(models, out)
        yield models, out, key
        assert tree_hash(models, out) == before, "a bad input changed or left a file"


# --------------------------------------------------------------- non-finite LoRA tensors
@pytest.mark.parametrize("name,value", [("nan", "nan"), ("inf", "inf")])
def test_load_lora_refuses_a_non_finite_tensor(sd1, dirs, name, value):
    _, _, key = dirs
    err = expect(NodeInputError, lambda: LoraLabLoraLoader().load(sd1, f"{name}.safetensors", 1.0, 1.0),
                 "LoraLabLoraLoader", "lora_name", f"{name}.safetensors", key, value)
    assert err.node == "LoraLabLoraLoader" and err.input_name == "lora_name"


def test_stack_refuses_a_non_finite_tensor(sd1, dirs):
    expect(NodeInputError, lambda: LoraLabLoraStack().stack(sd1, "good:0.5\nnan:1"),
           "LoraLabLoraStack", "'loras'", "nan.safetensors", dirs[2])


def test_cli_merge_and_resize_refuse_a_nan_lora(tiny_checkpoints, dirs, capsys):
    models, out, key = dirs
    target = out / "m.safetensors"
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", "nan", "-o", str(target), "--models-dir", str(models),
            "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "nan.safetensors" in err and key in err and "nan" in err and not target.exists()
    assert cli.main(["lora", "resize", "nan", "-o", str(out / "r.safetensors"), "--rank", "2",
                     "--models-dir", str(models), "-q"]) == 1
    err = capsys.readouterr().err
    assert "nan.safetensors" in err and key in err and "Traceback" not in err


# ------------------------------------------------------------------------- strengths
@pytest.mark.parametrize("text", ["good:nan", "good:inf", "good:1e6", "good:0.5:-inf", "<lora:good:nan>",
                                  "<lora:good:1:1e6>", "good:abc"])
def test_stack_text_strengths_in_one_range(sd1, dirs, text):
    err = expect(NodeInputError, lambda: LoraLabLoraStack().stack(sd1, text), "LoraLabLoraStack", "'loras'", text)
    assert err.value == text


@pytest.mark.parametrize("unet,textenc,bad_input", [(math.nan, 1.0, "strength_unet"), (1.0, math.inf, "strength_text"),
                                                    (11.0, 1.0, "strength_unet"), (1.0, -1e6, "strength_text")])
def test_load_lora_strengths(sd1, dirs, unet, textenc, bad_input):
    err = expect(NodeInputError, lambda: LoraLabLoraLoader().load(sd1, "good", unet, textenc),
                 "LoraLabLoraLoader", bad_input)
    assert err.input_name == bad_input and str(err.value) in str(err)


@pytest.mark.parametrize("item", [("good", math.nan, 1.0), ("good", 1.0, 1e6)])
def test_lora_stack_edge_strengths(sd1, dirs, item):
    expect(NodeInputError, lambda: LoraLabLoraStack().stack(sd1, "", lora_stack=[item]),
           "LoraLabLoraStack", "'loras'", "good", str(item[1] if not math.isfinite(item[1]) or item[1] > 10 else item[2]))


@pytest.mark.parametrize("prompt", ["a cat <lora:good:inf>", "a cat <lora:good:nan>", "<lora:good:0.5:1e6>"])
def test_prompt_tag_strengths(prompt):
    tag = prompt[prompt.index("<"):]
    expect(NodeInputError, lambda: strip_prompt_loras(prompt), "LoraLabSampler", "'prompt'", tag)


def test_the_range_is_the_widgets_range():
    from lora_lab.nodes.defs.node_defs import _STRENGTH
    from lora_lab.nodes.io.checks import STRENGTH_MAX, STRENGTH_MIN

    assert (_STRENGTH["min"], _STRENGTH["max"]) == (STRENGTH_MIN, STRENGTH_MAX)
    assert check_strength("10", "n", "i") == 10.0 and check_strength(-10, "n", "i") == -10.0
    assert [e.strength_unet for e in parse_stack_text("a:10\nb:-10")] == [10.0, -10.0]


@pytest.mark.parametrize("spec", ["good:nan", "good:inf", "good:1e6", "good:1:nan"])
def test_cli_lora_strengths(tiny_checkpoints, dirs, capsys, spec):
    models, out, _ = dirs
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", spec, "-o", str(out / "m.safetensors"),
            "--models-dir", str(models), "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "--lora" in err and spec in err and "strength" in err


# -------------------------------------------------------------- overflow of the output dtype
def test_merge_refuses_a_result_beyond_fp16(tiny_checkpoints, sd1, dirs, capsys):
    models, out, _ = dirs
    target = out / "m.safetensors"
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", "huge:10", "-o", str(target), "--dtype", "fp16",
            "--models-dir", str(models), "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "float16" in err and "tensor '" in err and "range" in err and "tiny-sd1.safetensors" in err and not target.exists()
    assert not list(out.glob(".*tmp"))
    # the same through the Python API; fp32 holds it
    from lora_lab.nodes.lora.lora_formats import read_lora

    raw = read_lora(models / "loras" / "huge.safetensors")
    h = sd1.with_patches((patcher.LoraPatch("huge", raw, 10.0, 10.0),))
    expect(NonFiniteError, lambda: merge.merge_checkpoint(h, Destination(target), "fp16", progress=False),
           "float16", "tiny-sd1.safetensors")
    assert not target.exists()


def test_check_fits():
    check_fits(torch.tensor([65504.0]), torch.float16, "f", "t")
    expect(NonFiniteError, lambda: check_fits(torch.tensor([1.0, 7e4]), torch.float16, "f.safetensors", "w"),
           "f.safetensors", "'w'", "7e+04", "float16")
    expect(NonFiniteError, lambda: check_fits(torch.tensor([1.0, math.nan]), torch.float32, "f", "w"), "nan", "'w'")


# ------------------------------------------------------------------------- names and paths
def test_a_folder_named_like_a_lora(sd1, dirs):
    expect(NodeInputError, lambda: LoraLabLoraLoader().load(sd1, "folder.safetensors", 1.0, 1.0),
           "LoraLabLoraLoader", "lora_name", "folder.safetensors", "folder")


@pytest.mark.parametrize("name", ["bad\0name", "x" * 300, "a/" + "y" * 300 + ".safetensors"])
def test_nul_bytes_and_long_names(sd1, dirs, capsys, tiny_checkpoints, name):
    shown = repr(name)[1:40]
    expect(NodeInputError, lambda: LoraLabLoraLoader().load(sd1, name, 1.0, 1.0), "LoraLabLoraLoader", "lora_name",
           shown)
    expect(NodeInputError, lambda: LoraLabLoraStack().stack(sd1, name + ":0.5"), "LoraLabLoraStack", "loras", shown)
    models, out, _ = dirs
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", name, "-o", str(out / "m.safetensors"),
            "--models-dir", str(models), "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "loras name" in err and ("NUL" in err or "too long" in err)


@pytest.mark.parametrize("name", ["bad\0name.safetensors", "c" * 300 + ".safetensors"])
def test_checkpoint_names_through_the_python_api(dirs, name):
    from lora_lab.nodes.defs.node_defs import LoraLabCheckpointLoader

    expect(NodeInputError, lambda: LoraLabCheckpointLoader().load(name), "LoraLabCheckpointLoader", "ckpt_name",
           repr(name)[1:40])


# ------------------------------------------------------------------------- unclear errors
def test_checkpoint_missing_a_unet_tensor(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file as load_sd

    from lora_lab.nodes.defs.node_defs import LoraLabCheckpointLoader

    sd = load_sd(tiny_checkpoints["sd1"])
    key = min(k for k in sd if k.startswith("model.diffusion_model.") and "attn2.to_k" in k)
    del sd[key]
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    save_file(sd, models / "checkpoints" / "holey.safetensors")
    with paths.standalone_dirs(models, tmp_path / "out"):
        expect(NodeInputError, lambda: LoraLabCheckpointLoader().load("holey.safetensors"),
               "LoraLabCheckpointLoader", "ckpt_name", "holey.safetensors", key, "missing")


def test_legacy_torch_save_ckpt_goes_through_the_safe_unpickler(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file as load_sd

    from lora_lab.nodes.model.checkpoint import load_checkpoint

    sd = load_sd(tiny_checkpoints["sd1"])
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": sd}, legacy, _use_new_zipfile_serialization=False)
    h = load_checkpoint(legacy)
    ref = load_single_file(tiny_checkpoints["sd1"])
    assert all(torch.equal(a, b) for a, b in zip(h.unet.state_dict().values(), ref.unet.state_dict().values()))
    # a legacy pickle with code in it is still refused
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.ckpt", _use_new_zipfile_serialization=False)
    from lora_lab.nodes.io.errors import CheckpointError

    expect(CheckpointError, lambda: load_checkpoint(tmp_path / "evil.ckpt"), "evil.ckpt", "refused")
    assert not marker.exists()


def test_wrong_shape_loha_is_refused_at_load_lora(sd1, dirs):
    models, _, _ = dirs
    idx_name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"
    g = torch.Generator().manual_seed(0)
    loha = {f"{idx_name}.hada_w1_a": torch.randn(32, 2, generator=g), f"{idx_name}.hada_w1_b": torch.randn(2, 32, generator=g),
            f"{idx_name}.hada_w2_a": torch.randn(32, 2, generator=g), f"{idx_name}.hada_w2_b": torch.randn(2, 32, generator=g),
            f"{idx_name}.alpha": torch.tensor(1.0)}
    loha = {k: (v[:16] if k.endswith(("w1_a", "w2_a")) else v) for k, v in loha.items()}  # 16 rows, layer has 32
    save_file(loha, models / "loras" / "loha_bad.safetensors")
    expect(NodeInputError, lambda: LoraLabLoraLoader().load(sd1, "loha_bad.safetensors", 1.0, 1.0),
           "LoraLabLoraLoader", "lora_name", "loha_bad.safetensors", idx_name, "loha of 16 rows")
    (models / "loras" / "loha_bad.safetensors").unlink()  # the folder hash check covers the rest


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_lone_surrogate_in_a_prompt(sd1, field):
    from lora_lab.nodes.defs.node_defs import LoraLabSampler

    kw = {"prompt": "a cat", "negative_prompt": ""}
    kw[field] = "a \ud800 cat"
    err = expect(NodeInputError, lambda: LoraLabSampler().sample(sd1, kw["prompt"], kw["negative_prompt"], 0, 1, 1.0,
                                                                   "euler", "normal", 64, 64, 1),
                 "LoraLabSampler", f"'{field}'", "U+D800")
    assert err.input_name == field


def test_a_full_disk_names_the_path(tiny_checkpoints, sd1, dirs, monkeypatch, capsys):
    import errno

    from lora_lab.nodes.io.errors import OutputWriteError

    models, out, _ = dirs

    def full(path, items, meta, **kw):
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(merge, "write_stream", full)
    target = out / "m.safetensors"
    argv = ["merge", str(tiny_checkpoints["sd1"]), "--lora", "good", "-o", str(target), "--models-dir", str(models),
            "-q"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "No space left on device" in err and not target.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    with pytest.raises(OutputWriteError) as info:
        merge.merge_checkpoint(sd1, Destination(target), progress=False)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC and str(target) in str(info.value)


# ------------------------------------------------------------------- partial-match warnings
class _Sink:
    """An output node taking a model (the runner needs an output)."""

    RETURN_TYPES = ()
    FUNCTION = "take"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("LORA_LAB_MODEL",)}}

    def take(self, model):
        return {"ui": {}}


def test_partial_match_warning_on_the_node_and_per_graph(tiny_checkpoints, sd1, dirs):
    from lora_lab.nodes.defs.node_defs import NODE_CLASS_MAPPINGS
    from lora_lab.nodes.graph.executor import Executor
    from lora_lab.nodes.io.notices import UI_KEY

    models, _, _ = dirs
    sd = kohya(sd1, rank=2, seed=4)
    down = min(k for k in sd if k.endswith("lora_down.weight"))
    sd["lora_unet_no_such_block_attn1_to_q.lora_down.weight"] = sd[down].clone()
    sd["lora_unet_no_such_block_attn1_to_q.lora_up.weight"] = sd[down.replace("down", "up")].clone()
    save_file(sd, models / "loras" / "partial.safetensors")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "tiny.safetensors").write_bytes(Path(tiny_checkpoints["sd1"]).read_bytes())
    try:
        out = LoraLabLoraLoader().load(sd1, "partial.safetensors", 1.0, 1.0)
        assert isinstance(out, dict) and len(out["result"]) == 2
        (note,) = out["ui"][UI_KEY]
        assert "partial.safetensors" in note and "layers matched" in note and "no_such_block" in note
        assert isinstance(LoraLabLoraLoader().load(sd1, "good.safetensors", 1.0, 1.0), tuple)  # no warning: plain

        reg = {**NODE_CLASS_MAPPINGS, "Sink": _Sink}
        graph = {"1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": "tiny.safetensors"}},
                 "2": {"class_type": "LoraLabLoraLoader", "inputs": {"model": ["1", 0], "lora_name": "partial.safetensors",
                                                                      "strength_unet": 1.0, "strength_text": 1.0}},
                 "3": {"class_type": "Sink", "inputs": {"model": ["2", 0]}}}
        ex = Executor(reg, quiet=True)
        first, second = ex.run(graph, name="a"), ex.run(graph, name="b")
        assert first.ok and second.ok and "2" in second.cached  # the second run reuses the output ...
        for res in (first, second):  # ... and still reports the warning
            assert [(w["node"], "layers matched" in w["message"]) for w in res.warnings] == [("2", True)]
    finally:
        (models / "loras" / "partial.safetensors").unlink()
        (models / "checkpoints" / "tiny.safetensors").unlink()
        (models / "checkpoints").rmdir()


@pytest.mark.parametrize("prefix", ["out\0put", "d/" + "p" * 300])
def test_output_prefixes_the_file_system_refuses(dirs, prefix):
    from lora_lab.nodes.defs.node_defs import LoraLabSaveImage
    from lora_lab.nodes.defs.nodes_merge import LoraLabMergeToCheckpoint

    expect(NodeInputError, lambda: LoraLabSaveImage().save(torch.zeros(1, 8, 8, 3), prefix), "LoraLabSaveImage",
           "filename_prefix", repr(prefix)[1:30])
    expect(NodeInputError, lambda: LoraLabMergeToCheckpoint().merge(None, prefix, "same", "single-file"),
           "LoraLabMergeToCheckpoint", "filename_prefix", repr(prefix)[1:30])


@pytest.mark.parametrize("argv,named", [
    (["run", "G", "--output-dir", "o\0x"], "--output-dir"), (["run", "G", "--models-dir", "m" * 5000], "--models-dir"),
    (["run", "x" * 300 + ".json"], "File name too long"), (["merge", "CKPT", "-o", "o\0.safetensors"], "output path"),
])
def test_cli_paths_the_file_system_refuses(tiny_checkpoints, tmp_path, capsys, argv, named):
    from lora_lab.nodes.cli.main import main

    g = tmp_path / "g.json"
    g.write_text("{}")
    argv = [{"G": str(g), "CKPT": str(tiny_checkpoints["sd1"])}.get(a, a) for a in argv]
    assert main([*argv, "--quiet"] if argv[0] == "run" else argv) in (1, 2)
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_diffusers_merge_refuses_a_result_beyond_fp16(sd1, dirs):
    from lora_lab.nodes.lora.lora_formats import read_lora

    models, out, _ = dirs
    raw = read_lora(models / "loras" / "huge.safetensors")
    h = sd1.with_patches((patcher.LoraPatch("huge", raw, 10.0, 10.0),))
    target = out / "folder"
    try:
        expect(NonFiniteError, lambda: merge.merge_checkpoint(h, Destination(target), "fp16", "diffusers",
                                                              progress=False), "float16", "range")
    finally:
        patcher.restore(sd1)  # the shared modules back to the base weights
    assert not target.exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("strengths,values2", [("0, 0.5, 11", ""), ("0:20:5", ""), ("0, 1", "0.5, -12")])
def test_sweep_strengths_in_the_one_range(strengths, values2):
    from lora_lab.nodes.sampling.sweep import make_plan

    axis2 = "lora strengths" if values2 else "none"
    bad = "values2" if values2 else "strengths"
    err = expect(NodeInputError, lambda: make_plan("a", strengths, axis2, "b" if values2 else None, values2),
                 "LoraLabStrengthSweep", f"'{bad}'", values2 or strengths, "outside -10..10")
    assert err.input_name == bad


def test_resize_of_a_nan_lora_through_the_python_api(sd1):
    from lora_lab.nodes.lora.lora_formats import parse_state_dict
    from lora_lab.nodes.merge.lora_resize import resize_lora
    from lora_lab.nodes.merge.lora_save import lora_set_from_raw
    from lora_lab.nodes.merge.lora_tools import RankRule

    sd = kohya(sd1, rank=4, seed=6)
    key = min(k for k in sd if k.endswith("lora_down.weight"))
    sd[key] = sd[key].clone()
    sd[key][1, 1] = math.nan
    lset = lora_set_from_raw(parse_state_dict(sd, name="x"))  # parsed in memory: no file check on the way
    expect(NonFiniteError, lambda: resize_lora(lset, RankRule(2)), key.split(".")[0], "nan")
