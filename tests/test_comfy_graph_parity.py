"""ComfyUI's own graphs on a full-size (random-weight) SD 1.5 checkpoint give the same latent in
ComfyUI and in `lora-lab run` (64x64 px, 2-3 steps): the default graph, a LoraLoader graph,
img2img, inpainting (SetLatentNoiseMask, and VAEEncodeForInpaint) and a two-pass hires fix.

Runs only when COMFYUI_DIR points at a ComfyUI checkout that imports in this interpreter, e.g.

    COMFYUI_DIR=/work/comfy /work/comfy/.venv/bin/python -m pytest tests/test_comfy_graph_parity.py

The checkpoint is written by ComfyUI ("comfyui"): random seeded weights in its own model
classes (supported_models.SD15 -> BaseModel, SD1ClipModel, its AutoencoderKL), saved in fp16 by
CheckpointSave's save_checkpoint. A second checkpoint ("lora_lab": diffusers' classes written
by our save_single_file) checks that ComfyUI reads our writer's file as we do.

Both sides run the same API graph JSON, each through its own executor: ComfyUI's
execution.PromptExecutor (validate_prompt, then execute, as its prompt worker does) and our
CLI (`lora-lab run GRAPH... --json`, lora_lab.nodes.cli.main). The graphs end in SaveLatent
and VAEDecode -> SaveImage; the runner has no SaveLatent, so the test hands it a test-only
one (comfy_sd15.SaveLatentForTest). ComfyUI runs first and lets its model go before ours
loads: one full-size model in memory at a time (~4.5 GB in fp32).

Its CLIP and attention kernels are its own implementations, so latents agree to a tolerance,
not bit for bit (the max difference and the latent's std are logged).

ComfyUI is loaded with --fp32-text-enc. On a CPU its default keeps the text encoder's weights
in fp16 (model_management.text_encoder_dtype) while the UNet runs in fp32; a fp16 checkpoint
loses nothing by that, but a LoRA's patched text-encoder weights are then rounded to fp16,
which moves the latent of the LoRA graph by ~5e-4 relative (measured: 0.051 at latent std 97).
We keep fp32 weights on a CPU, as ComfyUI does with --fp32-text-enc.

Heavy: builds and writes a ~2 GB checkpoint per writer, minutes on a CPU.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import comfy_sd15 as cs
import pytest
import torch

log = logging.getLogger(__name__)

TOL = 2e-3  # max |difference| of latents; measured values are logged
LORA = "fox.safetensors"


def _comfy_root() -> str:
    root = os.environ.get("COMFYUI_DIR")
    if not root or not os.path.isfile(os.path.join(root, "nodes.py")):
        pytest.skip("COMFYUI_DIR is not set to a ComfyUI checkout")
    try:
        cs.import_comfy(root)
    except (ImportError, RuntimeError, OSError, AttributeError) as e:
        pytest.skip(f"ComfyUI does not import here: {e!r}")
    return root


def ours_sd15(path):
    """A random-weight SD 1.5 in diffusers' classes written by our save_single_file (fp16), seeded:
    the construction bench/sample_sides.py writes for its ComfyUI row (one copy of it, there)."""
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        import sample_sides
    finally:
        sys.path.remove(bench)
    sample_sides.write_full_size_sd15(path)
    return path


def header_state_dict(path) -> dict:
    """The file's tensors as meta tensors (names, shapes, dtypes; nothing read)."""
    from safetensors import safe_open

    dtypes = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16, "I64": torch.int64}
    with safe_open(str(path), "pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), dtype=dtypes[f.get_slice(k).get_dtype()], device="meta")
                for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


@pytest.fixture(scope="module", params=["comfyui", "lora_lab"])
def runs(request, tmp_path_factory):
    """Per writer: the checkpoint's header, and each graph's (ComfyUI, ours) latents and pictures."""
    _comfy_root()
    writer = request.param
    base = tmp_path_factory.mktemp(f"sd15-{writer}")
    models, input_dir, graphs_dir = base / "models", base / "input", base / "graphs"
    out_comfy, out_ours = base / "out-comfyui", base / "out-ours"
    for d in (models / "checkpoints", models / "loras", input_dir, graphs_dir, out_comfy, out_ours):
        d.mkdir(parents=True)
    if writer == "comfyui":
        ckpt = cs.comfy_sd15_checkpoint(models / "checkpoints", "sd15-random")
    else:
        ckpt = ours_sd15(models / "checkpoints" / "sd15-random.safetensors")
    from safetensors.torch import save_file

    save_file(cs.kohya_lora_from_file(ckpt), models / "loras" / LORA)
    cs.write_picture(input_dir / cs.PICTURE)
    graphs = {kind: cs.api_graph(kind, ckpt.name, LORA) for kind in cs.KINDS}
    files = []
    for kind, graph in graphs.items():
        files.append(graphs_dir / f"{kind}.json")
        files[-1].write_text(json.dumps(graph, indent=1))

    cs.point_comfy_at(models, input_dir, out_comfy)
    cs.run_in_comfyui(graphs)  # its model is released before ours loads
    summary = cs.run_in_lora_lab(files, models, input_dir, out_ours)
    pictures = {}
    for rec in summary["runs"]:
        pngs = [f for f in rec["files"] if f.endswith(".png")]
        assert len(pngs) == 1, rec
        pictures[os.path.basename(rec["graph"]).removesuffix(".json")] = pngs[0]
    result = {"writer": writer, "header": header_state_dict(ckpt), "graphs": {}}
    for kind in cs.KINDS:
        result["graphs"][kind] = (cs.read_latent(out_comfy / "latents" / f"{kind}_00001_.latent"),
                                  cs.read_latent(out_ours / "latents" / f"{kind}.latent"),
                                  _pixels(out_comfy / f"{kind}_00001_.png"), _pixels(pictures[kind]))
    ckpt.unlink()
    yield result


def _pixels(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.int16).copy())


