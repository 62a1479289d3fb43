"""The MODEL/CLIP LoRA nodes inside a real ComfyUI (in process): the weights ComfyUI samples
with after our loader, against ComfyUI's own LoRA loader (comfy.sd.load_lora_for_models, what
its LoraLoader node calls) and against the published formulas; and one KSampler run each.

Runs only when COMFYUI_DIR points at a ComfyUI checkout whose modules import here, e.g.

    COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python -m pytest tests/defs/test_comfy_lora_parity.py

ComfyUI's objects are built with its own classes: the tiny SD 1.x UNet (our test layout) as
`supported_models.SD15` with the config ComfyUI detects from the weights, and a full-size
CLIP-L (`sd1_clip.SD1ClipModel`, seeded random weights) as its CLIP.
"""
from __future__ import annotations

import importlib
import logging

import pytest
import torch
from comfy_env import comfy_modules_or_skip
from conftest import make_handle
from lora_factory import kohya, peft_unet, unet_layers
from lora_lab.nodes.defs.comfy_lora_nodes import LoraLabLoraLoaderModelClip
from lora_lab.nodes.io import paths
from lora_lab.nodes.model import checkpoint_save
from safetensors.torch import save_file

log = logging.getLogger(__name__)
FP16_REL = 2.0 ** -10  # "within fp16 rounding": one unit in the last place of an fp16 weight


def _import_comfy():
    names = ("sd", "sd1_clip", "supported_models", "supported_models_base", "model_detection", "model_patcher",
             "sample", "lora")
    mods = comfy_modules_or_skip(*(f"comfy.{n}" for n in names), needs="comfy/lora.py")
    return type("Comfy", (), dict(zip(names, mods)))


@pytest.fixture(scope="module")
def comfy():
    return _import_comfy()


@pytest.fixture(scope="module")
def handle():
    return make_handle("sd1", seed=77)


@pytest.fixture(scope="module")
def model(comfy, handle):
    ldm = checkpoint_save.ldm_state_dict("sd1", handle.unet, handle.vae, handle.text_encoders)
    pre = "model.diffusion_model."
    cfg = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(ldm, pre))
    base = cfg.get_model(ldm, pre, device=torch.device("cpu"))
    base.load_model_weights(ldm, pre)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="module")
def clip(comfy):
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    c = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sorted(c.cond_stage_model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.ndim >= 2 else 0.1) + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return c


