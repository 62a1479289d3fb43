"""Adapter math: one small pure function per adapter kind, giving the weight delta.

Every function takes fp32 tensors and returns ΔW already multiplied by its own file scale
(alpha / rank and the like) but NOT by the user's strength; `apply_adapter` combines them.
Used by patching, merging and export alike, so the scale has one code path.

Shapes: a Linear weight is [out, in]; a Conv2d weight [out, in, kh, kw].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .adapters_ortho import WEIGHT_KINDS, transformed_weight

KINDS = ("lora", "loha", "lokr", "diff", "ia3", "oft", "boft", "glora")  # the last three: adapters_ortho.py


@dataclass(frozen=True, eq=False)  # identity equality: tensors are not compared
class Adapter:
    """One adapter on one parameter: `kind` + its tensors + file scale facts.

    tensors by kind:
      lora: up [out, r(, 1, 1)], down [r, in(, kh, kw)], mid [r, r, kh, kw] (tucker, optional)
      loha: w1a [out, r], w1b [r, in*k], w2a, w2b (+ t1, t2 [r, r, kh, kw] for tucker)
      lokr: w1 or (w1a, w1b); w2 or (w2a, w2b); t2 (tucker, optional)
      diff: diff (full ΔW; also used for norm layers' w_norm)
      ia3:  weight (per-channel scale), with on_input telling the axis
      oft:  blocks [k, b, b] (+ rescale); boft: blocks [m, k, b, b] (+ rescale); alpha = constraint
      glora: a1, a2, b1, b2 (ΔW depends on W0: adapters_ortho.py)
    bias: optional Δb [out] (diff_b, b_norm, lora up bias).
    dora_scale: optional DoRA magnitude, [out, 1, ...] (row norms) or [1, in, ...] (column norms).
    """

    kind: str
    tensors: dict
    alpha: float | None = None
    bias: torch.Tensor | None = None
    dora_scale: torch.Tensor | None = None
    on_input: bool = False
    extra_scale: float = 1.0  # a file's own multiplier (e.g. a `scale` key)
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r}; expected one of {KINDS}")


# ------------------------------------------------------------------------------- deltas
def lora_delta(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, alpha: float | None) -> torch.Tensor:
    """ΔW = alpha/r · up @ down (r = down rows; alpha missing means alpha = r).

    Conv: down [r, in, kh, kw], up [out, r, 1, 1] -> [out, in, kh, kw].
    Tucker: down [r, in, 1, 1], mid [r, r, kh, kw], up [out, r, 1, 1].
    """
    rank = down.shape[0]
    scale = 1.0 if alpha is None else float(alpha) / rank
    up2 = up.reshape(up.shape[0], -1)  # [out, r]
    if mid is not None:
        down2 = down.reshape(rank, -1)  # [r, in]
        # [r_up, r_down, kh, kw] contracted with down [r_down, in] and up [out, r_up]
        w = torch.einsum("i j k l, j r, p i -> p r k l", mid, down2, up2)
        return w * scale
    down2 = down.reshape(rank, -1)  # [r, in * kh * kw]
    w = up2 @ down2  # [out, in * kh * kw]
    if down.ndim == 4:
        w = w.reshape(up.shape[0], *down.shape[1:])
    return w * scale


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Rebuild a [out, in, kh, kw] factor from core t [r, r, kh, kw], wa [r, out], wb [r, in]."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def loha_delta(t: dict, alpha: float | None) -> torch.Tensor:
    """LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha/r, r = w1b rows (Hadamard product)."""
    rank = t["w1b"].shape[0]
    scale = 1.0 if alpha is None else float(alpha) / rank
    if "t1" in t:
        m1 = _tucker(t["t1"], t["w1a"], t["w1b"])
        m2 = _tucker(t["t2"], t["w2a"], t["w2b"])
    else:
        m1 = t["w1a"] @ t["w1b"]
        m2 = t["w2a"] @ t["w2b"]
    return m1 * m2 * scale


def lokr_delta(t: dict, alpha: float | None, target_shape) -> torch.Tensor:
    """LoKr: ΔW = kron(w1, w2) · scale, each factor full or low-rank (w_a @ w_b, or tucker).

    The scale alpha/r applies only when a factor is low-rank (r from its w_b); with two full
    factors the alpha stored in the file is ignored, as LyCORIS does.
    """
    dim = None
    if "w1" in t:
        w1 = t["w1"]
    else:
        dim = t["w1b"].shape[0]
        w1 = t["w1a"] @ t["w1b"]
    if "w2" in t:
        w2 = t["w2"]
    else:
        dim = t["w2b"].shape[0]
        w2 = _tucker(t["t2"], t["w2a"], t["w2b"]) if "t2" in t else t["w2a"] @ t["w2b"]
    if w2.ndim == 4 and w1.ndim == 2:
        w1 = w1[:, :, None, None]  # kron over [a, b, 1, 1] x [c, d, kh, kw] -> [ac, bd, kh, kw]
    scale = float(alpha) / dim if (alpha is not None and dim is not None) else 1.0
    return torch.kron(w1, w2).reshape(target_shape) * scale


def base_delta(a: Adapter, target_shape) -> torch.Tensor | None:
    """ΔW (without strength) for a weight of `target_shape`; None for IA3 (not additive)."""
    t = a.tensors
    if a.kind == "lora":
        d = lora_delta(t["up"], t["down"], t.get("mid"), a.alpha)
    elif a.kind == "loha":
        d = loha_delta(t, a.alpha)
    elif a.kind == "lokr":
        d = lokr_delta(t, a.alpha, target_shape)
    elif a.kind == "diff":
        d = t["diff"]
    else:
        return None
    return d.reshape(target_shape) * a.extra_scale


# ------------------------------------------------------------------------------ applying
def dora_norm(w: torch.Tensor, row_wise: bool) -> torch.Tensor:
    """Norms of W per output row ([out, 1, ...]) or per input column ([1, in, ...])."""
    if row_wise:
        return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.ndim - 1))
    wt = w.transpose(0, 1)
    return wt.reshape(wt.shape[0], -1).norm(dim=1).reshape(wt.shape[0], *[1] * (w.ndim - 1)).transpose(0, 1)


def lora_scale(a: Adapter) -> float:
    """alpha / rank times the file's own multiplier, for a plain LoRA."""
    rank = a.tensors["down"].shape[0]
    return (1.0 if a.alpha is None else float(a.alpha) / rank) * a.extra_scale


def is_plain_lora(a: Adapter) -> bool:
    """A LoRA whose ΔW is one matrix product (no tucker core, no DoRA): the fast path."""
    return a.kind == "lora" and "mid" not in a.tensors and a.dora_scale is None


# Rows per block in plain_lora_chain: the fp32 scratch of one block stays in the CPU's cache
# (4 MiB: within the shared L3; measured on SD 1.5's 128 attention weights in fp16, 1 thread, load
# 9-10, medians of 5-7: 4 MiB 1.60-1.84x the compute floor, 1 MiB 1.93-2.25x, 256-512 KiB 2.25-2.32x;
# every size gives the same bits). A GPU takes much larger blocks (each is a few kernel launches).
CHAIN_BLOCK_BYTES = {"cpu": 4 << 20}
CHAIN_BLOCK_BYTES_OTHER = 32 << 20


def plain_lora_chain(w0: torch.Tensor, loras, out: torch.Tensor | None = None) -> torch.Tensor:
    """w0 + each plain LoRA's s·scale·(up @ down); fp32 math, stored in out's dtype.

    loras: (adapter, strength) pairs, each `is_plain_lora`, all on w0's device.
    Each weight is read and written once, whatever the stack's length. An fp32 weight is one
    addmm into `out`; a stack is one low-rank product (the exact merge's trick):
    [up₁·c₁ … upₙ·cₙ] @ [down₁; …; downₙ] with cᵢ = sᵢ·scaleᵢ, the n rank-r products one
    rank-(n·r) GEMM. An fp16/bf16 weight goes row block by row block: a block of w0 is widened
    into a small fp32 scratch, each LoRA's rows are added there (one addmm per LoRA, its own
    alpha: the deltas summed in the block, no concatenated copies of the factors) and the block
    is narrowed into `out`: no full-size fp32 temporaries, and the result equals the whole-tensor
    computation (patched_weight chained in fp32, narrowed once). One LoRA is addmm with its own
    alpha either way (bit-identical to patched_weight). chain_threads.py runs the blocks of many
    weights on worker threads; it shares chain_setup / chain_block, so the bits are these.
    """
    res, job = chain_setup(w0, loras, out)
    if job is not None:
        need, blocks = chain_blocks(job[0])
        scratch = torch.empty(need, dtype=torch.float32, device=w0.device)
        for i, j in blocks:
            chain_block(job, i, j, scratch)
    return res


def chain_setup(w0: torch.Tensor, loras, out: torch.Tensor | None):
    """(result tensor, block job or None). fp32: the result is computed here (one addmm) and the
    job is None; fp16/bf16: the job (w0 [n, cols], result [n, cols], [(up, down, alpha) per LoRA])
    is left for chain_block to run block by block."""
    res = w0.new_empty(w0.shape) if out is None else out  # contiguous, whatever w0's strides
    w2 = _rows(w0)
    r2 = res if res.dim() == 2 else res.view(w2.shape)
    if w0.dtype == torch.float32:
        up, down, alpha = stacked_factors(loras, w2.shape[0])
        torch.addmm(w2, up, down, alpha=alpha, out=r2)
        return res, None
    return res, (w2, r2, factor_terms(loras, w2.shape[0]))


def chain_blocks(w2: torch.Tensor) -> tuple[int, list[tuple[int, int]]]:
    """(fp32 scratch elements a block takes, [(first row, end row)] of each block) for a [n, cols]
    weight: the scratch stays within CHAIN_BLOCK_BYTES. The one place the block boundaries are
    chosen, so chain_threads' blocks are plain_lora_chain's (the bits depend on them)."""
    n, cols = w2.shape
    block = CHAIN_BLOCK_BYTES.get(w2.device.type, CHAIN_BLOCK_BYTES_OTHER)
    step = max(1, min(n, block // (4 * cols)))
    return step * cols, [(i, min(n, i + step)) for i in range(0, n, step)]


def chain_block(job, i: int, j: int, scratch: torch.Tensor) -> None:
    """Rows i:j of a block job: widen into scratch, add each LoRA's rows, narrow into the result."""
    w2, r2, terms = job
    acc = scratch[: (j - i) * w2.shape[1]].view(j - i, w2.shape[1])
    acc.copy_(w2[i:j])
    for up, down, alpha in terms:
        acc.addmm_(up[i:j], down, alpha=alpha)
    r2[i:j].copy_(acc)


def factor_terms(loras, rows: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """[(up [rows, r], down [r, cols], sᵢ·scaleᵢ)] per LoRA: its own fp32 tensors (or 2-D views)."""
    return [(_rows(a.tensors["up"], rows), _rows(a.tensors["down"]), s * lora_scale(a)) for a, s in loras]


def _rows(t: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """t as a [rows, -1] matrix: t itself when it is one already (a Linear weight: no view to make;
    an activate sets up every touched weight, so this is on its path)."""
    if t.dim() == 2 and (rows is None or t.shape[0] == rows):
        return t
    return t.reshape(t.shape[0] if rows is None else rows, -1)


def stacked_factors(loras, rows: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up [rows, R], down [R, cols], alpha) with up @ down · alpha = Σ sᵢ·scaleᵢ·upᵢ @ downᵢ.

    One LoRA: its own tensors and alpha = s·scale (no rescaled copy). Several: the ups scaled
    by their cᵢ and concatenated along the rank, the downs stacked, alpha 1 (R = Σ rᵢ).
    """
    terms = factor_terms(loras, rows)
    if len(terms) == 1:
        return terms[0]
    up = torch.cat([u.float() * c for u, _, c in terms], dim=1)
    down = torch.cat([d.float() for _, d, _ in terms], dim=0)
    return up, down, 1.0


def patched_weight(w0: torch.Tensor, a: Adapter, strength: float, rows: tuple | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """The new weight (fp32) for base weight w0 (fp32) under adapter `a` at `strength`.

    rows=(start, stop): w0 is that row block of a fused weight (q, k or v of an OpenCLIP
    in_proj) and the adapter's ΔW covers all three blocks.
    A plain LoRA is one fused op, W0 + s·scale·(up @ down), written into `out` when given.
    DoRA (dora_scale present) follows the published rule W' = m · V / ‖V‖ with V = W0 + ΔW
    and the norm over the axis the magnitude's shape names; strength blends from W0 to W'
    (strength 0 is exactly W0).
    """
    if is_plain_lora(a) and rows is None:
        return plain_lora_chain(w0, [(a, strength)], out=out)  # fp32 w0: one addmm
    if a.kind in WEIGHT_KINDS and a.dora_scale is None:
        if rows is not None:
            raise ValueError(f"a {a.kind} adapter on a fused q/k/v weight is not supported")
        if a.extra_scale == 1.0:
            res = transformed_weight(w0, a.kind, a.tensors, a.alpha, strength)
        else:  # a file `scale` multiplies the change at full strength
            res = w0 + strength * a.extra_scale * (transformed_weight(w0, a.kind, a.tensors, a.alpha, 1.0) - w0)
    elif a.kind == "ia3":
        s = a.tensors["weight"]
        s = s.reshape(1, -1, *[1] * (w0.ndim - 2)) if a.on_input else s.reshape(-1, *[1] * (w0.ndim - 1))
        res = w0 + strength * (w0 * s)
    elif rows is not None:
        fused = (3 * w0.shape[0], *w0.shape[1:])
        res = w0 + strength * base_delta(a, fused)[rows[0]:rows[1]]
    elif a.dora_scale is None:
        res = w0 + strength * base_delta(a, w0.shape)
    else:
        m = a.dora_scale.float()
        row_wise = m.shape[0] == w0.shape[0] and (m.ndim < 2 or m.shape[1] == 1)
        v = (transformed_weight(w0, a.kind, a.tensors, a.alpha, 1.0) if a.kind in WEIGHT_KINDS
             else w0 + base_delta(a, w0.shape))
        norm = dora_norm(v, row_wise)
        res = w0 + strength * (v * (m.reshape(norm.shape) / norm) - w0)
    if out is not None:
        out.copy_(res)
        return out
    return res


def patched_bias(b0: torch.Tensor, a: Adapter, strength: float) -> torch.Tensor:
    return b0 + strength * a.bias.reshape(b0.shape) * a.extra_scale
