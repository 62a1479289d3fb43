"""Train the demo checkpoint from scratch: VAE, then UNet + CLIP text encoder, then write it.

    python -m lora_lab.nodes.demo.train_base OUT_DIR [--threads 1]

Reproduces the committed assets/lora-lab-demo-sd15.safetensors from its seeds (one CPU thread;
CPU GEMMs differ in the last bits between machines, so other machines get a model of the
same quality, not necessarily the same bytes). Stages, each saved in OUT_DIR so a run can be
stopped and continued stage by stage:

    vae_phase1.pt   VAE 900 steps, batch 16, lr 1e-3 cosine        (~11 min on one core)
    vae_phase2.pt   + 1200 steps, lr 4e-4 cosine                    (~14 min)
    vae_final.pt    latents rescaled per channel so that 0.18215 * latent has mean 0, std 1
    latents.pt      posterior mean/std of 3840 training pictures (120 combinations x 32)
    unet_state.pt   UNet + text encoder, epsilon objective, SD 1.5's scaled-linear betas,
                    min-SNR-5 weights, 10 % empty captions (for CFG), EMA 0.999; batch 32,
                    lr 5e-4 cosine over 4500 steps, stopped at step 2000 (--stop-at; ~50 min
                    on one busy core). Run again with a higher --stop-at to continue it.
    lora-lab-demo-sd15.safetensors   the EMA weights as an fp16 SD 1.5 single file

The layout is the SD 1.5 one at small widths (every width a multiple of 32 for GroupNorm):
VAE (32, 32, 64, 64) with 8x downsampling, so 64 px pictures have 8x8 latents as everywhere
else; UNet (64, 128, 128), cross-attention 64; CLIP 3 layers x 64 with the real 49408 vocab.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
from pathlib import Path

import torch

from . import shapes as D

log = logging.getLogger(__name__)

VAE_SEED, UNET_SEED, STATS_SEED = 1, 2, 3
SCALE = 0.18215  # SD 1.x latent scaling, fixed by the single-file format's loaders
N_IMAGES = 120 * 32
UNET_STEPS, UNET_BATCH, UNET_LR = 4500, 32, 5e-4  # the lr schedule spans UNET_STEPS
UNET_STOP = 2000  # the committed model stopped here (a busy shared CPU), lr still at 0.6 x peak


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=(32, 32, 64, 64),
                         layers_per_block=1, latent_channels=4, sample_size=64)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                        num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=64, pad_token_id=1, bos_token_id=49406, eos_token_id=49407))


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
                                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2,
                                block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=64,
                                attention_head_dim=8, use_linear_projection=False)


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ VAE
def _vae_loss(vae, x, g):
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
    out = vae.decode(z).sample
    rec = (out - x).abs().mean() + (out - x).pow(2).mean()  # L1 + L2 on -1..1 pixels
    kl = 0.5 * (post.mean.pow(2) + post.var - 1 - post.logvar).mean()
    return rec + 1e-4 * kl, rec


def train_vae_phase(vae, first: int, steps: int, lr: float, warmup: int, g, batch: int = 16, log_every: int = 20,
                    save=None):
    """`steps` AdamW steps on pictures first*batch...; lr: cosine from `lr` to lr/10."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    for k in range(steps):
        step = first + k
        f = min(1.0, (k + 1) / warmup) if warmup else 1.0
        for pg in opt.param_groups:
            pg["lr"] = lr * f * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / steps)))
        x = torch.stack([D.to_tensor(D.vae_sample(step * batch + j, VAE_SEED)) for j in range(batch)])
        loss, rec = _vae_loss(vae, x, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if k % log_every == 0:
            log.info("vae step %d reconstruction %.4f", step, rec.item())
        if save is not None and ((k + 1) % 100 == 0 or k == steps - 1):
            save(vae)
    return vae


def rescale_vae(vae, latents_mean, latents_std, scale=SCALE):
    """Exact reparametrisation: latent' = (latent - m) / (s * scale) per channel, so that
    scale * latent' has mean 0 and std 1 on the data (quant_conv and post_quant_conv absorb it)."""
    lc = vae.config.latent_channels
    c = 1.0 / (latents_std * scale)  # [lc]
    with torch.no_grad():
        qw, qb = vae.quant_conv.weight, vae.quant_conv.bias  # [2lc, 2lc, 1, 1]: mean, logvar
        qw[:lc] *= c.view(-1, 1, 1, 1)
        qb[:lc] = (qb[:lc] - latents_mean) * c
        qb[lc:] += 2 * torch.log(c)
        pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias  # [lc, lc, 1, 1]
        pb += pw[:, :, 0, 0] @ latents_mean
        pw /= c.view(1, -1, 1, 1)
    return vae


def train_vae(out: Path):
    final = out / "vae_final.pt"
    if final.exists():
        return
    p1, p2 = out / "vae_phase1.pt", out / "vae_phase2.pt"
    if not p1.exists():
        torch.manual_seed(VAE_SEED)
        vae = make_vae()
        with torch.no_grad():
            vae.quant_conv.bias[4:] = -8.0  # start nearly deterministic: posterior std ~0.02
        g = torch.Generator().manual_seed(VAE_SEED)
        train_vae_phase(vae, 0, 900, 1e-3, 0, g, save=lambda m: _save(m.state_dict(), out / "vae_p1_partial.pt"))
        _save(vae.state_dict(), p1)
    if not p2.exists():
        vae = make_vae()
        vae.load_state_dict(torch.load(p1))
        g = torch.Generator().manual_seed(VAE_SEED + 1)
        train_vae_phase(vae, 900, 1200, 4e-4, 50, g, save=lambda m: _save(m.state_dict(), out / "vae_p2_partial.pt"))
        _save(vae.state_dict(), p2)
    vae = make_vae()
    vae.load_state_dict(torch.load(p2))
    vae.eval()
    with torch.no_grad():
        ms = [vae.encode(torch.stack([D.to_tensor(D.sample(j, STATS_SEED)[0]) for j in range(i, i + 64)])).latent_dist.mean
              for i in range(0, 1024, 64)]
    m = torch.cat(ms)  # [1024, 4, 8, 8]
    rescale_vae(vae, m.mean(dim=(0, 2, 3)), m.std(dim=(0, 2, 3)))
    _save(vae.state_dict(), final)


# ------------------------------------------------------------------------- UNet + text
def caption_ids(tokenizer, text: str) -> list[int]:
    """77 ids as the Sample node feeds them to an SD 1.x encoder: start, tokens, end, end-padding."""
    ids = tokenizer(text)["input_ids"][:76]
    if ids[-1] != 49407:
        ids = ids + [49407]
    return ids + [49407] * (77 - len(ids))


def encode_ids(te, ids: torch.Tensor) -> torch.Tensor:
    """[B, 77] ids -> [B, 77, D]: last hidden state through final_layer_norm (SD 1.x, clip skip 1)."""
    out = te(input_ids=ids, output_hidden_states=True)
    return getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-1])


