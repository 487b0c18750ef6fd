"""Qwen3-VL's language model: the Qwen2.5-VL decoder of `qvl_minimal.text` with three changes.

    h = embed(ids) with visual tokens spliced in                    (B, L, D)
    for layer i:  h = layer(h)                                       Qwen3 attention (below)
                  if i < k: h[visual] += deepstack[i]                NEW: DeepStack, (N_visual, D)
    norm(h)                                                          (B, L, D)

1. Qwen3 attention: q, k, v, o without biases; each head's q and k go through an RMSNorm over
   head_dim (q_norm, k_norm) before the rotary; head_dim is a config field of its own.
2. Interleaved M-RoPE: the hd/2 frequencies take their angle from the t, h, w ids in turn
   (t h w t h w ...), instead of three blocks (t t .. h h .. w w ..). Frequency i is used by
   h when i % 3 == 1 and i < 3 * sections[1], by w when i % 3 == 2 and i < 3 * sections[2],
   else by t; so each axis gets fast and slow frequencies.
3. DeepStack: after decoder layer i (i < number of DeepStack features), the i-th DeepStack
   feature of each visual token is added to that token's hidden state (prefill only).

Reused unchanged: KVCache, the causal/padding mask, the SwiGLU MLP, RMSNorm, the decoder layer
and the attention's rotary + cache + grouped-query computation.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..layers import RMSNorm
from ..text import Attention, DecoderLayer, KVCache, TextModel, attention_mask_4d, rope_inv_freq
from .config import Qwen3TextConfig


def interleaved_axis(config: Qwen3TextConfig) -> torch.Tensor:
    """Which position id (0 = t, 1 = h, 2 = w) turns each of the hd/2 frequencies. -> (hd/2,)"""
    axis = torch.zeros(config.head_dim // 2, dtype=torch.long)  # t by default
    _, h_freqs, w_freqs = config.mrope_section
    axis[1:3 * h_freqs:3] = 1  # frequencies 1, 4, 7, ... turn with the row
    axis[2:3 * w_freqs:3] = 2  # frequencies 2, 5, 8, ... turn with the column
    return axis


def interleaved_mrope_cos_sin(position_ids: torch.Tensor, config: Qwen3TextConfig):
    """cos and sin of the interleaved M-RoPE angles: position_ids (3, B, L) -> two (B, L, hd), float32."""
    if position_ids.ndim != 3 or position_ids.shape[0] != 3:
        raise ValueError(f"position_ids must be (3, B, L) (time, height, width), got {tuple(position_ids.shape)}")
    inv_freq = rope_inv_freq(config, position_ids.device)  # (hd/2,)
    angles = position_ids[..., None].float() * inv_freq  # (3, B, L, hd/2): every axis at every frequency
    freq = torch.arange(inv_freq.shape[0], device=position_ids.device)
    angles = angles[interleaved_axis(config).to(freq.device), :, :, freq]  # (hd/2, B, L): its axis' angle
    angles = rearrange(angles, "f b l -> b l f")  # (B, L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, L, hd)
    return angles.cos(), angles.sin()


class Qwen3Attention(Attention):
    """Grouped-query attention without biases, with an RMSNorm over each head of q and of k."""

    def __init__(self, config: Qwen3TextConfig, layer_idx: int):
        bias = config.attention_bias
        super().__init__(config, layer_idx, qkv_bias=bias, o_bias=bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def qkv_heads(self, x):
        q, k, v = super().qkv_heads(x)  # (B, H, L, hd), (B, G, L, hd) x 2
        return self.q_norm(q), self.k_norm(k), v  # each head normalised over its hd channels


class Qwen3DecoderLayer(DecoderLayer):
    attention = Qwen3Attention


def add_deepstack(h: torch.Tensor, visual_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """h (B, L, D) + features (N, D) at the N positions where visual_mask (B, L) is True (row-major)."""
    h = h.clone()
    h[visual_mask] = h[visual_mask] + features.to(h.dtype)  # (N, D)
    return h


class Qwen3TextModel(TextModel):
    """Embedding table, Qwen3 decoder layers, final norm; DeepStack features added after the first layers."""

    layer = Qwen3DecoderLayer

    def forward(self, inputs_embeds, position_ids, attention_mask=None, cache: KVCache | None = None,
                visual_mask: torch.Tensor | None = None, deepstack: list[torch.Tensor] = ()):
        """inputs_embeds (B, L, D), position_ids (3, B, L) -> final hidden states (B, L, D).

        visual_mask (B, L) marks the visual tokens; deepstack[i] (N_visual, D) is added to them
        after layer i. Without visual tokens (text, or a decode step) both stay empty.
        """
        B, L, _ = inputs_embeds.shape
        if position_ids.shape != (3, B, L):
            raise ValueError(f"position_ids must be (3, {B}, {L}), got {tuple(position_ids.shape)}")
        past = cache.length if cache is not None else 0
        cos, sin = interleaved_mrope_cos_sin(position_ids, self.config)  # (B, L, hd) each
        cos, sin = cos.to(inputs_embeds.dtype), sin.to(inputs_embeds.dtype)
        mask = attention_mask_4d(attention_mask, past, L, inputs_embeds.device)  # None or (B, 1, L, T)
        h = inputs_embeds
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, cache)  # (B, L, D)
            if i < len(deepstack):
                h = add_deepstack(h, visual_mask, deepstack[i])  # (B, L, D)
        return self.norm(h)  # (B, L, D)
