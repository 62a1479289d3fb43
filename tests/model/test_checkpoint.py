"""Single-file checkpoint loading: parity with diffusers, real key layouts, bad files."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, state_dicts_equal, write_diffusers_config_folder

from lora_lab.nodes.model import checkpoint, checkpoint_save, ckpt_keys
from lora_lab.nodes.model.checkpoint import convert_single_file, load_single_file
from lora_lab.nodes.io.errors import CheckpointError

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"


def _components(h):
    return [("unet", h.unet), ("vae", h.vae)] + [(f"text_encoder{i}", t) for i, t in enumerate(h.text_encoders)]


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_exact(family, tiny_handles, tiny_checkpoints):
    loaded = load_single_file(tiny_checkpoints[family])
    assert loaded.family == family and loaded.prediction_type == "epsilon"
    for (name, a), (_, b) in zip(_components(tiny_handles[family]), _components(loaded)):
        assert state_dicts_equal(a, b) == [], name


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_diffusers_from_single_file(family, tiny_handles, tiny_checkpoints, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cfg = write_diffusers_config_folder(tmp_path / "config", tiny_handles[family])
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_single_file(str(tiny_checkpoints[family]), config=str(cfg), local_files_only=True,
                                torch_dtype=torch.float32)
    ours = load_single_file(tiny_checkpoints[family])
    theirs = [("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder0", pipe.text_encoder)]
    if family == "sdxl":
        theirs.append(("text_encoder1", pipe.text_encoder_2))
    for (name, a), (_, b) in zip(theirs, _components(ours)):
        assert state_dicts_equal(a, b) == [], name


@pytest.mark.parametrize("name,family", [("sd15", "sd1"), ("sdxl", "sdxl")])
def test_every_reference_key_is_consumed(name, family):
    """The full-size key lists of real checkpoints map onto diffusers models key for key."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = REFERENCE / f"{name}_checkpoint_keys.json"
    if not path.exists():
        pytest.skip(f"reference key list not found at {path}")
    shapes = {k: tuple(v[0]) for k, v in json.loads(path.read_text()).items()}
    conv = convert_single_file(lambda k: torch.empty(shapes[k], device="meta"), shapes)
    assert conv.family == family
    assert conv.unused_keys == []
    # Non-model keys are listed explicitly, not swallowed by a pattern.
    expected_extra = {"sd1": set(), "sdxl": {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "conditioner.embedders.1.model.logit_scale"}}[family]
    assert set(conv.non_model_keys) == expected_extra
    with torch.device("meta"):
        models = [UNet2DConditionModel(**conv.unet_config), AutoencoderKL(**conv.vae_config)]
        for i, c in enumerate(conv.text_configs):
            cls = CLIPTextModelWithProjection if (family == "sdxl" and i == 1) else CLIPTextModel
            models.append(cls(CLIPTextConfig(**c)))
    sds = [conv.unet, conv.vae] + [checkpoint._fit_clip_keys(m, s) for m, s in zip(models[2:], conv.text)]
    total = 0
    for m, sd in zip(models, sds):
        want = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.endswith("position_ids")}
        got = {k: tuple(v.shape) for k, v in sd.items()}
        assert got == want, type(m).__name__
        total += len(got)
    if family == "sdxl":
        assert conv.unet_config["transformer_layers_per_block"] == [1, 2, 10]
        assert conv.text_configs[1]["num_hidden_layers"] == 32
        # q/k/v split out of the fused in_proj: 3 tensors for 1 => +2 per weight and bias per layer
        assert total == len(shapes) - len(expected_extra) + 32 * 2 * 2
    else:
        assert conv.unet_config["block_out_channels"] == [320, 640, 1280, 1280]
        assert total == len(shapes)


def test_openclip_in_proj_rows_split_q_k_v():
    """in_proj_weight rows 0..C-1 are q, C..2C-1 k, 2C..3C-1 v; text_projection is transposed."""
    c = 4
    w = torch.arange(3 * c * c, dtype=torch.float32).reshape(3 * c, c)
    p = torch.arange(c * c, dtype=torch.float32).reshape(c, c)
    pre = "conditioner.embedders.1.model."
    sd = {pre + "transformer.resblocks.0.attn.in_proj_weight": w, pre + "text_projection": p}
    out, left = ckpt_keys.openclip_to_diffusers(sd, pre, with_projection=True)
    assert left == []
    assert torch.equal(out["text_model.encoder.layers.0.self_attn.q_proj.weight"], w[:c])
    assert torch.equal(out["text_model.encoder.layers.0.self_attn.k_proj.weight"], w[c:2 * c])
    assert torch.equal(out["text_model.encoder.layers.0.self_attn.v_proj.weight"], w[2 * c:])
    assert torch.equal(out["text_projection.weight"], p.t())
    back = ckpt_keys.diffusers_to_openclip(out, pre)
    assert torch.equal(back[pre + "transformer.resblocks.0.attn.in_proj_weight"], w)
    assert torch.equal(back[pre + "text_projection"], p)


