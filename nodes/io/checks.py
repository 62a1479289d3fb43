"""Shared input checks: one strength range for every node and option, finite tensors, and
values that fit the dtype they are written in. Each raises an error naming where the value
came from (node and input, or file and tensor) and the value itself."""
from __future__ import annotations

import math

import torch

from .errors import LoraLabError, NodeInputError

# Load LoRA's widget range; the stack text, prompt tags, LORA_STACK edges, sweeps and the
# CLI's --lora use the same one (past 10 a LoRA only saturates or overflows). ComfyUI's own
# LoraLoader ids, which the runner also runs, keep ComfyUI's schema: COMFY_STRENGTH_MAX.
STRENGTH_MIN, STRENGTH_MAX = -10.0, 10.0
COMFY_STRENGTH_MAX = 100.0


class NonFiniteError(LoraLabError, ValueError):
    """A tensor holds NaN or inf (a file's, or a result that would overflow its dtype)."""


def check_strength(value, node: str, input_name: str, what: str = "strength", shown=None,
                   limit: float = STRENGTH_MAX) -> float:
    """`value` as a float in [-limit, limit] (our nodes: STRENGTH_MIN..STRENGTH_MAX); NaN, inf
    and text refused.

    what: how the message calls it ("LoRA 'x': UNet strength"); shown: the input value to
    quote (the whole stack line, say) when it is not `value` itself."""
    shown = value if shown is None else shown
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise NodeInputError(node, input_name, shown, f"{what} {value!r} is not a number") from None
    if not math.isfinite(v):
        raise NodeInputError(node, input_name, shown, f"{what} {value!r} is not a finite number")
    if not -limit <= v <= limit:
        raise NodeInputError(node, input_name, shown, f"{what} {value!r} is outside {-limit:g}..{limit:g}")
    return v


def first_nonfinite(t: torch.Tensor):
    """The first NaN/inf value of a floating tensor (as a float), or None when all are finite."""
    if not t.is_floating_point() or t.numel() == 0:
        return None
    # NaN propagates through min/max and inf is an extreme: one reduction, no bool temporary
    # (isfinite().all() on an fp16 LoRA cost ~500x more: 1.6 s against 3 ms for 37M values)
    lo, hi = torch.aminmax(t.detach())
    if math.isfinite(float(lo)) and math.isfinite(float(hi)):
        return None
    ok = torch.isfinite(t)
    return float(t.reshape(-1)[(~ok).reshape(-1).nonzero()[0, 0]])


def check_finite(t: torch.Tensor, file: str, name: str) -> None:
    """Refuse a tensor holding NaN or inf, naming the file, the tensor and the value."""
    bad = first_nonfinite(t)
    if bad is not None:
        n = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{file}: tensor {name!r} holds {bad} ({n} of {t.numel()} values are not finite)")


def check_fits(t: torch.Tensor, dtype: torch.dtype, file: str, name: str) -> None:
    """Refuse a result (any float dtype) that is not finite or exceeds `dtype`'s range."""
    check_finite(t, file, name)
    if dtype is None or not dtype.is_floating_point or not t.is_floating_point() or t.numel() == 0:
        return
    limit = torch.finfo(dtype).max
    lo, hi = torch.aminmax(t.detach())
    peak = max(-float(lo), float(hi))
    if peak > limit:
        raise NonFiniteError(f"{file}: tensor {name!r} reaches {peak:.4g}, beyond "
                             f"{str(dtype).replace('torch.', '')}'s range ({limit:.4g}): it would be "
                             f"written as inf (lower the strengths, or save in another dtype)")
