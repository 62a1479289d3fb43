"""LoRA file tools: merge a stack into one LoRA (exact or SVD), resize, extract (tuned − base).

Every tool returns a LoraSet: kohya layer names -> LoraLayer (up/down/alpha, plus a bias
delta or a full delta for 1-D norm weights), the family, and metadata to keep; lora_save
writes it. All math is fp32 and reuses the adapter functions (one code path for the scale):

- exact merge: per layer the stack's factors are concatenated, each LoRA's strength ·
  alpha/rank folded in (√|c| into down, sign·√|c| into up) and alpha = total rank, so the
  merged file at strength 1 gives exactly the stack's ΔW. Layers whose adapters have no
  low-rank factors (LoHa, LoKr, full diff, DoRA, IA3) are factored by SVD at their numerical
  rank (lossless up to fp32 rounding).
- SVD merge / resize / extract: truncated SVD (Eckart–Young: the Frobenius error is the
  root-sum-square of the discarded singular values); a product up @ down is decomposed
  through two QR factorisations, never forming the full matrix.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import torch

from ..io.errors import LoraLabError
from ..lora.adapters import lora_scale
from ..lora.adapters_ortho import WEIGHT_KINDS
from .merge import apply_entries
from .merge_meta import lora_records

log = logging.getLogger(__name__)

METHODS = ("fixed", "sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """One layer: ΔW = alpha/rank · up @ down (up [out, r(,1,1)], down [r, in(, kh, kw)]),
    and/or a bias delta, and/or a full delta `diff` (1-D norm weights)."""

    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    alpha: float | None = None
    bias: torch.Tensor | None = None
    diff: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.down is None else int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        """A kernel larger than 1x1 (kohya's conv_dim applies)."""
        return self.down is not None and self.down.ndim == 4 and self.down.shape[2] * self.down.shape[3] > 1

    def delta(self) -> torch.Tensor:
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        w = self.up.reshape(self.up.shape[0], -1) @ self.down.reshape(self.rank, -1)
        return (w * scale).reshape(self.up.shape[0], *self.down.shape[1:])


@dataclass(frozen=True, eq=False)
class LoraSet:
    """What the LoRA tools pass along LORA_LAB_LORA edges (never mutated)."""

    family: str | None
    prediction_type: str
    layers: dict  # kohya layer name -> LoraLayer
    metadata: dict = field(default_factory=dict)  # kept from the sources (ss_*, modelspec.trigger_phrase, ...)
    comment: str = ""  # what made it; saved as ss_training_comment
    sources: tuple = ()  # merged_from records

    def __repr__(self) -> str:
        return f"LoraSet({self.family}, {len(self.layers)} layers, {self.comment!r})"


@dataclass(frozen=True)
class RankRule:
    """Target rank: fixed, or dynamic per layer (kohya's sv_ratio / sv_fro / sv_cumulative),
    `rank` (and `conv_rank` for kernels > 1x1; 0 = same as rank) capping it."""

    rank: int
    conv_rank: int = 0
    method: str = "fixed"
    param: float | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank!r}")
        if self.conv_rank < 0:
            raise ValueError(f"conv_rank must be 0 (same as rank) or more, got {self.conv_rank!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.method == "sv_ratio" and not (self.param and self.param >= 1):
            raise ValueError(f"sv_ratio needs a ratio >= 1 (largest / smallest kept), got {self.param!r}")
        if self.method in ("sv_fro", "sv_cumulative") and not (self.param and 0 < self.param <= 1):
            raise ValueError(f"{self.method} needs a fraction in (0, 1], got {self.param!r}")

    def pick(self, s: torch.Tensor, conv: bool) -> int:
        """How many singular values (descending `s`) to keep; 0 for a zero matrix."""
        if s.numel() == 0 or float(s[0]) <= 1e-12:
            return 0
        cap = self.conv_rank if (conv and self.conv_rank) else self.rank
        if self.method == "sv_ratio":
            k = int((s > s[0] / self.param).sum())
        elif self.method == "sv_fro":
            k = int(torch.searchsorted(torch.cumsum(s * s, 0) / (s * s).sum(), self.param ** 2)) + 1
        elif self.method == "sv_cumulative":
            k = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), self.param)) + 1
        else:
            k = cap
        return max(1, min(k, cap, s.numel()))