def test_extra_keys_and_dtypes(tiny_handles, tmp_path):
    """EMA weights, DDPM buffers and fp16/bf16 storage load; the model is cast as asked."""
    from safetensors.torch import load_file, save_file

    from lora_lab.nodes.model.checkpoint_save import save_single_file

    src = save_single_file(tmp_path / "a.safetensors", tiny_handles["sd1"], dtype=torch.bfloat16)
    sd = load_file(src)
    sd["model_ema.decay"] = torch.tensor(0.999)
    sd["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(2)
    sd["alphas_cumprod"] = torch.ones(1000)
    save_file(sd, tmp_path / "b.safetensors")
    h = load_single_file(tmp_path / "b.safetensors", dtype=torch.float32)
    ref = tiny_handles["sd1"].unet.state_dict()
    got = h.unet.state_dict()
    assert all(v.dtype == torch.float32 for v in got.values())
    assert all(torch.equal(got[k], ref[k].to(torch.bfloat16).float()) for k in ref)


def test_v_prediction_marker_round_trips(tiny_handles, tmp_path):
    from lora_lab.nodes.model.checkpoint_save import save_single_file

    h = tiny_handles["sd2"].with_patches(())
    import dataclasses

    v = dataclasses.replace(h, prediction_type="v_prediction")
    path = save_single_file(tmp_path / "v.safetensors", v)
    assert load_single_file(path).prediction_type == "v_prediction"


# ------------------------------------------------------------------------------ bad files
def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(tiny_checkpoints, tmp_path):
    data = Path(tiny_checkpoints["sd1"]).read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_single_file(bad)


@pytest.mark.parametrize("payload,match", [
    (b"", "not a safetensors"),
    (struct.pack("<Q", 10**12) + b"{}", "corrupt or truncated"),
    (struct.pack("<Q", 5) + b"{nope", "corrupt safetensors header"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_corrupt_header(tmp_path, payload, match):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(payload)
    with pytest.raises(CheckpointError, match=match):
        load_single_file(bad)


def test_unknown_family(tmp_path):
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="unknown model family"):
        load_single_file(tmp_path / "x.safetensors")


def test_lora_file_given_as_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)},
              tmp_path / "l.safetensors")
    with pytest.raises(CheckpointError, match="LoRA"):
        load_single_file(tmp_path / "l.safetensors")


def test_pickle_is_refused(tmp_path):
    """A pickle with code in it is never executed: weights_only loading refuses it."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Evil()}}, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_single_file(bad)


def test_safe_pickle_checkpoint_loads(tiny_handles, tmp_path):
    from lora_lab.nodes.model.checkpoint_save import ldm_state_dict

    h = tiny_handles["sd1"]
    torch.save({"state_dict": ldm_state_dict("sd1", h.unet, h.vae, h.text_encoders)}, tmp_path / "ok.ckpt")
    loaded = load_single_file(tmp_path / "ok.ckpt")
    assert state_dicts_equal(loaded.unet, h.unet) == []


def test_loaded_model_is_reused(tiny_checkpoints):
    checkpoint.LOAD_CACHE.clear()
    before = checkpoint.LOAD_CACHE.loads
    a = checkpoint.load_checkpoint(tiny_checkpoints["sd1"])
    b = checkpoint.load_checkpoint(tiny_checkpoints["sd1"])
    assert a is b and checkpoint.LOAD_CACHE.loads == before + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_folder_loads(family, tiny_handles, tmp_path):
    """A diffusers model folder (save_pretrained) loads offline to the same weights and family."""
    from lora_lab.nodes.model.checkpoint import load_diffusers_folder

    h = tiny_handles[family]
    folder = write_diffusers_config_folder(tmp_path / "model", h)
    h.unet.save_pretrained(folder / "unet")
    h.vae.save_pretrained(folder / "vae")
    for name, enc in zip(["text_encoder", "text_encoder_2"], h.text_encoders):
        enc.save_pretrained(folder / name)
    loaded = load_diffusers_folder(folder)
    assert loaded.family == family and loaded.prediction_type == "epsilon"
    for (name, a), (_, b) in zip(_components(h), _components(loaded)):
        assert state_dicts_equal(a, b) == [], name


def test_diffusers_sd2_folder_clip_skip_counts_from_the_full_tower(tiny_handles, tmp_path):
    """diffusers' SD 2.x folders drop the last text layer; the default (penultimate) encoding
    of such a folder equals the single-file model's."""
    import copy
    import json

    from lora_lab.nodes.model.checkpoint import load_diffusers_folder
    from lora_lab.nodes.sampling.prompt import encode_prompt

    h = tiny_handles["sd2"]
    folder = write_diffusers_config_folder(tmp_path / "model", h)
    h.unet.save_pretrained(folder / "unet")
    h.vae.save_pretrained(folder / "vae")
    te = copy.deepcopy(h.text_encoders[0])
    layers = te.text_model.encoder.layers if hasattr(te, "text_model") else te.encoder.layers
    del layers[-1]
    te.config.num_hidden_layers -= 1
    te.save_pretrained(folder / "text_encoder")
    loaded = load_diffusers_folder(folder)
    assert loaded.text_layers_dropped == 1
    want = encode_prompt(h, "a cat").cond
    assert torch.equal(encode_prompt(loaded, "a cat").cond, want)
    # the true last layer is gone: clip skip 1 falls back to the last layer present
    assert torch.equal(encode_prompt(loaded, "a cat", clip_skip=1).cond, want)
    assert not torch.equal(encode_prompt(h, "a cat", clip_skip=1).cond, want)
    index = json.loads((folder / "model_index.json").read_text())
    index["lora_lab_text_layers_dropped"] = 0
    (folder / "model_index.json").write_text(json.dumps(index))
    assert load_diffusers_folder(folder).text_layers_dropped == 0


