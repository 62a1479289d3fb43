"""Caption conditioning for training: the same hidden states the Sample node uses, with grad.

Per family (clip_skip in A1111 terms, 0 = the family default):
    sd1 / sd2   hidden_states[-skip] -> final_layer_norm                         [B, 77, D]
    sdxl        CLIP-L and bigG hidden_states[-skip] (no final LN) concatenated, [B, 77, D_l + D_g]
                pooled = bigG's projected EOS feature                           [B, P]
Captions are plain text (no prompt weighting, as kohya trains), truncated at 75 tokens.
While the text encoders are frozen, outputs are cached per distinct caption.
"""
from __future__ import annotations

import torch

MAX_LENGTH = 77


def _tokens(tokenizer, texts: list[str], device) -> torch.Tensor:
    ids = tokenizer(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)  # [B, 77]


def _final_norm(model):
    return getattr(model, "text_model", model).final_layer_norm


def encode_captions(handle, texts: list[str], clip_skip: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond [B, 77, D] float32, pooled [B, P] float32 or None); differentiable when grad is on."""
    skip = clip_skip or handle.default_clip_skip
    skip = max(1, skip - handle.text_layers_dropped)
    outs, pooled = [], None
    for i, (model, tok) in enumerate(zip(handle.text_encoders, handle.tokenizers)):
        device = next(model.parameters()).device
        out = model(input_ids=_tokens(tok, texts, device), output_hidden_states=True)
        layers = model.config.num_hidden_layers
        if skip > layers:
            z = out.last_hidden_state
        else:
            z = out.hidden_states[-skip]
            if handle.family != "sdxl":
                z = _final_norm(model)(z)
        outs.append(z.float())
        if handle.family == "sdxl" and i == 1:
            pooled = out.text_embeds.float()
    if len(outs) == 1:
        return outs[0], None
    return torch.cat([outs[0], outs[1].to(outs[0].device)], dim=-1), pooled.to(outs[0].device)


class TextCache:
    """Frozen-encoder outputs per caption, computed in batches and kept (bounded) for reuse."""

    def __init__(self, handle, clip_skip: int, limit: int = 8192):
        self.handle, self.clip_skip, self.limit = handle, clip_skip, limit
        self.items: dict = {}

    @torch.no_grad()
    def fill(self, texts, batch: int = 8) -> None:
        """Encode the captions not cached yet, `batch` at a time. Every call runs at the same batch
        size (padded with ""), so a caption's embedding does not depend on its batch-mates: a
        resumed run gets the same bits as an uninterrupted one."""
        todo = sorted({t for t in texts if t not in self.items})
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            cond, pooled = encode_captions(self.handle, chunk + [""] * (batch - len(chunk)), self.clip_skip)
            for j, t in enumerate(chunk):
                if len(self.items) >= self.limit:
                    self.items.pop(next(iter(self.items)))
                self.items[t] = (cond[j], None if pooled is None else pooled[j])

    def get(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.fill(texts)
        conds = [self.items[t][0] for t in texts]
        pooled = [self.items[t][1] for t in texts]
        return torch.stack(conds), (None if pooled[0] is None else torch.stack(pooled))
