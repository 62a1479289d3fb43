"""Trainable LoRA modules, attached to the frozen layers by forward hooks.

A LoraModule keeps down [r, in(, kh, kw)] and up [out, r(, 1, 1)] as fp32 parameters, with
kohya's init (down: kaiming-uniform a=sqrt(5), up: zeros, so training starts at the base
model) and adds  scale * up(down(x)),  scale = alpha / r,  to its layer's output. The base
layers are never modified: the hooks are removed when training ends (`LoraNetwork.attached`).

Layer choice and names follow kohya's networks/lora.py:
    attention          attn1 / attn2 to_q, to_k, to_v, to_out.0 (diffusers' LoRA example)
    attention+ff       every Linear and 1x1 Conv2d inside a Transformer2DModel (kohya's default)
    attention+ff+conv  + ResnetBlock2D / Downsample2D / Upsample2D layers (LoCon; 3x3 at conv rank)
    text encoders      self_attn q/k/v/out_proj, mlp.fc1 / fc2 (when the text encoder is trained)
    names              lora_unet_<diffusers path> (SD 1.x / 2.x), lora_unet_<LDM path> (SDXL,
                       as kohya's own SDXL UNet names them), lora_te_ / lora_te1_ / lora_te2_ + HF CLIP path
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

UNET_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                  "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
UNET_BLOCKS_FF = ("Transformer2DModel",)
UNET_BLOCKS_CONV = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


class LoraModule(nn.Module):
    def __init__(self, name: str, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.lora_name = name
        self.conv = isinstance(base, nn.Conv2d)
        if self.conv:
            self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
            down = torch.empty(rank, base.in_channels, *base.kernel_size)  # [r, in, kh, kw]
            up = torch.zeros(base.out_channels, rank, 1, 1)  # [out, r, 1, 1]
        else:
            down = torch.empty(rank, base.in_features)  # [r, in]
            up = torch.zeros(base.out_features, rank)  # [out, r]
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        self.lora_down = nn.Parameter(down)
        self.lora_up = nn.Parameter(up)
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank
        self.multiplier = 1.0
        self._base = (base,)  # a tuple: not registered as a submodule (never saved, never moved)
        self._hook_handle = None

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """up(down(x)) * scale; x is the base layer's input (cast to fp32 unless autocast recasts)."""
        x = x.to(self.lora_down.dtype)
        if self.conv:
            h = F.conv2d(x, self.lora_down, None, self.stride, self.padding, self.dilation)
            h = F.conv2d(h, self.lora_up)
        else:
            h = F.linear(F.linear(x, self.lora_down), self.lora_up)
        return h * (self.scale * self.multiplier)

    def _hook(self, module, args, output):
        return output + self.delta(args[0]).to(output.dtype)

    def attach(self) -> None:
        if self._hook_handle is None:
            self._hook_handle = self.base.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None


def _unet_layers(unet, target: str) -> list[tuple[str, nn.Module]]:
    """(diffusers path, layer) of the UNet layers `target` covers, in module order."""
    if target == "attention":
        return [(n, m) for n, m in unet.named_modules() if n.endswith(UNET_ATTENTION) and isinstance(m, nn.Linear)]
    blocks = UNET_BLOCKS_FF + (UNET_BLOCKS_CONV if target == "attention+ff+conv" else ())
    out, seen = [], set()
    for name, block in unet.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child, m in block.named_modules():
            path = f"{name}.{child}"
            if child and path not in seen and isinstance(m, (nn.Linear, nn.Conv2d)):
                if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and type(block).__name__ in UNET_BLOCKS_FF:
                    continue
                seen.add(path)
                out.append((path, m))
    return out