# ---------------------------------------------------------------------------------- math
def product_svd(up: torch.Tensor, down: torch.Tensor):
    """SVD (U, S, Vh) of up [out, R] @ down [R, in] via QR of both factors: O((out+in)·R²)."""
    qa, ra = torch.linalg.qr(up)
    qb, rb = torch.linalg.qr(down.t())
    u, s, vh = torch.linalg.svd(ra @ rb.t(), full_matrices=False)
    return qa @ u, s, vh @ qb.t()


def numerical_rank(s: torch.Tensor, shape) -> int:
    if s.numel() == 0:
        return 0
    tol = float(s[0]) * max(shape) * torch.finfo(torch.float32).eps
    return int((s > tol).sum())


def layer_from_svd(u, s, vh, k: int, wshape: tuple, alpha_per_rank: float = 1.0) -> LoraLayer:
    """Keep k singular triplets; √s goes to each side. ΔW = alpha/k · up @ down, alpha = k·alpha_per_rank
    (so up @ down must equal ΔW / alpha_per_rank: callers pass the matrix divided accordingly)."""
    root = s[:k].sqrt()
    up = (u[:, :k] * root).contiguous()
    down = (root[:, None] * vh[:k]).contiguous()
    if len(wshape) == 4:
        up, down = up.reshape(wshape[0], k, 1, 1), down.reshape(k, *wshape[1:])
    return LoraLayer(up, down, float(k * alpha_per_rank))


