"""Adapters whose new weight depends on the base weight: LyCORIS OFT and BOFT (orthogonal
rotations of the output rows) and GLoRA. Pure functions, fp32 in and out; adapters.py
calls `transformed_weight` from `patched_weight`.

    OFT    blocks [k, b, b] (k·b = out):  R_i = Cayley(Q_i), Q = B - Bᵀ (norm capped at the
           file's alpha, its "constraint"), R = (I + Q)(I - Q)⁻¹;
           W' = blockdiag(R_i)ᵀ W, row block by row block (LyCORIS diag-oft / ComfyUI).
    BOFT   blocks [m, k, b, b]: m butterfly factors, each a block-diagonal R_i applied to
           W's rows under the butterfly permutation of stage i (ComfyUI's boft.py order).
    GLoRA  a1, a2, b1, b2:  ΔW = (W a1 a2 + b1 b2) · alpha/r (LyCORIS GLoRA; the older
           layout (b2 b1 + W a2 a1) is told apart by shapes as ComfyUI does).
    `rescale` [out, 1, ...] (OFT/BOFT, optional) multiplies the rotated rows.

Strength s: the rotations blend as s·R + (1-s)·I (LyCORIS's merge rule; s = 0 is W) and a
rescale as 1 + s·(rescale - 1); GLoRA's ΔW scales by s. At s = 1 this is ComfyUI's weight;
ComfyUI multiplies the OFT/BOFT difference by s once more (W + s·(W'(s) - W)), so at other
strengths it moves further from W than LyCORIS does.
"""
from __future__ import annotations

import torch

WEIGHT_KINDS = ("oft", "boft", "glora")


def cayley(blocks: torch.Tensor, constraint: float | None) -> torch.Tensor:
    """Orthogonal [.., b, b] from free blocks: Q = B - Bᵀ, capped to ‖Q‖ <= constraint, (I+Q)(I-Q)⁻¹."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint is not None and constraint > 0:
        norm = torch.norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return (eye + q) @ torch.linalg.inv(eye - q)


def _blend(r: torch.Tensor, s: float) -> torch.Tensor:
    if s == 1.0:
        return r
    return r * s + (1.0 - s) * torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)


def _rescaled(w: torch.Tensor, rescale: torch.Tensor | None, s: float) -> torch.Tensor:
    if rescale is None:
        return w
    m = rescale.reshape(w.shape[0], *[1] * (w.ndim - 1))
    return w * (1.0 + s * (m - 1.0))


def oft_weight(w0: torch.Tensor, blocks: torch.Tensor, constraint: float | None,
               rescale: torch.Tensor | None, s: float) -> torch.Tensor:
    k, b, _ = blocks.shape
    if k * b != w0.shape[0]:
        raise ValueError(f"OFT blocks {tuple(blocks.shape)} do not cover a weight of {w0.shape[0]} rows")
    r = _blend(cayley(blocks, constraint), s)  # [k, b, b]
    wb = w0.reshape(k, b, *w0.shape[1:])
    out = torch.einsum("k n m, k n ... -> k m ...", r, wb).reshape(w0.shape)  # R_iᵀ per row block
    return _rescaled(out, rescale, s)


def boft_weight(w0: torch.Tensor, blocks: torch.Tensor, constraint: float | None,
                rescale: torch.Tensor | None, s: float) -> torch.Tensor:
    m, k, b, _ = blocks.shape
    if k * b != w0.shape[0]:
        raise ValueError(f"BOFT blocks {tuple(blocks.shape)} do not cover a weight of {w0.shape[0]} rows")
    r = cayley(blocks, constraint)  # [m, k, b, b]
    x = w0
    half = b // 2
    for i in range(m):
        span = 2 ** i * half  # rows that stage i interleaves in pairs
        x = x.unflatten(0, (-1, 2, span)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, b))
        x = torch.einsum("k i j, k j ... -> k i ...", _blend(r[i], s), x)
        x = x.flatten(0, 1).unflatten(0, (-1, span, 2)).transpose(1, 2).flatten(0, 2)
    return _rescaled(x, rescale, s)


def glora_delta(w0: torch.Tensor, t: dict, alpha: float | None) -> torch.Tensor:
    """ΔW of GLoRA (without strength) for base weight w0."""
    a1, a2, b1, b2 = (t[n].reshape(t[n].shape[0], -1) for n in ("a1", "a2", "b1", "b2"))
    old = b2.shape[1] == b1.shape[0] == a1.shape[0] == a2.shape[1]
    rank = a1.shape[0]
    if b2.shape[0] == b1.shape[1] == a1.shape[1] == a2.shape[0] and not (
            old and a2.shape[0] == w0.shape[0] and w0.shape[0] == w0.shape[1]):
        old, rank = False, a2.shape[0]
    scale = 1.0 if alpha is None else float(alpha) / rank
    if old:
        d = b2 @ b1 + (w0.reshape(w0.shape[0], -1) @ a2) @ a1
    else:
        wa = torch.einsum("o i ..., i j -> o j ...", w0, a1)
        d = torch.einsum("o i ..., i j -> o j ...", wa, a2) + (b1 @ b2).reshape(w0.shape)
    return d.reshape(w0.shape) * scale


def transformed_weight(w0: torch.Tensor, kind: str, t: dict, alpha: float | None, s: float) -> torch.Tensor:
    """The new weight under an OFT / BOFT / GLoRA adapter at strength s (s = 0 gives w0)."""
    if kind == "oft":
        return oft_weight(w0, t["blocks"], alpha, t.get("rescale"), s)
    if kind == "boft":
        return boft_weight(w0, t["blocks"], alpha, t.get("rescale"), s)
    if kind == "glora":
        return w0 + s * glora_delta(w0, t, alpha)
    raise ValueError(f"not a weight-dependent adapter kind: {kind!r}")