def te_kohya(clip, rank=4, seed=9):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, w in clip.cond_stage_model.state_dict().items():
        if k.endswith(("self_attn.q_proj.weight", "mlp.fc1.weight")):
            name = "lora_te_" + k[len("clip_l.transformer."):-len(".weight")].replace(".", "_")
            sd[name + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.1
            sd[name + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.1
            sd[name + ".alpha"] = torch.tensor(2.0)
    return sd


def lycoris(handle, kind, seed=4):
    """LoHa / LoKr on the attention layers, LDM kohya names."""
    from lora_lab.nodes.lora.lora_keys import KeyIndex

    idx = KeyIndex(handle)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in unet_layers(handle):
        o, i = mod.weight.shape
        base = "lora_unet_" + idx.ldm_unet[name].replace(".", "_")
        if kind == "loha":
            for s, shape in (("w1_a", (o, 2)), ("w1_b", (2, i)), ("w2_a", (o, 2)), ("w2_b", (2, i))):
                sd[f"{base}.hada_{s}"] = torch.randn(shape, generator=g) * 0.3
        else:
            sd[f"{base}.lokr_w1"] = torch.randn(4, 4, generator=g) * 0.3
            sd[f"{base}.lokr_w2_a"] = torch.randn(o // 4, 2, generator=g) * 0.3
            sd[f"{base}.lokr_w2_b"] = torch.randn(2, i // 4, generator=g) * 0.3
        sd[f"{base}.alpha"] = torch.tensor(1.0)
    return sd


def locon(handle, seed=7):
    """kohya LoCon on every resnet 3x3 conv (plain) and a tucker (lora_mid) one, plus full diffs on the norms."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    convs = [(n, m) for n, m in handle.unet.named_modules() if n.endswith(("conv1", "conv2")) and "resnets" in n]
    for j, (name, mod) in enumerate(convs):
        o, i, kh, kw = mod.weight.shape
        base = "lora_unet_" + name.replace(".", "_")
        if j % 3 == 2:  # tucker
            sd[base + ".lora_down.weight"] = torch.randn(4, i, 1, 1, generator=g) * 0.1
            sd[base + ".lora_mid.weight"] = torch.randn(4, 4, kh, kw, generator=g) * 0.1
        else:
            sd[base + ".lora_down.weight"] = torch.randn(4, i, kh, kw, generator=g) * 0.1
        sd[base + ".lora_up.weight"] = torch.randn(o, 4, 1, 1, generator=g) * 0.1
        sd[base + ".alpha"] = torch.tensor(2.0)
    for name, mod in handle.unet.named_modules():
        if name.endswith("norm1") and "resnets" in name:
            base = "lora_unet_" + name.replace(".", "_")
            sd[base + ".w_norm"] = torch.randn(mod.weight.shape, generator=g) * 0.05
            sd[base + ".b_norm"] = torch.randn(mod.bias.shape, generator=g) * 0.05
    return sd


def dora_row(handle, seed=5):
    sd = kohya(handle, rank=4, alpha=4.0, seed=seed, with_te=False)
    g = torch.Generator().manual_seed(seed)
    for name, mod in unet_layers(handle):
        sd["lora_unet_" + name.replace(".", "_") + ".dora_scale"] = torch.rand(mod.weight.shape[0], 1, generator=g) + 0.5
    return sd


@pytest.fixture(scope="module")
def loras(tmp_path_factory, handle, clip):
    root = tmp_path_factory.mktemp("models")
    folder = root / "loras"
    folder.mkdir()
    files = {
        "kohya": {**kohya(handle, rank=4, seed=1, with_te=False), **te_kohya(clip)},
        "kohya_ldm": kohya(handle, rank=4, seed=2, ldm_names=True, with_te=False),
        "loha": lycoris(handle, "loha"),
        "lokr": lycoris(handle, "lokr"),
        "peft": peft_unet(handle, rank=4, seed=6),
        "dora_row": dora_row(handle),
        "locon": locon(handle),
    }
    for name, sd in files.items():
        save_file(sd, folder / f"{name}.safetensors")
    with paths.standalone_dirs(root, tmp_path_factory.mktemp("out")):
        yield files


def patched(patcher, comfy=None) -> dict:
    """The weights ComfyUI samples with. With `comfy`: each patched key through ComfyUI's own
    comfy.lora.calculate_weight on an fp32 copy, rounded to the weight's dtype (what
    ModelPatcher.patch_weight_to_device does, independent of what is loaded where); without:
    patch the model as ComfyUI does, copy the weights, unpatch."""
    if comfy is not None:
        out = {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}
        for key, patches in patcher.patches.items():
            w = out[key]
            out[key] = comfy.lora.calculate_weight(patches, w.to(torch.float32, copy=True), key).to(w.dtype)
        return out
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


def close(ours: dict, theirs: dict, what: str) -> float:
    """Largest |ours - theirs| of a tensor over that tensor's largest |value| (fp16's ulp is 2^-10 relative)."""
    worst, where = 0.0, None
    for k, w in ours.items():
        if not w.is_floating_point():
            continue
        d = ((w.double() - theirs[k].double()).abs().max() / theirs[k].double().abs().max().clamp_min(1e-12)).item()
        if d > worst:
            worst, where = d, k
    log.info("%s: max relative difference %.3g (%s)", what, worst, where)
    return worst


@pytest.mark.parametrize("fmt", ["kohya", "kohya_ldm", "loha", "lokr", "locon"])
def test_weights_equal_comfyui_lora_loader(comfy, model, clip, loras, fmt):
    base = patched(model)
    m_ours, c_ours, _, _ = LoraLabLoraLoaderModelClip().load(model, fmt, 0.8, 0.6, clip=clip)
    m_theirs, c_theirs = comfy.sd.load_lora_for_models(model, clip, loras[fmt], 0.8, 0.6)
    ours, theirs = patched(m_ours), patched(m_theirs)
    changed = sum(not torch.equal(ours[k], base[k]) for k in ours)
    assert changed == sum(not torch.equal(theirs[k], base[k]) for k in theirs)  # the same layers
    if fmt != "locon":
        assert changed == len(unet_layers(make_handle("sd1", 77)))
    assert close(ours, theirs, f"{fmt} UNet") <= FP16_REL
    if fmt == "kohya":
        t_ours, t_theirs = patched(c_ours.patcher, comfy), patched(c_theirs.patcher, comfy)
        assert close(t_ours, t_theirs, "kohya CLIP") <= FP16_REL
    assert patched(model).keys() == base.keys() and all(torch.equal(v, base[k]) for k, v in patched(model).items())


def test_peft_unet_and_row_dora_follow_the_published_formulas(comfy, model, clip, loras, handle):
    base = patched(model)
    idx = {n: "diffusion_model." + ldm + ".weight" for n, ldm in
           __import__("lora_lab.nodes.lora.lora_keys", fromlist=["KeyIndex"]).KeyIndex(handle).ldm_unet.items()}
    for fmt in ("peft", "dora_row"):
        s = 0.7
        m_ours, _, _, _ = LoraLabLoraLoaderModelClip().load(model, fmt, s, 0.0, clip=clip)
        m_theirs, _ = comfy.sd.load_lora_for_models(model, clip, loras[fmt], s, 0.0)
        ours, theirs = patched(m_ours), patched(m_theirs)
        sd = loras[fmt]
        worst_ours = worst_theirs = 0.0
        for name, _ in unet_layers(handle):
            key = idx[name]
            w0 = base[key].double()
            if fmt == "peft":
                up, down = sd[f"unet.{name}.lora_B.weight"].double(), sd[f"unet.{name}.lora_A.weight"].double()
                want = w0 + s * (up @ down)  # PEFT: alpha = rank unless the file says otherwise
            else:
                pre = "lora_unet_" + name.replace(".", "_")
                up, down = sd[pre + ".lora_up.weight"].double(), sd[pre + ".lora_down.weight"].double()
                m = sd[pre + ".dora_scale"].double()
                v = w0 + (4.0 / 4) * (up @ down)
                w_dora = m * v / v.norm(dim=1, keepdim=True)  # DoRA: W' = m · V / ‖V‖ (row norms of V = W0 + ΔW)
                want = w0 + s * (w_dora - w0)
            err_o = ((ours[key].double() - want).abs().max() / want.abs().max()).item()
            err_t = ((theirs[key].double() - want).abs().max() / want.abs().max()).item()
            worst_ours, worst_theirs = max(worst_ours, err_o), max(worst_theirs, err_t)
        log.info("%s: ours %.3g from the formula, ComfyUI's loader %.3g", fmt, worst_ours, worst_theirs)
        assert worst_ours <= 1e-6
        assert worst_theirs > 1e-3  # ComfyUI drops PEFT UNet keys / normalises DoRA by ‖W0‖


def test_ksampler_same_latent_for_a_kohya_lora(comfy, model, clip, loras):
    m_ours, _, _, _ = LoraLabLoraLoaderModelClip().load(model, "kohya_ldm", 1.0, 1.0, clip=clip)
    m_theirs, _ = comfy.sd.load_lora_for_models(model, clip, loras["kohya_ldm"], 1.0, 1.0)
    g = torch.Generator().manual_seed(11)
    pos, neg = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    latent = torch.zeros(1, 4, 8, 8)
    out = []
    for mp in (m_ours, m_theirs, model):
        noise = comfy.sample.prepare_noise(latent, 5)
        out.append(comfy.sample.sample(mp, noise, 4, 6.0, "euler", "normal", [[pos, {}]], [[neg, {}]], latent.clone(),
                                       seed=5, disable_pbar=True))
    ours, theirs, plain = out
    diff = (ours - theirs).abs().max().item()
    log.info("KSampler latent, ours vs ComfyUI's LoraLoader: max abs diff %.3g (bitwise equal: %s)", diff,
             torch.equal(ours, theirs))
    assert diff <= 1e-4 * ours.abs().max().item()
    assert (ours - plain).abs().max().item() > 1e-3  # the LoRA changed the result


def test_fp16_model_within_fp16_rounding(comfy, handle, clip, loras):
    """ComfyUI holding the UNet in fp16: our patches against its LoraLoader's, for two formats."""
    ldm = checkpoint_save.ldm_state_dict("sd1", handle.unet, handle.vae, handle.text_encoders)
    pre = "model.diffusion_model."
    cfg = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(ldm, pre))
    cfg.set_inference_dtype(torch.float16, None)
    base = cfg.get_model(ldm, pre, device=torch.device("cpu"))
    base.load_model_weights(ldm, pre)
    cpu = torch.device("cpu")
    mp = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    assert next(base.diffusion_model.parameters()).dtype == torch.float16
    for fmt in ("kohya", "locon"):
        m_ours, _, _, _ = LoraLabLoraLoaderModelClip().load(mp, fmt, 1.0, 1.0)
        m_theirs, _ = comfy.sd.load_lora_for_models(mp, None, loras[fmt], 1.0, 1.0)
        ours, theirs = patched(m_ours, comfy), patched(m_theirs, comfy)
        assert close(ours, theirs, f"{fmt} fp16 UNet") <= FP16_REL
        ulps = max(((ours[k].float() - theirs[k].float()).abs() > 0).sum().item() for k in ours)
        log.info("%s fp16: at most %d elements of a tensor one rounding step apart", fmt, ulps)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_unet_only_sd2_sdxl_equal_comfyui(comfy, family, tmp_path):
    """Model-only (no CLIP) on SD 2.x and SDXL UNets built by ComfyUI's own model classes."""
    h = make_handle(family, seed=78)
    ldm = checkpoint_save.ldm_state_dict(family, h.unet, h.vae, h.text_encoders)
    pre = "model.diffusion_model."
    cls = {"sd2": comfy.supported_models.SD20, "sdxl": comfy.supported_models.SDXL}[family]
    cfg = cls(comfy.model_detection.detect_unet_config(ldm, pre))
    cfg.unet_config["num_head_channels"] = 32  # ComfyUI's 64-wide heads: 0 heads on the tiny 32-wide levels
    base = cfg.get_model(ldm, pre, device=torch.device("cpu"))
    base.load_model_weights(ldm, pre)
    cpu = torch.device("cpu")
    mp = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    (tmp_path / "loras").mkdir()
    for name, sd in (("k", kohya(h, seed=3, with_te=False)), ("kl", kohya(h, seed=4, ldm_names=True, with_te=False))):
        save_file(sd, tmp_path / "loras" / f"{name}.safetensors")
        with paths.standalone_dirs(tmp_path, tmp_path / "out"):
            m_ours, c_ours, _, _ = LoraLabLoraLoaderModelClip().load(mp, name, 0.9, 0.0)
        m_theirs, _ = comfy.sd.load_lora_for_models(mp, None, sd, 0.9, 0.0)
        assert c_ours is None and len(m_ours.patches) == len(m_theirs.patches) == len(unet_layers(h))
        ours, theirs = patched(m_ours, comfy), patched(m_theirs, comfy)
        assert close(ours, theirs, f"{family} {name} UNet") <= FP16_REL


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_text_encoder_keys_exist_in_comfyui_clip_models(comfy, family):
    """Every text-encoder layer of our index maps to a key of ComfyUI's own SD 2.x / SDXL CLIP
    models (built on the meta device), with the same shape."""
    from lora_lab.nodes.lora import comfy_keys
    from lora_lab.nodes.lora.lora_keys import Target
    from lora_lab.nodes.lora.patcher import state_for

    sd2_clip = importlib.import_module("comfy.text_encoders.sd2_clip")
    sdxl_clip = importlib.import_module("comfy.sdxl_clip")
    with torch.device("meta"):
        clip_model = sdxl_clip.SDXLClipModel(device="meta") if family == "sdxl" else sd2_clip.SD2ClipModel(device="meta")
    clip_shapes = {k: tuple(v.shape) for k, v in clip_model.state_dict().items()}
    if family == "sdxl":  # SDXL's UNet takes the pooled bigG output: a full-size UNet beside full-size CLIPs
        from test_comfy_keys import reference

        ldm = reference("sdxl_checkpoint_keys.json")
    else:
        h = make_handle(family, seed=1)
        ldm = {k: tuple(v.shape) for k, v in checkpoint_save.ldm_state_dict(family, h.unet, h.vae, h.text_encoders).items()}
    unet = {k[len("model."):]: s for k, s in ldm.items() if k.startswith("model.diffusion_model.")}
    skeleton = comfy_keys.skeleton_from_comfy(unet, clip_shapes)
    assert skeleton.family == family
    st = state_for(skeleton)
    bad, n = [], 0
    for (comp, mod), module in st.modules.items():
        if comp == "unet" or getattr(module, "weight", None) is None:
            continue
        key = comfy_keys.comfy_key(family, st.index, Target(comp, mod), "weight")
        n += 1
        if clip_shapes.get(key) != tuple(module.weight.shape):
            bad.append((key, clip_shapes.get(key), tuple(module.weight.shape)))
    assert n > 150 and not bad, bad[:5]
