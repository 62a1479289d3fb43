"""Resize a LoRA file and extract a LoRA from two models (truncated SVD, see lora_tools).

resize_lora: per layer, the SVD of up @ down; keep a fixed rank or a dynamic one (sv_ratio,
sv_fro, sv_cumulative, capped by the rank); alpha = old alpha/rank · new rank, so each
layer keeps its scale. Layer names stay as they are (a file's own names, read with
lora_save.lora_set_from_raw, which accepts LoRA / LoCon layers, tucker cores folded in).

extract_lora: ΔW = tuned − base for the layers kohya's LoRA trains (transformer blocks'
Linear and 1x1 convs, text encoders' attention and MLP; with conv_rank > 0 also the resnet,
down- and upsampler layers, 3x3 convs at conv_rank), each model's own LoRA stack included,
so extracting from (model, model + LoRAs) turns a stack into one LoRA. A text encoder whose
largest change is below min_diff is left out, as kohya does.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from ..io.checks import check_finite
from ..io.errors import LoraLabError
from ..model.handle import held_below_fp32, is_skeleton
from .lora_tools import LoraLayer, LoraSet, RankRule, layer_from_svd, product_svd
from .merge import apply_entries, source_weights

log = logging.getLogger(__name__)


def resize_lora(lset: LoraSet, rule: RankRule) -> LoraSet:
    """A resized copy of a LoraSet (from lora_save.lora_set_from_raw, or another tool)."""
    layers = {}
    old_ranks = set()
    with torch.no_grad():
        for name, lay in lset.layers.items():
            if lay.down is None:  # a full diff of a norm layer, or a bias alone: nothing to resize
                layers[name] = lay
                continue
            old_ranks.add(lay.rank)
            for part, t in (("up", lay.up), ("down", lay.down)):  # an SVD of NaN/inf is a LinAlgError
                check_finite(t, "the LoRA to resize", f"{name}.{part}")
            wshape = (lay.up.shape[0], *lay.down.shape[1:])
            u, s, vh = product_svd(lay.up.reshape(wshape[0], -1), lay.down.reshape(lay.rank, -1))
            k = rule.pick(s, lay.is_conv)
            if k == 0:
                continue
            scale = 1.0 if lay.alpha is None else lay.alpha / lay.rank
            new = layer_from_svd(u, s, vh, k, wshape, alpha_per_rank=scale)
            layers[name] = LoraLayer(new.up, new.down, new.alpha, lay.bias)
    old = max(old_ranks) if old_ranks else 0
    if rule.method == "fixed":
        conv = f" (conv: {rule.conv_rank})" if rule.conv_rank and rule.conv_rank != rule.rank else ""
        comment = f"dimension is resized from {old} to {rule.rank}{conv}"
    else:
        comment = f"Dynamic resize with {rule.method}: {rule.param} from {old}, max rank {rule.rank}"
    prev = lset.comment
    return LoraSet(lset.family, lset.prediction_type, layers, dict(lset.metadata),
                   f"{comment}; {prev}" if prev else comment, lset.sources)


# ------------------------------------------------------------------------------ extract
def extract_kind(comp: str, name: str, module) -> str | None:
    """'linear', 'conv', 'conv_block' (a 1x1/Linear layer of a resnet: only with conv layers) or None."""
    if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        return None
    if comp != "unet":
        return "linear" if (".self_attn." in name or ".mlp." in name) else None
    big = isinstance(module, torch.nn.Conv2d) and module.kernel_size[0] * module.kernel_size[1] > 1
    if ".attentions." in name:
        return None if big else "linear"
    if ".resnets." in name or ".downsamplers." in name or ".upsamplers." in name:
        return "conv" if big else "conv_block"
    return None


def _effective(st, want: dict, key: tuple, read=None) -> torch.Tensor:
    """A weight as its handle sees it (the base plus that handle's LoRAs), fp32 on the CPU.

    read: merge.source_weights' reader, for a model loaded below fp32 (or not loaded): the
    base value then comes from the file in fp32, so bf16 rounding does not drown a
    fine-tune's small differences."""
    param = getattr(st.modules[key[:2]], key[2])
    if read is not None:
        w = read(key)
    elif param.device.type == "meta":
        raise LoraLabError("extracting needs both models' weights; load the checkpoints")
    else:
        w = st.originals.get(key, param.data).detach().float().cpu()
    entries = want.get(key)
    return apply_entries(w, entries, key[2]) if entries else w


@contextlib.contextmanager
def _fp32_source(handle):
    """source_weights' reader for a model held below fp32 (or not loaded), else None."""
    if not held_below_fp32(handle):
        yield None
        return
    with source_weights(handle) as read:
        if read is None and not is_skeleton(handle):
            log.warning("%s is loaded in %s and its source cannot be read again in fp32: the extraction "
                        "sees rounded weights (load both models in fp32 for an exact difference)",
                        _label(handle), str(handle.unet.dtype).replace("torch.", ""))
        yield read


def extract_lora(base, tuned, rule: RankRule, min_diff: float = 0.01, use_conv: bool = False) -> LoraSet:
    """A LoRA approximating tuned − base (both ModelHandles, their LoRA stacks included)."""
    from ..lora.lora_keys import kohya_name
    from ..lora.patcher import plan, state_for

    if base.family != tuned.family:
        raise LoraLabError(f"cannot extract between a {base.label} and a {tuned.label} model")
    sb, stt = state_for(base), state_for(tuned)
    wb, wt = plan(base), plan(tuned)
    todo = []
    for (comp, name), mod in sorted(sb.modules.items()):
        kind = extract_kind(comp, name, mod)
        if kind is None or (kind in ("conv", "conv_block") and not use_conv):
            continue
        other = stt.modules.get((comp, name))
        if other is None or tuple(other.weight.shape) != tuple(mod.weight.shape):
            raise LoraLabError(f"the two models differ in layout at {comp} {name}")
        todo.append((comp, name, kind))
    with contextlib.ExitStack() as stack, torch.no_grad():
        rb, rt = (stack.enter_context(_fp32_source(h)) for h in (base, tuned))
        biggest: dict = {}
        for comp, name, _ in todo:  # pass 1: how much each text encoder changed
            if comp != "unet":
                key = (comp, name, "weight")
                d = float((_effective(stt, wt, key, rt) - _effective(sb, wb, key, rb)).abs().max())
                biggest[comp] = max(biggest.get(comp, 0.0), d)
        skipped = sorted(c for c, d in biggest.items() if d < min_diff)
        for comp in skipped:
            log.info("text encoder %s changed by at most %.3g < min_diff %g: not extracted",
                     comp, biggest[comp], min_diff)
        layers = {}
        for comp, name, kind in todo:
            if comp in skipped:
                continue
            key = (comp, name, "weight")
            delta = _effective(stt, wt, key, rt) - _effective(sb, wb, key, rb)
            wshape = tuple(delta.shape)
            u, s, vh = torch.linalg.svd(delta.reshape(wshape[0], -1), full_matrices=False)
            k = rule.pick(s, conv=(kind == "conv"))
            if k:
                layers[kohya_name(base.family, sb.index, comp, name)] = layer_from_svd(u, s, vh, k, wshape)
    if not layers:
        raise LoraLabError("the two models are identical in every layer a LoRA can hold")
    names = f"{_label(tuned)} - {_label(base)}"
    comment = f"extracted by SVD (rank {rule.rank}, conv rank {rule.conv_rank if use_conv else 'none'}) from {names}"
    meta = {"ss_sd_model_name": _label(base)}
    return LoraSet(base.family, base.prediction_type, layers, meta, comment,
                   ({"name": _label(tuned), "role": "tuned"}, {"name": _label(base), "role": "base"}))


def _label(handle) -> str:
    from pathlib import Path

    name = Path(handle.source).name if handle.source else "model"
    if handle.patches:
        name += " + " + ", ".join(p.name for p in handle.patches)
    return name