def scaled_linear_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def _cached_latents(out: Path, vae) -> dict:
    path = out / "latents.pt"
    if path.exists():
        return torch.load(path)
    vae.load_state_dict(torch.load(out / "vae_final.pt"))
    vae.eval().requires_grad_(False)
    means, stds, caps = [], [], []
    with torch.no_grad():
        for i in range(0, N_IMAGES, 64):
            items = [D.sample(j, UNET_SEED) for j in range(i, min(i + 64, N_IMAGES))]
            post = vae.encode(torch.stack([D.to_tensor(im) for im, _, _ in items])).latent_dist
            means.append(post.mean * SCALE)
            stds.append(post.std * SCALE)
            caps += [c for _, c, _ in items]
    cache = {"mean": torch.cat(means), "std": torch.cat(stds), "captions": caps}
    _save(cache, path)
    return cache


def train_unet(out: Path, steps: int = UNET_STEPS, stop_at: int | None = None):
    from ..model.checkpoint import tokenizers_for

    torch.manual_seed(UNET_SEED)
    tok = tokenizers_for("sd1")[0]
    vae = make_vae()  # always built here: its init draws from the global RNG before the UNet's
    cache = _cached_latents(out, vae)
    del vae
    captions = cache["captions"]
    all_ids = {c: caption_ids(tok, c) for c in set(captions) | {""}}
    te, unet = make_text_encoder(), make_unet()
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    abar = scaled_linear_alphas_cumprod()
    snr = abar / (1 - abar)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(UNET_SEED)
    start, state = 0, out / "unet_state.pt"
    if state.exists():
        st = torch.load(state)
        unet.load_state_dict(st["unet"]); te.load_state_dict(st["te"])
        ema_unet.load_state_dict(st["ema_unet"]); ema_te.load_state_dict(st["ema_te"])
        opt.load_state_dict(st["opt"]); g.set_state(st["g"]); start = st["step"]
    mean_loss = None
    for step in range(start, min(steps, stop_at or steps)):
        warm = min(1.0, (step + 1) / 300)
        for pg in opt.param_groups:
            pg["lr"] = UNET_LR * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randint(0, len(captions), (UNET_BATCH,), generator=g)
        x0 = cache["mean"][idx] + cache["std"][idx] * torch.randn(cache["mean"][idx].shape, generator=g)
        texts = [captions[i] if torch.rand((), generator=g).item() > 0.1 else "" for i in idx.tolist()]
        t = torch.randint(0, 1000, (UNET_BATCH,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # [B, 4, 8, 8]
        ctx = encode_ids(te, torch.tensor([all_ids[s] for s in texts]))  # [B, 77, 64]
        pred = unet(xt, t, encoder_hidden_states=ctx).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 weights of the epsilon loss
        loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in ((unet, ema_unet), (te, ema_te)):
                for p, q in zip(m.parameters(), e.parameters()):
                    q.lerp_(p, 1 - decay)
        mean_loss = loss.item() if mean_loss is None else 0.98 * mean_loss + 0.02 * loss.item()
        if step % 50 == 0:
            log.info("unet step %d loss %.4f", step, mean_loss)
        if (step + 1) % 500 == 0 or step == steps - 1:
            _save({"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(),
                   "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "g": g.get_state(), "step": step + 1},
                  state)


# -------------------------------------------------------------------------------- export
def export(out: Path, target: Path | None = None) -> Path:
    """The EMA weights + final VAE as an fp16 SD 1.5 single file (our own writer)."""
    from ..model.checkpoint import tokenizers_for
    from ..model.checkpoint_save import save_single_file
    from ..model.handle import ModelHandle
    from .demo import DEMO_NAME, DEMO_TITLE

    st = torch.load(out / "unet_state.pt")
    vae, te, unet = make_vae(), make_text_encoder(), make_unet()
    vae.load_state_dict(torch.load(out / "vae_final.pt"))
    te.load_state_dict(st["ema_te"])
    unet.load_state_dict(st["ema_unet"])
    handle = ModelHandle("sd1", "epsilon", unet.eval(), vae.eval(), (te.eval(),), tokenizers_for("sd1"), source=DEMO_NAME)
    meta = {"modelspec.title": DEMO_TITLE, "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.sai_model_spec": "1.0.0", "modelspec.resolution": "64x64",
            "modelspec.description": f"trained from scratch by lora_lab.nodes.demo.train_base ({st['step']} UNet steps)"}
    target = Path(target) if target is not None else out / DEMO_NAME
    save_single_file(target, handle, dtype=torch.float16, metadata=meta, overwrite=True)
    return target


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stop-at", type=int, default=UNET_STOP, help="stop the UNet stage at this step (resumable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_vae(out)
    train_unet(out, stop_at=args.stop_at)
    log.info("wrote %s", export(out))


if __name__ == "__main__":
    main()