@pytest.mark.parametrize("dtype, vae_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                              (torch.float32, torch.float32)])
def test_vae_is_never_fp16(dtype, vae_dtype, tiny_handles, tiny_checkpoints, tmp_path):
    """A model loaded in fp16 (GPUs without bf16) keeps its VAE in fp32: SD VAEs overflow fp16
    inside the decoder (NaN -> black images), so ComfyUI and diffusers never run them in fp16."""
    from lora_lab.nodes.model.checkpoint import load_diffusers_folder

    h = load_single_file(tiny_checkpoints["sdxl"], dtype=dtype)
    assert next(h.unet.parameters()).dtype == dtype and next(h.text_encoders[1].parameters()).dtype == dtype
    assert {p.dtype for p in h.vae.parameters()} == {vae_dtype}
    folder = write_diffusers_config_folder(tmp_path / "model", tiny_handles["sd1"])
    for name, m in (("unet", tiny_handles["sd1"].unet), ("vae", tiny_handles["sd1"].vae),
                    ("text_encoder", tiny_handles["sd1"].text_encoders[0])):
        m.save_pretrained(folder / name)
    d = load_diffusers_folder(folder, dtype=dtype)
    assert next(d.unet.parameters()).dtype == dtype and {p.dtype for p in d.vae.parameters()} == {vae_dtype}


def test_checkpoint_cache_evicts_by_bytes(tiny_checkpoints):
    """A budget of one and a half tiny models keeps one: the least recently used goes."""
    one = checkpoint.handle_bytes(checkpoint.load_checkpoint(tiny_checkpoints["sd1"]))
    cache = checkpoint._LoadCache(budget_bytes=int(one * 1.5))
    a = cache.get(tiny_checkpoints["sd1"], torch.float32, "cpu")
    assert cache.lru.total_bytes == checkpoint.handle_bytes(a) == one
    cache.get(tiny_checkpoints["sd2"], torch.float32, "cpu")
    assert len(cache.lru) == 1 and cache.loads == 2
    assert cache.get(tiny_checkpoints["sd1"], torch.float32, "cpu") is not a and cache.loads == 3  # loaded again
    big = checkpoint._LoadCache(budget_bytes=one * 10)
    for fam in ("sd1", "sd2", "sd1"):
        big.get(tiny_checkpoints[fam], torch.float32, "cpu")
    assert big.loads == 2 and len(big.lru) == 2


def test_fp16_load_owns_its_weights(tiny_handles, tmp_path):
    """The documented choice: tensors that need no conversion (an fp16 file loaded in fp16) are
    copied out of the file's memory map, so overwriting the file in place does not reach a
    loaded model."""
    from safetensors.torch import load_file, save_file

    src = checkpoint_save.save_single_file(tmp_path / "f32.safetensors", tiny_handles["sd1"])
    path = tmp_path / "f16.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(src).items()}, path)
    h = load_single_file(path, dtype=torch.float16)
    assert next(h.unet.parameters()).dtype == torch.float16
    before = {k: v.clone() for k, v in h.unet.state_dict().items()}
    size = path.stat().st_size
    with open(path, "r+b") as f:  # rewrite every byte after the header in place
        header = 8 + int.from_bytes(f.read(8), "little")
        f.seek(header)
        f.write(b"\x7f" * (size - header))
        f.flush()
    after = h.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loaded_models_use_sdpa_attention(tiny_checkpoints):
    """Every attention layer of a loaded UNet and VAE runs torch's scaled_dot_product_attention
    (diffusers' AttnProcessor2_0), not the explicit softmax(QK^T)V of the classic processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    h = load_single_file(tiny_checkpoints["sd1"])
    procs = {**h.unet.attn_processors, **h.vae.attn_processors}
    assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs.values()), {type(p).__name__ for p in procs.values()}