def test_checkpoint_is_what_comfyui_detects(runs):
    """The file ComfyUI (or we) wrote: fp16 weights, and ComfyUI's model detection reads SD 1.5's
    UNet config off it (the one the ComfyUI writer built). Our writer also keeps CLIP's int64
    position_ids (as SD 1.5's own release does); ComfyUI's drops them."""
    detection, supported = sys.modules["comfy.model_detection"], sys.modules["comfy.supported_models"]
    sd = runs["header"]
    assert {t.dtype for t in sd.values() if t.dtype.is_floating_point} == {torch.float16}
    assert {k for k, t in sd.items() if not t.dtype.is_floating_point} <= {
        "cond_stage_model.transformer.text_model.embeddings.position_ids"}
    unet = detection.detect_unet_config(sd, "model.diffusion_model.")
    assert {k: v for k, v in unet.items() if k != "dtype"} == cs.SD15_UNET
    assert type(detection.model_config_from_unet_config(unet, sd)) is supported.SD15
    assert any(k.startswith("first_stage_model.decoder.") for k in sd)
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.11.") for k in sd)


@pytest.mark.parametrize("kind", cs.KINDS)
def test_graph_matches_comfyui(runs, kind):
    a, b, pa, pb = runs["graphs"][kind]
    assert a.shape == b.shape == ((1, 4, 16, 16) if kind == "hires" else (1, 4, 8, 8))
    diff = float((a - b).abs().max())
    pix = int((pa - pb).abs().max())
    log.warning("%s/%s: max |ComfyUI - ours| = %.3g (latent std %.3g); picture max diff %d/255",
                runs["writer"], kind, diff, float(a.std()), pix)
    assert diff < TOL
    assert pix <= 1


def test_graphs_differ(runs):
    """The comparisons can fail: the LoRA, the masks and the second pass each move the latent by
    far more than the tolerance."""
    g = {k: v[0] for k, v in runs["graphs"].items()}
    assert float((g["lora"] - g["default"]).abs().max()) > 100 * TOL
    assert float((g["inpaint"] - g["inpaint_vae"]).abs().max()) > 100 * TOL
    assert float((g["img2img"] - g["inpaint"]).abs().max()) > 100 * TOL
