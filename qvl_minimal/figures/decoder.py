"""Figures of the decoder (chapter 08): the causal + padding mask, and the KV cache's memory.

The mask is the library's `attention_mask_4d`; the byte counts come from `kv_cache_bytes` below
(checked in chapter 08 against the tensors a real KVCache holds) and `parameter_bytes`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from ..config import Qwen25VLConfig, TextConfig
from ..params import parameter_bytes
from ..text import attention_mask_4d

GIB = 2**30


def kv_cache_bytes(config: TextConfig, tokens: int, bytes_per_value: int = 2, kv_heads: int | None = None) -> int:
    """Bytes of the KV cache for `tokens` tokens of one sequence, over all decoder layers.

    Each layer stores a key AND a value vector of head_dim numbers for each KV head:
    2 * layers * kv_heads * head_dim * bytes_per_value per token (bfloat16: 2 bytes). The query
    heads are not stored, so only the number of KV heads matters; `kv_heads` overrides it.
    """
    kv_heads = config.num_key_value_heads if kv_heads is None else kv_heads
    return 2 * config.num_hidden_layers * kv_heads * config.head_dim * bytes_per_value * tokens


def padding_mask(length: int = 10, padding: int = 3):
    """Figure 8.1: which keys each query sees, for an unpadded row and a row with left padding."""
    attention_mask = torch.ones(2, length, dtype=torch.long)  # (2, L)
    attention_mask[1, :padding] = 0
    allowed = attention_mask_4d(attention_mask, past=0, length=length)[:, 0]  # (2, L, L) booleans
    causal_real = torch.tril(torch.ones(length, length, dtype=torch.bool)) & attention_mask.bool()[:, None, :]
    # 0 = blocked, 1 = allowed (causal, real key), 2 = allowed only so the row is not empty
    code = allowed.long() + (allowed & ~causal_real).long()  # (2, L, L)
    cmap = ListedColormap(["#f4f4f4", "#3b75af", "#f0a030"])
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 4.0), dpi=90)
    titles = ("row 0: no padding (pure causal)", f"row 1: {padding} padding tokens on the left")
    for b, ax in enumerate(axes):
        ax.imshow(code[b].numpy(), cmap=cmap, vmin=0, vmax=2)
        ax.set_xticks(range(length), ["pad" if m == 0 else str(i) for i, m in enumerate(attention_mask[b].tolist())],
                      fontsize=7)
        ax.set_yticks(range(length), ["pad" if m == 0 else str(i) for i, m in enumerate(attention_mask[b].tolist())],
                      fontsize=7)
        ax.set_xlabel("key (token attended to)")
        ax.set_ylabel("query (token attending)")
        ax.set_title(titles[b], fontsize=9)
        ax.set_xticks(np.arange(-0.5, length), minor=True)
        ax.set_yticks(np.arange(-0.5, length), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in cmap.colors]
    fig.legend(handles, ["blocked", "allowed", "padding query sees itself (avoids an empty softmax row)"],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def kv_cache_memory(max_tokens: int = 128_000):
    """Figure 8.2: KV-cache memory (bfloat16) vs context length, 3B's GQA vs a 16-KV-head model."""
    config = Qwen25VLConfig.preset("3b")
    tc = config.text_config
    tokens = np.linspace(0, max_tokens, 257)
    gqa = np.array([kv_cache_bytes(tc, int(n)) for n in tokens]) / GIB
    mha = np.array([kv_cache_bytes(tc, int(n), kv_heads=tc.num_attention_heads) for n in tokens]) / GIB
    weights = parameter_bytes(config, "bfloat16") / GIB
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=90)
    ax.plot(tokens / 1000, mha, color="#c0392b", label=f"hypothetical MHA: {tc.num_attention_heads} KV heads")
    ax.plot(tokens / 1000, gqa, color="#3b75af", label=f"3B as released: GQA, {tc.num_key_value_heads} KV heads")
    ax.axhline(weights, color="gray", linestyle="--", linewidth=1)
    ax.text(max_tokens / 1000 * 0.45, weights * 1.04, f"the 3B weights themselves (bf16): {weights:.1f} GiB",
            fontsize=8, color="gray")
    ax.axvline(32_768 / 1000, color="gray", linewidth=0.8, linestyle=":")
    n32 = 32_768
    for heads, color in ((tc.num_key_value_heads, "#3b75af"), (tc.num_attention_heads, "#c0392b")):
        y = kv_cache_bytes(tc, n32, kv_heads=heads) / GIB
        ax.plot([n32 / 1000], [y], "o", color=color)
        ax.annotate(f"{y:g} GiB at 32k", (n32 / 1000, y), textcoords="offset points",
                    xytext=(8, 6 if heads == tc.num_key_value_heads else -4), fontsize=8, color=color)
    ax.set_xlabel("context length (thousand tokens)")
    ax.set_ylabel("KV cache of one sequence (GiB, bf16)")
    ax.set_title(f"{tc.num_hidden_layers} layers x 2 (K, V) x KV heads x {tc.head_dim} x 2 bytes per token", fontsize=9)
    ax.set_xlim(0, max_tokens / 1000)
    ax.set_ylim(0, None)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


FIGURES = {"08_padding_mask": padding_mask, "08_kv_cache_memory": kv_cache_memory}