def _te_layers(model) -> list[tuple[str, nn.Module]]:
    from ..lora.lora_keys import canonical_te_name

    return [(canonical_te_name(model, n), m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.endswith(TEXT_LAYERS)]


class LoraNetwork(nn.Module):
    """All LoRA modules of a run. forward() runs the UNet (so DDP can wrap this module)."""

    def __init__(self, handle, cfg, seed: int):
        super().__init__()
        from ..lora.lora_keys import KeyIndex

        g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
        ldm = KeyIndex(handle).ldm_unet if handle.family == "sdxl" else {}
        mods = {}
        for path, layer in _unet_layers(handle.unet, cfg.target):
            name = "lora_unet_" + ldm.get(path, path).replace(".", "_")
            conv3 = isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)
            rank, alpha = (cfg.effective_conv_rank, cfg.effective_conv_alpha) if conv3 else (cfg.rank, cfg.alpha)
            mods[name] = LoraModule(name, layer, rank, alpha, g)
        self.unet_names = tuple(mods)
        if cfg.train_text_encoder:
            sdxl = handle.family == "sdxl"
            for i, model in enumerate(handle.text_encoders):
                prefix = f"lora_te{i + 1}_" if sdxl else "lora_te_"
                for path, layer in _te_layers(model):
                    name = prefix + path.replace(".", "_")
                    mods[name] = LoraModule(name, layer, cfg.rank, cfg.alpha, g)
        self.loras = nn.ModuleDict(mods)
        self._unet = (handle.unet,)

    def forward(self, *args, **kwargs):
        return self._unet[0](*args, **kwargs)

    @contextlib.contextmanager
    def attached(self):
        """The hooks are on the base layers inside the block, and always removed after it."""
        try:
            for m in self.loras.values():
                m.attach()
            yield self
        finally:
            for m in self.loras.values():
                m.detach()

    def param_groups(self, unet_lr: float, te_lr: float) -> list[dict]:
        unet = [p for n, m in self.loras.items() if n.startswith("lora_unet_") for p in m.parameters()]
        te = [p for n, m in self.loras.items() if not n.startswith("lora_unet_") for p in m.parameters()]
        groups = [{"params": unet, "lr": unet_lr, "base_lr": unet_lr}] if unet and unet_lr > 0 else []
        if te and te_lr > 0:
            groups.append({"params": te, "lr": te_lr, "base_lr": te_lr})
        return groups

    def kohya_state_dict(self, dtype: torch.dtype) -> dict:
        """{name.lora_down.weight, name.lora_up.weight, name.alpha (fp32 scalar)} on the CPU."""
        sd = {}
        for name, m in self.loras.items():
            sd[f"{name}.lora_down.weight"] = m.lora_down.detach().to("cpu", dtype).contiguous()
            sd[f"{name}.lora_up.weight"] = m.lora_up.detach().to("cpu", dtype).contiguous()
            sd[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
        return sd

    def trainable_state(self) -> dict:
        """fp32 parameters for a resumable state (exact)."""
        return {k: v.detach().to("cpu").clone() for k, v in self.state_dict().items()}

    def load_trainable_state(self, sd: dict) -> None:
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"the saved state does not fit this network (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]})")


def make_autograd_ready(*modules: nn.Module) -> int:
    """Replace inference-mode tensors (ComfyUI loads models under torch.inference_mode) by
    normal tensors with the same bits, so autograd can save them. Returns how many changed.

    Values and dtypes are unchanged (a bit-exact clone per tensor, one at a time), so this is
    not a change of the model; the patcher's kept originals are left as they are.
    """
    changed = 0
    with torch.inference_mode(False), torch.no_grad():
        for module in modules:
            for owner in module.modules():
                for name, p in list(owner.named_parameters(recurse=False)):
                    if p.is_inference() or p.data.is_inference():
                        setattr(owner, name, nn.Parameter(p.data.clone(), requires_grad=p.requires_grad))
                        changed += 1
                for name, b in list(owner.named_buffers(recurse=False)):
                    if b is not None and b.is_inference():
                        owner._buffers[name] = b.clone()
                        changed += 1
    return changed
