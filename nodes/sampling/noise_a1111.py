"""A1111's noise, as an option of Sample: the numbers stable-diffusion-webui draws (modules/rng.py).

A1111 (processing.py, rng.ImageRNG) gives image i of a batch its own generator:
- seeds: seed + i (all images get `seed` when a variation strength is set); subseeds: subseed + i;
- the initial noise of image i: randn(seed_i, [C, H, W]); with `Variation seed` /
  `Variation seed strength` it is slerp(strength, noise, randn(subseed_i)) with A1111's slerp
  (norms over dim 1 of [C, H, W], i.e. per channel and column; a plain mix, reversed, when
  the two are almost parallel); with `Seed resize from: WxH` the seed noise is drawn at that
  size and pasted in the centre of the full-size draw;
- every later draw (the ancestral samplers' step noise: A1111 replaces k-diffusion's
  torch.randn_like by ImageRNG.next) continues image i's generator, restarted from
  seed_i + ENSD after the initial noise when `ENSD` (eta noise seed delta) is set;
- the hires fix's second pass starts a new ImageRNG at the new size (the same rules);
- k-diffusion samplers start from noise * sigma_max (sd_samplers_kdiffusion.sample), not
  ComfyUI's noise * sqrt(1 + sigma_max^2), unless "SGM noise multiplier" is on.

RNG sources: "CPU" = torch.randn on a CPU generator (here exactly); "NV" = A1111's
rng_philox, a NumPy Philox4x32-10 + Box-Muller that imitates torch.randn on CUDA: one
normal per element from the counter (offset, 0, index, 0) and key = the seed's two 32-bit
words, the offset growing by one per draw; "GPU" (A1111's default) is torch.randn on the
user's GPU, which a CPU cannot draw (on NVIDIA cards A1111's NV is its imitation of it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..io.errors import NodeInputError
from .sampler_names import RNG_SOURCES

NODE = "LoraLabA1111Noise"

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
# Box-Muller constants as A1111's float32 arrays (2^-32 and 2^-32 * 2pi, rounded to float32),
# used in float64 arithmetic (uint32 * float32 array promotes to float64 in NumPy).
_INV32 = np.float64(np.float32(2.3283064e-10))
_INV32_2PI = np.float64(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox 4x32: counter [4, N] uint32, key [2, N] uint32 -> [4, N] uint32 (inputs not changed)."""
    c = counter.astype(np.uint64)
    k0, k1 = key[0].astype(np.uint64), key[1].astype(np.uint64)
    for r in range(rounds):
        p0 = c[0] * np.uint64(_PHILOX_M[0])  # full 64-bit products of 32-bit words
        p1 = c[2] * np.uint64(_PHILOX_M[1])
        c = np.stack([(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
                      p0 & _MASK32])
        if r < rounds - 1:
            k0, k1 = (k0 + np.uint64(_PHILOX_W[0])) & _MASK32, (k1 + np.uint64(_PHILOX_W[1])) & _MASK32
    return c.astype(np.uint32)


class PhiloxGenerator:
    """A1111's "NV" generator: randn(shape) like torch.randn on CUDA for a generator seeded `seed`."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape) -> torch.Tensor:
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        s = np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF)
        key = np.stack([np.full(n, s & _MASK32), np.full(n, s >> np.uint64(32))]).astype(np.uint32)
        g = philox4x32(counter, key)
        u = g[0] * _INV32 + _INV32 / 2  # in (0, 1)
        v = g[1] * _INV32_2PI + _INV32_2PI / 2
        z = np.sqrt(-2.0 * np.log(u)) * np.sin(v)  # the first of Box-Muller's pair
        return torch.from_numpy(z.astype(np.float32).reshape(tuple(shape)))


def make_generator(rng: str, seed: int):
    if rng == "NV":
        return PhiloxGenerator(seed)
    return torch.Generator(device="cpu").manual_seed(int(seed))


def draw(generator, shape) -> torch.Tensor:
    """The next float32 draw [*shape] on the CPU from a generator of make_generator."""
    if isinstance(generator, PhiloxGenerator):
        return generator.randn(shape)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's rng.slerp on one image's noise [C, H, W]: spherical interpolation per (channel, column)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)  # [C, W]
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)  # A1111's fallback (weights as it writes them)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def paste_centre(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A1111's seed resize: `noise` [C, h, w] centred over `x` [C, H, W] (cropped where larger)."""
    dx, dy = (x.shape[2] - noise.shape[2]) // 2, (x.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    x = x.clone()
    x[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return x


def _int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeInputError(NODE, name, value, "must be a whole number")
    return value


@dataclass(frozen=True)
class A1111Noise:
    """A1111's noise settings (the LORA_LAB_A1111_NOISE edge into Sample)."""

    rng: str = "CPU"
    subseed: int = 0  # "Variation seed"
    subseed_strength: float = 0.0  # "Variation seed strength"
    seed_resize_from_w: int = 0  # "Seed resize from: WxH" (0 = off)
    seed_resize_from_h: int = 0
    eta_noise_seed_delta: int = 0  # "ENSD"
    sgm_noise_multiplier: bool = False  # "SGM noise multiplier": start at noise * sqrt(1 + sigma^2)

    def __post_init__(self):
        if self.rng not in RNG_SOURCES:
            raise NodeInputError(NODE, "rng", self.rng, f"one of {RNG_SOURCES} (A1111's GPU noise needs that GPU)")
        for name in ("subseed", "seed_resize_from_w", "seed_resize_from_h", "eta_noise_seed_delta"):
            if _int(name, getattr(self, name)) < 0:
                raise NodeInputError(NODE, name, getattr(self, name), "must be 0 or more")
        if not isinstance(self.sgm_noise_multiplier, bool):
            raise NodeInputError(NODE, "sgm_noise_multiplier", self.sgm_noise_multiplier, "must be true or false")
        s = self.subseed_strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s <= 1.0):
            raise NodeInputError(NODE, "subseed_strength", s, "must be between 0 and 1")

    def seeds(self, seed: int, batch: int) -> tuple[list[int], list[int]]:
        """A1111's all_seeds / all_subseeds for one batch."""
        step = 0 if self.subseed_strength else 1
        return [int(seed) + i * step for i in range(batch)], [self.subseed + i for i in range(batch)]

    def image_rng(self, shape, seed: int) -> ImageNoise:
        """A fresh ImageRNG for a latent of `shape` [B, C, H, W] (one per sampling pass)."""
        return ImageNoise(self, tuple(shape[1:]), *self.seeds(seed, int(shape[0])))


class ImageNoise:
    """rng.ImageRNG: first() the initial noise [B, C, H, W], next() each later draw.

    Given as the sampler's seed, the ancestral samplers draw their step noise from next()
    (samplers_kdiff.default_noise_sampler); int() is the first image's seed (SDE trees);
    max_denoise False makes a run from pure noise start at noise * sigma, as A1111 does
    (ComfyUI: noise * sqrt(1 + sigma^2), which A1111 does with "SGM noise multiplier").
    """

    def __init__(self, cfg: A1111Noise, shape: tuple, seeds: list[int], subseeds: list[int]):
        self.cfg, self.shape, self.seeds, self.subseeds = cfg, shape, seeds, subseeds
        self.generators = [make_generator(cfg.rng, s) for s in seeds]
        self.is_first = True
        self.max_denoise = cfg.sgm_noise_multiplier

    def __int__(self) -> int:
        return int(self.seeds[0])

    def first(self) -> torch.Tensor:
        cfg, shape = self.cfg, self.shape
        resize = cfg.seed_resize_from_w > 0 and cfg.seed_resize_from_h > 0
        noise_shape = (shape[0], cfg.seed_resize_from_h // 8, cfg.seed_resize_from_w // 8) if resize else shape
        xs = []
        for i, (seed, gen) in enumerate(zip(self.seeds, self.generators)):
            sub = None
            if cfg.subseed_strength != 0:
                sub = draw(make_generator(cfg.rng, self.subseeds[i]), noise_shape)
            if noise_shape != shape:
                noise = draw(make_generator(cfg.rng, seed), noise_shape)  # a fresh generator (rng.randn)
            else:
                noise = draw(gen, shape)
            if sub is not None:
                noise = slerp(cfg.subseed_strength, noise, sub)
            if noise_shape != shape:
                noise = paste_centre(draw(gen, shape), noise)
            xs.append(noise)
        if cfg.eta_noise_seed_delta:
            self.generators = [make_generator(cfg.rng, s + cfg.eta_noise_seed_delta) for s in self.seeds]
        self.is_first = False
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        if self.is_first:
            return self.first()
        return torch.stack([draw(g, self.shape) for g in self.generators])

    def noise_sampler(self, x: torch.Tensor):
        """k-diffusion's noise_sampler(sigma, sigma_next) for x [B, C, H, W]: the next draws."""
        return lambda sigma, sigma_next: self.next().to(x.device, x.dtype)


def initial_noise(shape, seed: int, a1111: A1111Noise | None):
    """(initial noise [B, C, H, W] on the CPU, the seed to give the sampler).

    Without A1111 noise: ComfyUI's (samplers.prepare_noise) and the int seed. With it: A1111's
    first draw and the ImageNoise whose next() the ancestral samplers then draw from.
    """
    if a1111 is None:
        from .samplers import prepare_noise

        return prepare_noise(shape, seed), int(seed)
    if not isinstance(a1111, A1111Noise):
        raise NodeInputError("LoraLabSampler", "a1111_noise", type(a1111).__name__, "expected an A1111 Noise output")
    rng = a1111.image_rng(shape, seed)
    return rng.first(), rng
