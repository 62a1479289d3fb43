"""Attention slicing: attention computed a chunk of queries at a time, for small GPUs.

diffusers' default processor (AttnProcessor2_0) calls scaled_dot_product_attention on all
queries at once; where no fused kernel applies (the math path: CPU without flash, older GPUs,
fp32 with a mask) that materialises [batch, heads, queries, keys] scores: 1 GiB per head in fp32
for the 16384-token self-attention of a 1024 px SDXL image. SlicedSDPA does the same
projections and the same SDPA call per chunk of `query_chunk` queries, so the scores held at once
are [batch, heads, chunk, keys]. Each query's output depends only on that query and all keys, so
the result equals the unsliced one within fp32 rounding (tests/sampling/test_attention.py).

`sliced_attention(module, n)` swaps the processors of every attention layer under `module` for
the `with` block and puts the originals back after (also on error): models are shared between
nodes, and no node keeps a change to a model it received.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


class SlicedSDPA:
    """A diffusers attention processor: AttnProcessor2_0's steps, SDPA over query chunks."""

    def __init__(self, query_chunk: int):
        if isinstance(query_chunk, bool) or not isinstance(query_chunk, int) or query_chunk < 1:
            raise ValueError(f"query_chunk must be a positive int, got {query_chunk!r}")
        self.query_chunk = query_chunk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:  # VAE attention: [B, C, H, W] -> [B, H*W, C]
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, kv_len, _ = context.shape
        if attention_mask is not None:  # -> [B, heads, 1 or queries, keys], as SDPA takes it
            attention_mask = attn.prepare_attention_mask(attention_mask, kv_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, Q, d)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, K, d)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = torch.empty_like(query)
        for start in range(0, query.shape[2], self.query_chunk):
            q = query[:, :, start:start + self.query_chunk]
            mask = attention_mask
            if mask is not None and mask.shape[2] != 1:
                mask = mask[:, :, start:start + self.query_chunk]
            out[:, :, start:start + q.shape[2]] = F.scaled_dot_product_attention(
                q, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def sliced_attention(module: torch.nn.Module, query_chunk: int):
    """Every attention layer under `module` slices its queries into `query_chunk` for the block;
    0 leaves the model as it is. The original processors are restored on exit."""
    if not query_chunk:
        yield module
        return
    proc = SlicedSDPA(query_chunk)
    originals = dict(module.attn_processors)  # name -> processor, as set_attn_processor takes it
    module.set_attn_processor(proc)
    try:
        yield module
    finally:
        module.set_attn_processor(originals)
