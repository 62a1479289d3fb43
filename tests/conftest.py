"""Shared fixtures: tiny single-file checkpoints of every family with the real key layouts."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lora_lab.nodes.model import checkpoint_save, tiny_models
from lora_lab.nodes.model.handle import ModelHandle

# transformers warns about bos/eos ids on tiny vocabularies; keep test logs readable.
logging.getLogger("transformers").setLevel(logging.ERROR)

FAMILIES = ("sd1", "sd2", "sdxl")
FIXTURES = Path(__file__).parent / "fixtures"


def load_fake_nodes():
    """tests/fixtures/fake_nodes.py as a module (tests/ is not a package), loaded once."""
    import importlib.util
    import sys

    name = "lora_lab_test_fake_nodes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES / "fake_nodes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread is as fast, and steadier on a shared machine (no OpenMP
    wake-up stalls on every small op). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_handle(family: str, seed: int = 0, prediction_type: str = "epsilon") -> ModelHandle:
    unet, vae, encoders = tiny_models.build_components(family, seed=seed)
    from lora_lab.nodes.model.checkpoint import tokenizers_for

    return ModelHandle(family, prediction_type, unet, vae, encoders, tokenizers_for(family), source=f"tiny-{family}")


@pytest.fixture(scope="session")
def tiny_handles():
    """{family: ModelHandle} built in memory (seeded)."""
    return {f: make_handle(f, seed=i + 1) for i, f in enumerate(FAMILIES)}


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_handles):
    """{family: path} of single-file .safetensors written from tiny_handles."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for fam, h in tiny_handles.items():
        out[fam] = checkpoint_save.save_single_file(root / f"tiny-{fam}.safetensors", h)
    return out


@pytest.fixture
def lora_dir(tmp_path, tiny_handles):
    """A models folder whose loras/ holds fox.safetensors (a rank-4 kohya LoRA for the tiny SD 1.5),
    set as the standalone model and output folders for the test; yields the loras folder."""
    from lora_factory import kohya
    from safetensors.torch import save_file

    from lora_lab.nodes.io import paths

    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    save_file(kohya(tiny_handles["sd1"], rank=4, seed=3), folder / "fox.safetensors")
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield folder


@pytest.fixture
def demo_models(tmp_path):
    """A models folder whose checkpoints/ holds the demo checkpoint under A1111's default SD 1.5
    name (v1-5-pruned-emaonly.safetensors), set as the standalone model and output folders."""
    import shutil

    from lora_lab.nodes.demo.demo import ensure_demo_checkpoint
    from lora_lab.nodes.io import paths

    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    with paths.standalone_dirs(root, tmp_path / "out"):
        shutil.copy(ensure_demo_checkpoint(), root / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
        yield root


def write_diffusers_config_folder(folder: Path, handle: ModelHandle) -> Path:
    """A weightless diffusers model folder (configs + tokenizers), what from_single_file(config=) needs."""
    folder.mkdir(parents=True, exist_ok=True)
    sdxl = handle.family == "sdxl"
    handle.unet.save_config(folder / "unet")
    handle.vae.save_config(folder / "vae")
    names = ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"]
    toks = ["tokenizer", "tokenizer_2"] if sdxl else ["tokenizer"]
    for name, tname, enc, tok in zip(names, toks, handle.text_encoders, handle.tokenizers):
        enc.config.save_pretrained(folder / name)
        tok.save_pretrained(folder / tname)
    sched = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "prediction_type": handle.prediction_type, "timestep_spacing": "leading", "steps_offset": 1}
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names of tensors that differ (bitwise) or are missing on one side."""
    sa, sb = a.state_dict(), b.state_dict()
    bad = sorted(set(sa) ^ set(sb))
    bad += [k for k in sa if k in sb and (sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k]))]
    return bad
