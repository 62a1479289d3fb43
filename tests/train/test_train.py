"""Train LoRA on tiny models: the loss falls, only LoRA parameters change, the file loads in
diffusers with the same outputs as our patch, a resumed run equals an uninterrupted one, the
metadata is kohya's, and the node runs under ComfyUI's inference mode."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_handle
from PIL import Image

from lora_lab.nodes.lora import patcher
from lora_lab.nodes.io.errors import InterruptedByUser, NodeInputError
from lora_lab.nodes.lora.lora_formats import read_lora
from lora_lab.nodes.io.paths import standalone_dirs
from lora_lab.nodes.train.train_config import TrainConfig
from lora_lab.nodes.train.train_data import BatchOrder, make_buckets, process_caption, scan_dataset
from lora_lab.nodes.train.train_loop import train_lora
from lora_lab.nodes.train.train_lora_modules import LoraModule


def _image(path: Path, size, color, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype("uint8")).save(path)


def make_dataset(root: Path) -> Path:
    """Two kohya folders: 3_sks toy (two captioned images, one not) and 1_plain (one image)."""
    a = root / "data" / "3_sks toy"
    b = root / "data" / "1_plain"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    _image(a / "red.png", (48, 32), (220, 30, 30), 1)
    (a / "red.txt").write_text("sks toy, red, studio\nsecond line ignored")
    _image(a / "blue.jpg", (32, 48), (30, 30, 220), 2)
    (a / "blue.caption").write_text("sks toy, blue")
    _image(a / "green.png", (32, 32), (30, 200, 30), 3)  # no caption: class tokens
    _image(b / "grey.png", (32, 32), (128, 128, 128), 4)
    (b / "grey.txt").write_text("grey, studio")
    (root / "data" / "notes").mkdir()  # not <repeats>_<tokens>: skipped
    return root / "data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd1():
    return make_handle("sd1", seed=21)


@pytest.fixture()
def env(tmp_path):
    data = make_dataset(tmp_path)
    with standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield data, tmp_path


def _cfg(data, name, **kw):
    base = dict(steps=4, rank=4, alpha=2.0, learning_rate=5e-3, batch_size=2, resolution=32, seed=7,
                save_dtype="fp32")
    base.update(kw)
    return TrainConfig(str(data), name, **base)


def _snapshot(h):
    return {f"{i}.{k}": v.clone() for i, m in enumerate((h.unet, h.vae, *h.text_encoders))
            for k, v in m.state_dict().items()}


# ------------------------------------------------------------------------------- dataset
def test_dataset_scan_captions_repeats_buckets(tmp_path):
    ds = scan_dataset(str(make_dataset(tmp_path)), 32)
    caps = {i.path.name: i.caption for i in ds.items}
    assert caps == {"red.png": "sks toy, red, studio", "blue.jpg": "sks toy, blue", "green.png": "sks toy",
                    "grey.png": "grey, studio"}
    assert {s.name: (s.repeats, s.img_count) for s in ds.subsets} == {"3_sks toy": (3, 3), "1_plain": (1, 1)}
    assert ds.num_train_images == 10
    assert ds.tag_frequency["3_sks toy"] == {"sks toy": 3, "red": 1, "studio": 1, "blue": 1}
    buckets = {i.path.name: i.bucket for i in ds.items}
    assert buckets["red.png"][0] > buckets["red.png"][1] and buckets["blue.jpg"][0] < buckets["blue.jpg"][1]
    assert all(w * h <= 32 * 32 and w % 8 == 0 and h % 8 == 0 for w, h in make_buckets(32))
    order = BatchOrder(ds, 2, seed=1)
    seen = [i for m in range(order.per_epoch) for i in order.batch(m)[1]]
    assert sorted(seen) == sorted(i for i, it in enumerate(ds.items) for _ in range(ds.repeats(it)))
    assert all(len({ds.items[i].bucket for i in order.batch(m)[1]}) == 1 for m in range(order.per_epoch))
    assert order.batch(3) == BatchOrder(ds, 2, seed=1).batch(3)


def test_caption_processing():
    import random

    assert process_caption("a, b, c", random.Random(0), 1.0, False, 0) == ""
    out = process_caption("keep, b, c, d, e", random.Random(3), 0.0, True, 1)
    assert out.startswith("keep, ") and sorted(out.split(", ")) == ["b", "c", "d", "e", "keep"]


def test_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeInputError, match="no images found"):
        scan_dataset(str(tmp_path / "empty"), 32)
    bad = tmp_path / "bad" / "2_x"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(NodeInputError, match="broken.png.*unreadable image"):
        scan_dataset(str(tmp_path / "bad"), 32)
    with pytest.raises(NodeInputError, match="'optimizer'"):
        TrainConfig("x", "y", optimizer="sgd")
    with pytest.raises(NodeInputError, match="'caption_dropout'"):
        TrainConfig("x", "y", caption_dropout=2.0)


# ------------------------------------------------------------------------------ training
def _eval_loss(handle, data, seed=0) -> float:
    """MSE of the noise prediction on the training images, fixed noise and timesteps."""
    from lora_lab.nodes.train.train_data import cache_latents
    from lora_lab.nodes.train.train_loop import alphas_cumprod
    from lora_lab.nodes.train.train_text import encode_captions

    ds = scan_dataset(str(data), 32)
    patcher.activate(handle)
    g = torch.Generator().manual_seed(seed)
    ac = alphas_cumprod()
    total = 0.0
    with torch.no_grad():
        for item, c in zip(ds.items, cache_latents(handle, ds, "cpu", 0)):
            x0 = c["latent"][None].expand(4, -1, -1, -1)
            t = torch.tensor([100, 300, 500, 700])
            noise = torch.randn(x0.shape, generator=g)
            a = ac[t].view(-1, 1, 1, 1)
            cond, _ = encode_captions(handle, [item.caption] * 4)
            pred = handle.unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=cond).sample
            total += float(torch.mean((pred - noise) ** 2))
    return total / len(ds.items)


def test_loss_falls_and_base_weights_untouched(sd1, env):
    data, root = env
    before = _snapshot(sd1)
    base_loss = _eval_loss(sd1, data)
    cfg = _cfg(data, "fall", steps=12, learning_rate=2e-2, text_encoder_lr=1e-3, target="attention+ff+conv",
               gradient_checkpointing=True, min_snr_gamma=5.0, noise_offset=0.05, lr_scheduler="cosine",
               lr_warmup_steps=2)
    res = train_lora(sd1, cfg)
    assert len(res.losses) == 12 and all(np.isfinite(res.losses))
    # only the LoRA changed: base tensors bit-identical, no hooks, flags and grads as before
    patcher.restore(sd1)
    after = _snapshot(sd1)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    for m in (sd1.unet, *sd1.text_encoders):
        hooks = [fn for mod in m.modules() for fn in mod._forward_hooks.values()]
        assert not [fn for fn in hooks if isinstance(getattr(fn, "__self__", None), LoraModule)]
        assert not any(hasattr(mod, "_require_grads_hook") for mod in m.modules())
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())
    assert not sd1.unet.is_gradient_checkpointing and not sd1.text_encoders[0].training
    # the returned model carries the trained LoRA; it fits the data better than the base
    assert len(res.handle.patches) == len(sd1.patches) + 1
    trained_loss = _eval_loss(res.handle, data)
    patcher.restore(sd1)
    assert trained_loss < base_loss * 0.95, (base_loss, trained_loss)
    raw = read_lora(res.path)
    names = list(raw.adapters)
    assert any("resnets_0_conv1" in n for n in names) and any(n.startswith("lora_te_") for n in names)
    assert raw.unknown_keys == ()


def test_resume_equals_uninterrupted(sd1, env):
    data, root = env
    kw = dict(steps=6, gradient_accumulation=2, shuffle_caption=True, caption_dropout=0.3, keep_tokens=1,
              lr_scheduler="linear", use_accelerate=False)
    full = train_lora(sd1, _cfg(data, "full", **kw))

    class StopAt:
        def __init__(self, n):
            self.n, self.seen = n, 0

        def update(self, k):
            self.seen += k
            if self.seen >= self.n:
                raise InterruptedByUser("stop")

    with pytest.raises(InterruptedByUser):
        train_lora(sd1, _cfg(data, "part", **kw), progress=StopAt(3))
    state = json.loads((root / "out" / "lora_lab_train" / "part-state" / "train_state.json").read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3
    assert not (root / "models" / "loras" / "part.safetensors").exists()
    with pytest.raises(NodeInputError, match="resume = last"):
        train_lora(sd1, _cfg(data, "part", **kw))  # a fresh run would lose the state
    resumed = train_lora(sd1, _cfg(data, "part", resume="last", **kw))
    assert resumed.losses == full.losses
    from safetensors.torch import load_file

    a, b = load_file(str(full.path)), load_file(str(resumed.path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(NodeInputError, match="other settings"):
        train_lora(sd1, _cfg(data, "part2", resume=str(resumed.state_dir), **dict(kw, rank=8)))


def test_metadata_and_hashes(sd1, env):
    data, root = env
    res = train_lora(sd1, _cfg(data, "meta", steps=1, save_dtype="fp16", mixed_precision="bf16"))
    from safetensors import safe_open

    with safe_open(str(res.path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert json.loads(meta["ss_tag_frequency"])["1_plain"] == {"grey": 1, "studio": 1}
    assert json.loads(meta["ss_dataset_dirs"])["3_sks toy"] == {"n_repeats": 3, "img_count": 3}
    assert meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_steps"] == "1" and meta["ss_output_name"] == "meta" and meta["ss_resolution"] == "(32, 32)"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "meta"
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.resolution"] == "32x32"
    raw = res.path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8]  # file < 1 MiB
    assert "sks toy" in res.handle.patches[-1].raw.metadata["ss_tag_frequency"]
    with pytest.raises(NodeInputError, match="exists"):
        train_lora(sd1, _cfg(data, "meta", steps=1))


# --------------------------------------------------------------------- diffusers parity
def _diffusers_unet_with(handle, path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    import copy

    unet, vae, *tes = (copy.deepcopy(m) for m in (handle.unet, handle.vae, *handle.text_encoders))
    if handle.family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=tes[0], text_encoder_2=tes[1],
                                         tokenizer=handle.tokenizers[0], tokenizer_2=handle.tokenizers[1], unet=unet,
                                         scheduler=EulerDiscreteScheduler(steps_offset=1))
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=tes[0], tokenizer=handle.tokenizers[0], unet=unet,
                                       scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="t")
    return pipe.unet


@pytest.mark.parametrize("family,target", [("sd1", "attention+ff+conv"), ("sdxl", "attention+ff")])
def test_saved_file_in_diffusers_equals_our_patch(family, target, sd1, env):
    pytest.importorskip("peft")
    data, root = env
    h = sd1 if family == "sd1" else make_handle("sdxl", seed=22)
    res = train_lora(h, _cfg(data, f"parity_{family}", steps=2, learning_rate=5e-2, target=target))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([50, 700])
    ctx = torch.randn(2, 77, h.unet.config.cross_attention_dim, generator=g)
    added = None
    if family == "sdxl":
        added = {"text_embeds": torch.randn(2, 64, generator=g), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        patcher.activate(h)
        base = h.unet(x, t, ctx, added_cond_kwargs=added).sample
        patcher.activate(res.handle)
        ours = h.unet(x, t, ctx, added_cond_kwargs=added).sample
        patcher.restore(h)
        theirs = _diffusers_unet_with(h, res.path)(x, t, ctx, added_cond_kwargs=added).sample
    assert (ours - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- node and CLI
def test_node_under_inference_mode_and_load_lora(env):
    from lora_lab.nodes.defs.nodes_train import LoraLabTrainLora
    from lora_lab.nodes.lora.patcher import match_report

    data, root = env
    with torch.inference_mode():  # as ComfyUI runs nodes (and loaded the model)
        h = make_handle("sd2", seed=5, prediction_type="v_prediction")
        model, name, curve = LoraLabTrainLora().train(
            h, dataset_dir=str(data), output_name="sub/node", steps=2, rank=2, alpha=1.0, learning_rate=1e-3,
            batch_size=1, resolution=32, seed=1, text_encoder_lr=1e-4, save_every=1, sample_every=2,
            sample_prompt="sks toy", sample_steps=2)
    assert name == "sub/node.safetensors" and (root / "models" / "loras" / "sub" / "node-step00000001.safetensors").exists()
    assert list((root / "out" / "lora_lab_train" / "sub" / "node_samples").glob("step00000002_*.png"))
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and 0 <= float(curve.min()) <= float(curve.max()) <= 1
    raw = model.patches[-1].raw
    assert raw.metadata["ss_base_model_version"] == "sd_v2_v" and raw.metadata["modelspec.prediction_type"] == "v"
    report = match_report(h, raw)
    assert report.unmatched == () and len(report.adapters) == report.total


def test_cli_train(tmp_path):
    from lora_lab.nodes.model import checkpoint_save
    from lora_lab.nodes.cli import main as cli

    data = make_dataset(tmp_path)
    ckpt = checkpoint_save.save_single_file(tmp_path / "tiny.safetensors", make_handle("sd1", seed=4))
    args = ["train", "--model", str(ckpt), "--dataset-dir", str(data), "--output-name", "cli", "--steps", "1",
            "--rank", "2", "--resolution", "32", "--models-dir", str(tmp_path / "m"), "--output-dir",
            str(tmp_path / "o"), "--no-use-accelerate", "--target", "attention", "--quiet", "--json"]
    assert cli.main(args) == 0
    raw = read_lora(tmp_path / "m" / "loras" / "cli.safetensors")
    assert raw.adapters and all(n.split("_")[-2:][0] in ("q", "k", "v", "out") or "to_" in n for n in raw.adapters)
    assert cli.main(["train", "--model", str(ckpt), "--dataset-dir", str(data), "--output-name", "x",
                     "--optimizer", "sgd"]) == 2


# ------------------------------------------------------------------------- ComfyUI keys
_COMFY_SCRIPT = r"""
import json, logging, sys, types
sys.path.insert(0, sys.argv[1])
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy.lora, comfy.model_detection
from safetensors.torch import load_file
from safetensors import safe_open
ckpt, lora_path, clip_keys = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with safe_open(ckpt, "pt") as f:
    sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
