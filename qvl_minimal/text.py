"""The language model: a Qwen2 decoder with multimodal rotary positions (M-RoPE).

Each token carries three position ids (time, height, width). Text tokens have the same id on all
three axes, so for pure text M-RoPE is ordinary RoPE; visual tokens get their frame, row and
column. The decoder itself is a standard pre-norm transformer:

    h = h + attn(norm(h))      # grouped-query attention (分组查询注意力), causal, with a KV cache
    h = h + mlp(norm(h))       # SwiGLU without bias

Shapes: B = batch, L = new tokens, T = all tokens seen (cache + new), D = hidden_size,
H = query heads, G = key/value heads, hd = head_dim (128 for every released size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .config import TextConfig
from .layers import RMSNorm, SwiGLU, apply_rotary


def rope_inv_freq(config: TextConfig, device=None) -> torch.Tensor:
    """The hd/2 rotary frequencies 1 / rope_theta^(2i / hd), fastest first. -> (hd/2,) float32"""
    exponent = torch.arange(0, config.head_dim, 2, dtype=torch.int64, device=device).float()
    return 1.0 / (config.rope_theta ** (exponent / config.head_dim))  # (hd/2,)


def mrope_cos_sin(position_ids: torch.Tensor, config: TextConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the M-RoPE angles: position_ids (3, B, L) -> two tensors (B, L, head_dim).

    RoPE turns each pair of channels (i, i + hd/2) by the angle position * inv_freq[i]. M-RoPE splits
    the hd/2 = 64 frequencies into three sections (16, 24, 24 = `mrope_section`): the fastest 16 turn
    with the time id, the next 24 with the height id, the slowest 24 with the width id. The result is
    duplicated to hd channels, the layout `rotate_half` expects. Computed in float32.
    """
    half = config.head_dim // 2
    if sum(config.mrope_section) != half:
        raise ValueError(f"mrope_section {config.mrope_section} must sum to head_dim / 2 = {half}")
    if position_ids.ndim != 3 or position_ids.shape[0] != 3:
        raise ValueError(f"position_ids must be (3, B, L) (time, height, width), got {tuple(position_ids.shape)}")
    inv_freq = rope_inv_freq(config, position_ids.device)  # (64,)
    angles = position_ids[..., None].float() * inv_freq  # (3, B, L, 64): every axis at every frequency
    sections = angles.split(list(config.mrope_section), dim=-1)  # t: (3,B,L,16), h: (..,24), w: (..,24)
    angles = torch.cat([sec[axis] for axis, sec in enumerate(sections)], dim=-1)  # (B, L, 64)
    angles = torch.cat([angles, angles], dim=-1)  # (B, L, 128)
    return angles.cos(), angles.sin()


class KVCache:
    """Keys and values of every token seen so far, one pair of tensors per decoder layer.

    Generating token n+1 needs the keys and values of tokens 0..n, which never change (causal
    attention: earlier tokens cannot see later ones). So we compute them once and append.
    Each stored tensor is (B, G, T, hd), already rotated by RoPE.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """Tokens stored so far (= position of the next token in the cache)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, G, L, hd) keys/values of `layer`; return all of them (B, G, T, hd)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, G, T, hd)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def attention_mask_4d(attention_mask: torch.Tensor | None, past: int, length: int,
                      device=None) -> torch.Tensor | None:
    """Which keys each new query may see: (B, 1, L, T) booleans, or None for plain causal attention.

    attention_mask (B, T) marks real tokens with 1 and (left) padding with 0, for the cache AND the
    new tokens. A query sees a key when the key is not later (causal) and not padding. A padding
    query still sees itself, so no softmax row is empty (an empty row gives NaN, and NaN values
    would leak through the zero weights of later rows). Padding positions produce garbage we ignore.
    """
    total = past + length
    if attention_mask is not None and attention_mask.shape[-1] != total:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens, but the cache holds "
                         f"{past} and {length} are new; pass the mask of all {total} tokens")
    no_padding = attention_mask is None or bool(attention_mask.all())
    if no_padding and (past == 0 or length == 1):
        return None  # prefill without padding: is_causal; one new token: it sees everything
    q_pos = torch.arange(past, total, device=device)[:, None]  # (L, 1)
    k_pos = torch.arange(total, device=device)[None, :]  # (1, T)
    allowed = k_pos <= q_pos  # (L, T) causal
    if attention_mask is None:
        return allowed  # (L, T): broadcasts over batch and heads
    allowed = (allowed & attention_mask.bool()[:, None, :]) | (k_pos == q_pos)  # (B, L, T)
    return rearrange(allowed, "b l t -> b 1 l t")  # (B, 1, L, T): the same for every head


