"""Checkpoint I/O: single-file SD 1.x / 2.x / SDXL checkpoints and diffusers folders -> ModelHandle.

Everything offline: configs come from tensor shapes (ckpt_config), key names from tables
(ckpt_keys), tokenizers from files shipped in the package. Models are built on the meta
device and the file's tensors are assigned into them, so a load holds one copy of the weights.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.byte_cache import ByteLRU, budget_from_env, module_bytes
from ..io.errors import CheckpointError
from ..io.safetensors_io import TensorSource
from . import ckpt_config, ckpt_keys
from .handle import ModelHandle

log = logging.getLogger(__name__)


@dataclass
class Converted:
    """A single-file checkpoint split into diffusers components (state dicts + configs)."""

    family: str
    prediction_type: str
    unet: dict
    vae: dict
    text: list  # [state dict per text encoder], canonical HF names (with "text_model.")
    unet_config: dict
    vae_config: dict
    text_configs: list
    non_model_keys: list = field(default_factory=list)  # known extras, consumed silently
    unused_keys: list = field(default_factory=list)  # anything else, reported


def convert_single_file(get, shapes: dict, metadata: dict | None = None) -> Converted:
    """Split an LDM-layout state dict into diffusers component state dicts.

    get(key) -> tensor; shapes {key: shape}. Tensors are fetched lazily, each exactly once.
    """
    family = ckpt_config.detect_family(shapes)
    probe = None
    if family == "sd2" and ckpt_config.SD2_V_PROBE in shapes:
        probe = float(get(ckpt_config.SD2_V_PROBE).float().std(unbiased=False))
    prediction = ckpt_config.detect_prediction_type(shapes, metadata, family, probe)
    unet_cfg = ckpt_config.infer_unet_config(shapes, family)
    vae_cfg = ckpt_config.infer_vae_config(shapes, family)
    text_cfgs = ckpt_config.infer_text_configs(shapes, family)

    non_model = [k for k in shapes if ckpt_keys.is_non_model_key(k, family)]
    skip = set(non_model)
    lazy = _LazyDict(get, [k for k in shapes if k not in skip])

    unet, left_unet = ckpt_keys.ldm_to_diffusers(lazy, ckpt_keys.unet_block_pairs(unet_cfg), ckpt_keys.UNET_PREFIX)
    vae, left_vae = ckpt_keys.ldm_to_diffusers(lazy, ckpt_keys.vae_block_pairs(vae_cfg), ckpt_keys.VAE_PREFIX)
    texts, left_text = [], []
    for (prefix, layout), cfg in zip(ckpt_keys.TEXT_PREFIXES[family], text_cfgs):
        if layout == "hf":
            sd, left = ckpt_keys.hf_clip_to_diffusers(lazy, prefix)
        else:
            sd, left = ckpt_keys.openclip_to_diffusers(lazy, prefix, with_projection=(family == "sdxl"))
        texts.append(sd)
        left_text += left
    known_prefixes = (ckpt_keys.UNET_PREFIX, ckpt_keys.VAE_PREFIX) + tuple(
        p for p, _ in ckpt_keys.TEXT_PREFIXES[family]
    )
    unused = left_unet + left_vae + left_text
    unused += [k for k in lazy.keys() if not k.startswith(known_prefixes)]
    return Converted(family, prediction, unet, vae, texts, unet_cfg, vae_cfg, text_cfgs, non_model, sorted(unused))


class _LazyDict(Mapping):
    """A read-only mapping over a tensor source; a value is read only when it is asked for."""

    def __init__(self, get, keys):
        self._get = get
        self._keys = list(keys)
        self._set = set(self._keys)

    def __getitem__(self, key):
        if key not in self._set:
            raise KeyError(key)
        return self._get(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


# ------------------------------------------------------------------------ building models
def _fit_clip_keys(model, sd: dict) -> dict:
    """transformers 5 flattened CLIPTextModel (no `text_model.`); older versions and
    CLIPTextModelWithProjection keep the prefix. Adapt the canonical names to the model."""
    if hasattr(model, "text_model"):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _assign(model, sd: dict, what: str, dtype, device, own: bool = False):
    """Load `sd` into a meta-built model by assignment (no second copy of the weights).

    own=True: a tensor that needs no dtype/device conversion is copied, so the model never
    holds a view of the source's memory (a safetensors file's memory map; see load_single_file).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        raise CheckpointError(
            f"{what}: the checkpoint does not fit the inferred layout "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]})"
        )
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{what}: tensor {k!r} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    cast = {}
    for k, v in sd.items():
        c = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        cast[k] = c.clone() if (own and c.data_ptr() == v.data_ptr()) else c
    model.load_state_dict(cast, strict=True, assign=True)
    # Non-persistent buffers stay on meta after an assign-load: rebuild them.
    for mod_name, mod in model.named_modules():
        for b_name, buf in list(mod.named_buffers(recurse=False)):
            if buf.is_meta:
                if b_name == "position_ids":
                    mod.register_buffer(b_name, torch.arange(buf.shape[-1], device=device).expand(buf.shape),
                                        persistent=False)
                else:
                    raise CheckpointError(f"{what}: buffer {mod_name}.{b_name} has no value")
    return model.eval().requires_grad_(False)


def vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype for a model loaded in `dtype`: fp16 becomes fp32.

    SD VAEs (SDXL's above all: its config says force_upcast) overflow fp16's range inside the
    decoder and give NaN, i.e. black images and NaN training latents. ComfyUI runs the VAE in
    bf16 or fp32 only, as diffusers' pipelines upcast it; bf16 has fp32's range and stays.
    """
    return torch.float32 if dtype == torch.float16 else dtype


def build_components(conv: Converted, dtype=torch.float32, device="cpu", own: bool = False) -> dict:
    """diffusers / transformers modules holding the converted weights (own: see _assign)."""
    from .hf_classes import clip_text_classes, unet_class, vae_class

    UNet2DConditionModel, AutoencoderKL = unet_class(), vae_class()
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection = clip_text_classes()

    with torch.device("meta"):
        unet = UNet2DConditionModel(**conv.unet_config)
        vae = AutoencoderKL(**conv.vae_config)
        encoders = []
        for i, cfg in enumerate(conv.text_configs):
            cls = CLIPTextModelWithProjection if (conv.family == "sdxl" and i == 1) else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg)))
    return {
        "unet": _assign(unet, conv.unet, "UNet", dtype, device, own),
        "vae": _assign(vae, conv.vae, "VAE", vae_dtype(dtype), device, own),
        "text_encoders": tuple(
            _assign(m, _fit_clip_keys(m, sd), f"text encoder {i + 1}", dtype, device, own)
            for i, (m, sd) in enumerate(zip(encoders, conv.text))
        ),
    }


def tokenizers_for(family: str) -> tuple:
    from .tokenizer import load_tokenizer

    kinds = {"sd1": ("clip_l",), "sd2": ("open_clip",), "sdxl": ("clip_l", "open_clip")}[family]
    return tuple(load_tokenizer(k) for k in kinds)


# ------------------------------------------------------------------------------- loading
def load_single_file(path: str | os.PathLike, dtype=torch.float32, device="cpu") -> ModelHandle:
    """A single-file checkpoint as a handle whose weights are its own memory.

    safetensors' get_tensor gives views of the file's memory map. A model left on those views
    (an fp16 file loaded in fp16: nothing to convert) would load faster, but its weights would
    change if the file were rewritten in place, and a truncated file would crash the process
    (SIGBUS) at the next read; the patcher's originals (what a restore puts back) would go with
    them. So such tensors are copied, as ComfyUI does: one read of the file either way, and the
    model no longer depends on the file. (A file replaced by a new one, as our writers do with a
    rename, gets a new mtime: the cache then loads it again.)
    """
    src = TensorSource(path)
    try:
        conv = convert_single_file(src.get, src.shapes, src.metadata)
        if conv.unused_keys:
            log.warning("%s: %d keys not used by any component, e.g. %s", Path(path).name,
                        len(conv.unused_keys), conv.unused_keys[:5])
        comps = build_components(conv, dtype=dtype, device=device, own=src.memory_mapped)
    except KeyError as e:  # the layout's tables name a tensor the file lacks
        raise CheckpointError(f"{Path(path).name}: tensor {e.args[0]!r} is missing: an incomplete or damaged "
                              "checkpoint (or a layout this loader does not know)") from None
    markers = sampling_markers(src, conv)
    return ModelHandle(
        family=conv.family,
        prediction_type=markers.pop("prediction_type", conv.prediction_type),
        unet=comps["unet"],
        vae=comps["vae"],
        text_encoders=comps["text_encoders"],
        tokenizers=tokenizers_for(conv.family),
        source=str(path),
        **markers,
    )


def sampling_markers(src, conv: Converted) -> dict:
    """ComfyUI's SDXL model_type rules: edm_vpred.* keys -> EDM v-prediction (sigma_min defaults to
    0.002, sigma_max to 120); otherwise `ztsnr` with `v_pred` -> zero terminal SNR."""
    if conv.family != "sdxl":
        return {}
    if "edm_vpred.sigma_max" in src.shapes:
        lo = float(src.get("edm_vpred.sigma_min").item()) if "edm_vpred.sigma_min" in src.shapes else 0.002
        return {"edm_vpred": (lo, float(src.get("edm_vpred.sigma_max").item())), "prediction_type": "v_prediction"}
    if "v_pred" in src.shapes and "ztsnr" in src.shapes:
        return {"zsnr": True}
    return {}


def load_diffusers_folder(folder: str | os.PathLike, dtype=torch.float32, device="cpu") -> ModelHandle:
    """A diffusers-format model folder (model_index.json + unet/ vae/ text_encoder*/), offline."""
    import json

    from .hf_classes import clip_text_classes, unet_class, vae_class

    UNet2DConditionModel, AutoencoderKL = unet_class(), vae_class()
    _, CLIPTextModel, CLIPTextModelWithProjection = clip_text_classes()

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder}: not a diffusers model folder (no model_index.json)")
    kw = dict(local_files_only=True, torch_dtype=dtype)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **{**kw, "torch_dtype": vae_dtype(dtype)})
        te1 = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
        encoders = [te1]
        if (folder / "text_encoder_2").is_dir():
            encoders.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", **kw))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load diffusers folder ({e})") from None
    if len(encoders) == 2:
        family = "sdxl"
    elif te1.config.hidden_act == "gelu":
        family = "sd2"
    else:
        family = "sd1"
    sched = folder / "scheduler" / "scheduler_config.json"
    prediction = "epsilon"
    if sched.is_file():
        prediction = json.loads(sched.read_text()).get("prediction_type", "epsilon")
    modules = [m.to(device).eval().requires_grad_(False) for m in (unet, vae, *encoders)]
    return ModelHandle(family, prediction, modules[0], modules[1], tuple(modules[2:]), tokenizers_for(family),
                       source=str(folder), text_layers_dropped=_dropped_layers(folder, family))


def _dropped_layers(folder: Path, family: str) -> int:
    """diffusers' SD 2.x text encoder keeps 23 of OpenCLIP-H's 24 layers (the penultimate
    output is all SD 2.x uses). A folder may say otherwise in model_index.json."""
    import json

    index = json.loads((folder / "model_index.json").read_text())
    if "lora_lab_text_layers_dropped" in index:
        return int(index["lora_lab_text_layers_dropped"])
    return 1 if family == "sd2" else 0


# Default byte budget of the checkpoint cache: two SDXL checkpoints in fp16 (~6.9 GB each).
CHECKPOINT_CACHE_BYTES = 14 << 30


def handle_bytes(handle: ModelHandle) -> int:
    return module_bytes(handle.unet, handle.vae, *handle.text_encoders)


class _LoadCache:
    """Reuse a loaded model while its file is unchanged (keyed by path, size and mtime).

    Bounded by bytes (the models' parameters and buffers), least recently used out; the
    budget is LORA_LAB_CHECKPOINT_CACHE_MB or CHECKPOINT_CACHE_BYTES. An evicted model stays
    alive while a graph still holds its handle; the cache only stops keeping it.
    """

    def __init__(self, budget_bytes: int | None = None):
        budget = budget_from_env("LORA_LAB_CHECKPOINT_CACHE_MB", CHECKPOINT_CACHE_BYTES) if budget_bytes is None \
            else budget_bytes
        self.lru = ByteLRU("checkpoints", budget, handle_bytes)
        self.loads = 0  # how many real loads happened (tests count them)

    def get(self, path: Path, dtype, device) -> ModelHandle:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(dtype), str(device))

        def load():
            self.loads += 1
            return (load_diffusers_folder if path.is_dir() else load_single_file)(path, dtype=dtype, device=device)

        return self.lru.get_or_load(key, load)

    def clear(self):
        self.lru.clear()


LOAD_CACHE = _LoadCache()


def load_checkpoint(path: str | os.PathLike, dtype=None, device=None) -> ModelHandle:
    """Load (or reuse) a checkpoint file or diffusers folder."""
    from .device import default_device, default_dtype

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    return LOAD_CACHE.get(path, dtype, device)