class Fake:
    def __init__(self, keys, cfg=None):
        self.keys, self.model_config = keys, types.SimpleNamespace(unet_config=cfg)
    def state_dict(self):
        return dict.fromkeys(self.keys)
unet = Fake(["diffusion_model." + k[len("model.diffusion_model."):] for k in sd], unet_config)
key_map = comfy.lora.model_lora_keys_unet(unet, {})
key_map = comfy.lora.model_lora_keys_clip(Fake(clip_keys), key_map)
missing = []
class Catch(logging.Handler):
    def emit(self, r):
        if "not loaded" in r.getMessage(): missing.append(r.getMessage())
logging.getLogger().addHandler(Catch())
patches = comfy.lora.load_lora(load_file(lora_path), key_map)
print(json.dumps({"patches": len(patches), "missing": missing}))
"""


def _comfy_python():
    root = os.environ.get("COMFYUI_DIR")
    if not root or not os.path.isfile(os.path.join(root, "comfy", "lora.py")):
        pytest.skip("COMFYUI_DIR is not set (a ComfyUI checkout runs this check)")
    py = os.environ.get("COMFYUI_PYTHON") or os.path.join(root, ".venv", "bin", "python")
    return root, (py if os.path.isfile(py) else sys.executable)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_comfyui_lora_loader_matches_every_key(family, sd1, env):
    from lora_lab.nodes.model import checkpoint_save

    root, py = _comfy_python()
    data, tmp = env
    h = sd1 if family == "sd1" else make_handle("sdxl", seed=23)
    res = train_lora(h, _cfg(data, f"comfy_{family}", steps=1, text_encoder_lr=1e-4, target="attention+ff+conv"))
    ckpt = checkpoint_save.save_single_file(tmp / f"{family}.safetensors", h)
    towers = {"sd1": ["clip_l"], "sdxl": ["clip_l", "clip_g"]}[family]
    clip = [f"{t}.transformer.text_model.encoder.layers.{b}.{c}.weight" for t, m in zip(towers, h.text_encoders)
            for b in range(m.config.num_hidden_layers)
            for c in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")]
    out = subprocess.run([py, "-c", _COMFY_SCRIPT, root, str(ckpt), str(res.path), json.dumps(clip)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["missing"] == []
    assert got["patches"] == len(read_lora(res.path).adapters)
    shutil.rmtree(tmp / "out", ignore_errors=True)


def test_accelerate_is_used_on_a_single_gpu(monkeypatch):
    """accelerate names a single GPU `cuda`; the model's parameters say `cuda:0`. That is the
    same device, so the run goes through accelerate (it fell back to the plain runtime)."""
    from lora_lab.nodes.train import train_runtime

    class FakeAccelerate:
        def __init__(self, mixed_precision, cpu):
            self.device = torch.device("cpu" if cpu else "cuda")

    monkeypatch.setattr(train_runtime, "AccelerateRuntime", FakeAccelerate)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert isinstance(train_runtime.make_runtime(torch.device("cuda:0"), "no"), FakeAccelerate)
    assert isinstance(train_runtime.make_runtime(torch.device("cuda"), "no"), FakeAccelerate)
    assert isinstance(train_runtime.make_runtime(torch.device("cpu"), "no"), FakeAccelerate)
    assert not isinstance(train_runtime.make_runtime(torch.device("cuda:1"), "no"), FakeAccelerate)
    assert not isinstance(train_runtime.make_runtime(torch.device("cuda:0"), "no", use_accelerate=False),
                          FakeAccelerate)


def test_fp16_gpu_model_trains_with_a_loss_scaler():
    """mixed_precision "no" on a CUDA model held in fp16 (GPUs without bf16) runs as "fp16":
    autocast plus GradScaler, as kohya's full_fp16; gradients through fp16 layers underflow
    without scaling. Other precisions and devices are left as chosen."""
    from types import SimpleNamespace

    from lora_lab.nodes.train.train_loop import runtime_precision

    def unet(device, dtype):
        return SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(device), dtype=dtype)]))

    assert runtime_precision("no", unet("cuda", torch.float16)) == "fp16"
    assert runtime_precision("no", unet("cuda", torch.bfloat16)) == "no"
    assert runtime_precision("no", unet("cpu", torch.float16)) == "no"
    assert runtime_precision("bf16", unet("cuda", torch.float16)) == "bf16"
    assert runtime_precision("no", make_handle("sd1").unet) == "no"
