"""ComfyUI's "bislerp" latent resize (comfy.utils.bislerp, LatentUpscale / LatentUpscaleBy).

Separable: first along the width, then along the height. Each output pixel takes the two source
pixels bilinear resampling (align_corners=False, edges clamped) would blend, and blends their
channel vectors spherically: the direction by slerp, the length linearly. Neighbours pointing
the same way (cos > 1 - 1e-5) give the first one; opposite ones (cos < -1 + 1e-5) are blended
linearly. A zero vector has no direction (its unit vector counts as zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-5


def bilinear_taps(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ratio [new] float32, first [new] int64, second [new] int64): output j blends source `first`
    and `second` with weight `ratio` on the second, as bilinear resampling `old` -> `new` does."""
    src = torch.arange(old, dtype=torch.float32)
    pos = F.interpolate(src.reshape(1, 1, 1, -1), size=(1, new), mode="bilinear").flatten()
    after = src + 1
    after[-1] -= 1  # the last pixel has no right neighbour: itself
    nxt = F.interpolate(after.reshape(1, 1, 1, -1), size=(1, new), mode="bilinear").flatten()
    return pos - pos.floor(), pos.to(torch.int64), nxt.to(torch.int64)


def slerp_rows(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Row-wise spherical blend of vectors a, b [N, C] by r [N, 1] (0 gives a, 1 gives b)."""
    c = a.shape[-1]
    na, nb = torch.norm(a, dim=-1, keepdim=True), torch.norm(b, dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    ua[na.expand(-1, c) == 0.0] = 0.0
    ub[nb.expand(-1, c) == 0.0] = 0.0
    cos = (ua * ub).sum(1)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    r1 = r.squeeze(1)
    out = (torch.sin((1.0 - r1) * omega) / sin).unsqueeze(1) * ua + (torch.sin(r1 * omega) / sin).unsqueeze(1) * ub
    out *= (na * (1.0 - r) + nb * r).expand(-1, c)
    same, opposite = cos > 1 - _EPS, cos < _EPS - 1
    out[same] = a[same]
    out[opposite] = (a * (1.0 - r) + b * r)[opposite]
    return out


def _along_width(x: torch.Tensor, new: int) -> torch.Tensor:
    """[n, c, h, w] -> [n, c, h, new], bislerp along the last axis."""
    n, c, h, w = x.shape
    ratio, first, second = bilinear_taps(w, new)
    ratio, first, second = ratio.to(x.device), first.to(x.device), second.to(x.device)

    def rows(t):  # [n, c, h, new] -> [n * h * new, c]
        return t.movedim(1, -1).reshape(-1, c)

    r = ratio.reshape(1, 1, -1).expand(n, h, -1).reshape(-1, 1)
    out = slerp_rows(rows(x.index_select(-1, first)), rows(x.index_select(-1, second)), r)
    return out.reshape(n, h, new, c).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize latents [n, c, h, w] to [n, c, height, width] (computed in float32, returned in the input dtype)."""
    x = samples.float()
    x = _along_width(x, width)
    x = _along_width(x.transpose(-1, -2), height).transpose(-1, -2)
    return x.contiguous().to(samples.dtype)