def lora_factors(a, rows: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in·kh·kw]) of a LoRA adapter, unscaled; a tucker core is folded
    into down; `rows` takes that row block of a fused (q/k/v) target."""
    up, down = a.tensors["up"], a.tensors["down"]
    up2 = up.reshape(up.shape[0], -1)
    if rows is not None:
        up2 = up2[rows[0]:rows[1]]
    r = down.shape[0]
    if "mid" in a.tensors:
        mid = a.tensors["mid"]  # [r_up, r, kh, kw]
        down2 = torch.einsum("i j k l, j c -> i c k l", mid, down.reshape(r, -1)).reshape(mid.shape[0], -1)
    else:
        down2 = down.reshape(r, -1)
    return up2, down2


def factorable(a) -> bool:
    return a.kind == "lora" and a.dora_scale is None


# ----------------------------------------------------------------------------- merging
def _stack_delta(st, key: tuple, entries: tuple, wshape: tuple) -> torch.Tensor:
    """ΔW of the whole stack on one weight (fp32); the base weight is read only when needed."""
    if any(a.dora_scale is not None or a.kind in ("ia3", *WEIGHT_KINDS) for a, _, _ in entries):
        param = st.modules[key[:2]].weight
        if param.device.type == "meta":
            raise LoraLabError(f"{key[1]}: DoRA / IA3 / OFT / BOFT / GLoRA layers need the model's weights; "
                               "load the checkpoint")
        w0 = st.originals.get(key, param.data).detach().float().cpu()
        return apply_entries(w0, entries, "weight") - w0
    return apply_entries(torch.zeros(wshape), entries, "weight")


def _merge_weight(st, key, entries, wshape, mode, rule) -> LoraLayer | None:
    out = wshape[0]
    conv = len(wshape) == 4 and wshape[2] * wshape[3] > 1
    if all(factorable(a) for a, _, _ in entries):
        ups, downs = [], []
        for a, s, rows in entries:
            up2, down2 = lora_factors(a, rows)
            c = s * lora_scale(a)
            root = math.sqrt(abs(c))
            ups.append(up2 * math.copysign(root, c))
            downs.append(down2 * root)
        up, down = torch.cat(ups, 1), torch.cat(downs, 0)
        if mode == "exact":
            r = down.shape[0]
            if len(wshape) == 4:
                up, down = up.reshape(out, r, 1, 1), down.reshape(r, *wshape[1:])
            return LoraLayer(up.contiguous(), down.contiguous(), float(r))
        u, s, vh = product_svd(up, down)
    else:
        u, s, vh = torch.linalg.svd(_stack_delta(st, key, entries, wshape).reshape(out, -1), full_matrices=False)
    k = numerical_rank(s, (out, math.prod(wshape[1:]))) if mode == "exact" else rule.pick(s, conv)
    return layer_from_svd(u, s, vh, k, wshape) if k else None


def merged_metadata(metas: list[dict]) -> dict:
    """Metadata kept from several LoRAs: tag frequencies summed per folder and tag, dataset
    folders united, trigger phrases joined, descriptive ss_ keys of the first."""
    out: dict = {}
    freq: dict = {}
    dirs: dict = {}
    triggers = []
    for m in metas:
        for key, target in (("ss_tag_frequency", freq), ("ss_dataset_dirs", dirs)):
            try:
                data = json.loads(m.get(key) or "{}")
            except json.JSONDecodeError:
                data = {}
            for folder, value in (data.items() if isinstance(data, dict) else ()):
                if key == "ss_dataset_dirs":
                    target.setdefault(folder, value)
                    continue
                tags = target.setdefault(folder, {})
                for tag, n in (value or {}).items():
                    tags[tag] = tags.get(tag, 0) + int(n)
        t = (m.get("modelspec.trigger_phrase") or "").strip()
        if t and t not in triggers:
            triggers.append(t)
    if freq:
        out["ss_tag_frequency"] = json.dumps(freq)
    if dirs:
        out["ss_dataset_dirs"] = json.dumps(dirs)
    if triggers:
        out["modelspec.trigger_phrase"] = ", ".join(triggers)
    for k in ("ss_sd_model_name", "ss_clip_skip", "ss_resolution", "modelspec.resolution"):
        if metas and metas[0].get(k):
            out[k] = metas[0][k]
    return out


def merge_stack(handle, mode: str = "exact", rule: RankRule | None = None) -> LoraSet:
    """The handle's whole LoRA stack (strengths and block weights folded in) as one LoRA."""
    from ..lora.lora_keys import kohya_name
    from ..lora.patcher import plan, state_for

    if mode not in ("exact", "svd"):
        raise ValueError(f"unknown mode {mode!r}; expected 'exact' or 'svd'")
    if mode == "svd" and rule is None:
        raise ValueError("svd mode needs a RankRule")
    st, want = state_for(handle), plan(handle)
    if not want:
        raise LoraLabError("the model carries no LoRA (or only at strength 0): nothing to merge")
    groups: dict = {}
    for (comp, mod, pname), entries in want.items():
        groups.setdefault((comp, mod), {})[pname] = entries
    layers = {}
    with torch.no_grad():
        for (comp, mod), params in sorted(groups.items()):
            wshape = tuple(st.modules[(comp, mod)].weight.shape)
            lay = None
            if "weight" in params:
                key = (comp, mod, "weight")
                if len(wshape) == 1:
                    lay = LoraLayer(diff=_stack_delta(st, key, params["weight"], wshape))
                else:
                    lay = _merge_weight(st, key, params["weight"], wshape, mode, rule)
            if "bias" in params:
                bias = apply_entries(torch.zeros(wshape[0]), params["bias"], "bias")
                lay = LoraLayer(lay.up, lay.down, lay.alpha, bias, lay.diff) if lay else LoraLayer(bias=bias)
            if lay is not None:
                layers[kohya_name(handle.family, st.index, comp, mod)] = lay
    how = "exact (ranks concatenated)" if mode == "exact" else f"SVD to rank {rule.rank} ({rule.method})"
    names = ", ".join(f"{p.name}:{p.strength_unet:g}:{p.strength_text:g}" for p in handle.patches)
    meta = merged_metadata([p.raw.metadata for p in handle.patches])
    return LoraSet(handle.family, handle.prediction_type, layers, meta, f"merged {how} from {names}",
                   tuple(lora_records(handle)))