class Attention(nn.Module):
    """Causal grouped-query attention: H query heads share G key/value heads (3B: 16 over 2)."""

    def __init__(self, config: TextConfig, layer_idx: int, qkv_bias: bool = True, o_bias: bool = False):
        super().__init__()
        D, hd = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        if self.heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.heads} must be a multiple of num_key_value_heads "
                             f"{self.kv_heads}")
        self.layer_idx = layer_idx  # where this layer's keys/values live in the KVCache
        self.q_proj = nn.Linear(D, self.heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(D, self.kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(D, self.kv_heads * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(self.heads * hd, D, bias=o_bias)

    def qkv_heads(self, x):
        """x (B, L, D) -> q (B, H, L, hd), k and v (B, G, L, hd), before rotary."""
        q = rearrange(self.q_proj(x), "b l (h d) -> b h l d", d=self.head_dim)  # (B, H, L, hd)
        k = rearrange(self.k_proj(x), "b l (g d) -> b g l d", d=self.head_dim)  # (B, G, L, hd)
        v = rearrange(self.v_proj(x), "b l (g d) -> b g l d", d=self.head_dim)  # (B, G, L, hd)
        return q, k, v

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None):
        # x (B, L, D); cos, sin (B, L, hd); mask None or (B, 1, L, T) booleans
        q, k, v = self.qkv_heads(x)  # (B, H, L, hd), (B, G, L, hd) x 2
        cos, sin = rearrange(cos, "b l d -> b 1 l d"), rearrange(sin, "b l d -> b 1 l d")
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.append(self.layer_idx, k, v)  # (B, G, T, hd)
        r = self.heads // self.kv_heads
        if x.shape[1] == 1 and mask is None:  # one new token that sees everything (decode)
            # the r query heads of a group side by side, as r queries of its key/value head: no copy of the cache
            q = rearrange(q, "b (g r) 1 d -> b g r d", r=r)  # (B, G, r, hd)
            out = F.scaled_dot_product_attention(q, k, v)  # (B, G, r, hd)
            return self.o_proj(rearrange(out, "b g r d -> b 1 (g r d)"))  # (B, 1, D)
        # each group of H/G query heads reads the same key/value head
        k = repeat(k, "b g t d -> b (g r) t d", r=r)  # (B, H, T, hd)
        v = repeat(v, "b g t d -> b (g r) t d", r=r)  # (B, H, T, hd)
        # mask None here: plain causal prefill (see attention_mask_4d)
        causal = mask is None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, H, L, hd)
        return self.o_proj(rearrange(out, "b h l d -> b l (h d)"))  # (B, L, D)


class DecoderLayer(nn.Module):
    """Pre-norm block: attention then SwiGLU MLP, each added to the residual stream."""

    attention = Attention  # the attention class (a subclass may swap it: Qwen3-VL's normalises q and k)

    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self.attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, h, cos, sin, mask=None, cache=None):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache)  # (B, L, D)
        return h + self.mlp(self.post_attention_layernorm(h))  # (B, L, D)


class TextModel(nn.Module):
    """Embedding table, decoder layers, final norm. The head (logits) lives in `Qwen25VL`."""

    layer = DecoderLayer  # the decoder layer class (a subclass may swap it)

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    def forward(self, inputs_embeds, position_ids, attention_mask=None, cache: KVCache | None = None):
        """inputs_embeds (B, L, D), position_ids (3, B, L) -> final hidden states (B, L, D).

        attention_mask (B, T): 1 = token, 0 = padding, covering the cached tokens and the new ones.
        With a cache, the new keys/values are appended to it (prefill, then one token at a time).
        """
        B, L, _ = inputs_embeds.shape
        if position_ids.shape != (3, B, L):
            raise ValueError(f"position_ids must be (3, {B}, {L}), got {tuple(position_ids.shape)}")
        past = cache.length if cache is not None else 0
        cos, sin = mrope_cos_sin(position_ids, self.config)  # (B, L, hd) each
        cos, sin = cos.to(inputs_embeds.dtype), sin.to(inputs_embeds.dtype)
        mask = attention_mask_4d(attention_mask, past, L, inputs_embeds.device)  # None or (B, 1, L, T)
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)  # (B, L, D)
        return self.norm(h)  # (B, L, D)
