"""The memory-lean options for every node that runs a UNet or a VAE (our Sample and VAE nodes, and
the headless runner's core KSampler, KSamplerAdvanced, VAEDecode, VAEEncode, VAEEncodeForInpaint).

Process-wide settings, as ComfyUI's --use-split-cross-attention is (no new widgets, so saved
graphs keep their widget positions):
  LORA_LAB_ATTENTION_SLICE=N  attention over N queries at a time in the UNet and the VAE while the
                              node runs (their processors restored after);
  LORA_LAB_VAE_TILE=P         VAE encode / decode in P-pixel tiles with 64 px overlap, as VAE
                              Decode (Tiled) / VAE Encode (Tiled) do.
Inside ComfyUI its own core nodes run and its own options apply; these reach our nodes there.
"""
from __future__ import annotations

import contextlib
import os

ENV_VAE_TILE = "LORA_LAB_VAE_TILE"  # pixels; 0 or unset: whole images
ENV_ATTENTION_SLICE = "LORA_LAB_ATTENTION_SLICE"  # queries per attention chunk; 0 or unset: all at once
TILE_OVERLAP_PX = 64


def env_int(var: str) -> int:
    from ..io.errors import LoraLabError

    raw = os.environ.get(var, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise LoraLabError(f"{var}={raw!r}: expected 0 (off) or a positive whole number")
    return int(raw)


def attention_chunk() -> int:
    """LORA_LAB_ATTENTION_SLICE (0: off)."""
    return env_int(ENV_ATTENTION_SLICE)


def vae_tiles(vae, node: str):
    """(decode tiles in latent cells, encode tiles in pixels) from LORA_LAB_VAE_TILE, or None."""
    from ..sampling.vae_tiling import from_node

    tile_px = env_int(ENV_VAE_TILE)
    if not tile_px:
        return None
    if tile_px < 64:
        from ..io.errors import LoraLabError

        raise LoraLabError(f"{ENV_VAE_TILE}={tile_px}: tiles are at least 64 pixels (0: whole images)")
    return (from_node(tile_px, TILE_OVERLAP_PX, vae.downscale_ratio, node),
            from_node(tile_px, TILE_OVERLAP_PX, 1, node))


@contextlib.contextmanager
def sliced(*modules):
    """LORA_LAB_ATTENTION_SLICE applied to each module (a UNet, a VAE; None skipped) for the block."""
    from ..sampling.attention import sliced_attention

    chunk = attention_chunk()
    with contextlib.ExitStack() as stack:
        for m in modules:
            if m is not None:
                stack.enter_context(sliced_attention(m, chunk))  # chunk 0: leaves m as it is
        yield


@contextlib.contextmanager
def lean_vae(vae, node: str):
    """For a VAE node: yields its (decode, encode) tiles or None, with its attention sliced."""
    tiles = vae_tiles(vae, node)
    with sliced(vae.vae):
        yield tiles
