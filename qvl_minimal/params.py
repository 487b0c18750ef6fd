"""Parameter counting by formula: how big each part of Qwen2.5-VL is, read off the config alone.

Every count below is a sum of weight matrices and bias vectors, written out so that it can be
checked by hand. For the 3B model (vision width H = 1280, MLP width I = 3420):

    one vision block = 2 RMSNorms             2 * H
                     + qkv  Linear(H, 3H)     3H * H + 3H
                     + proj Linear(H, H)      H * H + H
                     + gate, up Linear(H, I)  2 * (H * I + I)
                     + down Linear(I, H)      I * H + H
                     = 4H^2 + 3HI + 7H + 2I  = 19,702,200

The tests check every formula against the reference model built on the meta device (shapes
only, no memory), and the totals against the published sizes of the released checkpoints.

`vision_flops` counts the work of one forward pass of the vision tower on a given grid, with one
definition used everywhere in the book: 2 FLOPs per multiply-add, in every matrix product of the
tower (patch embedding, each block's four weight matrices, attention scores and weighted sums, the
merger); norms, activations, rotary and bias additions are left out (they are a few per value).
On the sample photo (grid (1, 42, 36), 1512 patches) with the 3B tower: about 2.0 TFLOP, of which
the blocks' linear layers 1.9.
"""

from __future__ import annotations

from .config import Qwen25VLConfig, VisionConfig
from .vision import check_grid, full_cu_seqlens, window_index

BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2, "float16": 2}  # storage of one weight


def _linear(d_in: int, d_out: int, bias: bool) -> int:
    """Parameters of nn.Linear(d_in, d_out): the (d_out, d_in) matrix, plus d_out biases."""
    return d_out * d_in + (d_out if bias else 0)


def vision_counts(config: Qwen25VLConfig) -> dict[str, int]:
    """Patch embedding, one vision block, all blocks, and the merger (vision tower + merger)."""
    v = config.vision_config
    h, i = v.hidden_size, v.intermediate_size
    patch_embed = v.patch_dim * h  # Conv3d(3, H, kernel=(2, 14, 14), bias=False) = Linear(1176 -> H)
    block = (
        2 * h  # norm1, norm2 (RMSNorm: one weight per channel)
        + _linear(h, 3 * h, bias=True)  # attn.qkv: queries, keys and values in one matrix
        + _linear(h, h, bias=True)  # attn.proj
        + 2 * _linear(h, i, bias=True)  # mlp.gate_proj, mlp.up_proj
        + _linear(i, h, bias=True)  # mlp.down_proj
    )
    merged = h * v.spatial_merge_size**2  # 2 x 2 neighbouring patches side by side: 4 * 1280 = 5120
    merger = (
        h  # ln_q: RMSNorm over the 1280-wide features, before grouping
        + _linear(merged, merged, bias=True)  # mlp.0
        + _linear(merged, v.out_hidden_size, bias=True)  # mlp.2: to the language model's width
    )
    counts = {"patch_embed": patch_embed, "vision_block": block, "vision_blocks": v.depth * block, "merger": merger}
    counts["vision"] = patch_embed + v.depth * block + merger
    return counts


def vision_flops(config: Qwen25VLConfig | VisionConfig, grid_thw) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of the vision tower + merger on images/videos of `grid_thw`: (total, breakdown).

    With N patches, width H, MLP width I, merged width 4H, output width O:
        patch_embed       2 * N * 1176 * H                     one Linear(1176 -> H) per patch
        linear            depth * 2 * N * (3H*H + H*H + 3*H*I) qkv, proj, gate, up, down of every block
        window_attention  (windowed blocks) * 4 * H * sum(L^2) over the windows (L patches each)
        full_attention    (full blocks) * 4 * H * sum(L^2) over the time steps (L = h * w)
        merger            2 * (N / 4) * (4H * 4H + 4H * O)
    Attention of a segment of L patches: scores (L x d) @ (d x L) and weighted sum (L x L) @ (L x d)
    per head, 2 * 2 * L^2 * d FLOPs, summed over the heads (heads * d = H): 4 * H * L^2.
    """
    v = getattr(config, "vision_config", config)
    grid = check_grid(grid_thw, v.spatial_merge_size)
    n = int(grid.prod(-1).sum())  # patches
    h, i = v.hidden_size, v.intermediate_size
    _, cu_window = window_index(grid, v)  # (windows + 1,)
    cu_full = full_cu_seqlens(grid)  # (time steps + 1,)
    full_blocks = sum(1 for b in range(v.depth) if b in v.fullatt_block_indexes)
    merged = h * v.spatial_merge_size**2  # 5120
    parts = {
        "patch_embed": 2 * n * v.patch_dim * h,
        "linear": v.depth * 2 * n * (3 * h * h + h * h + 3 * h * i),
        "window_attention": (v.depth - full_blocks) * 4 * h * int((cu_window.diff() ** 2).sum()),
        "full_attention": full_blocks * 4 * h * int((cu_full.diff() ** 2).sum()),
        "merger": 2 * (n // v.spatial_merge_size**2) * (merged * merged + merged * v.out_hidden_size),
    }
    return sum(parts.values()), parts


def text_counts(config: Qwen25VLConfig) -> dict[str, int]:
    """Token embedding, one decoder layer, all layers, final norm, lm_head (0 when tied)."""
    t = config.text_config
    d, kv = t.hidden_size, t.num_key_value_heads * t.head_dim  # kv: width of the keys (256 for 3B)
    embed_tokens = t.vocab_size * d
    layer = (
        _linear(d, t.num_attention_heads * t.head_dim, bias=True)  # self_attn.q_proj
        + 2 * _linear(d, kv, bias=True)  # self_attn.k_proj, v_proj: only 2 KV heads for 3B (GQA)
        + _linear(t.num_attention_heads * t.head_dim, d, bias=False)  # self_attn.o_proj (no bias)
        + 2 * _linear(d, t.intermediate_size, bias=False)  # mlp.gate_proj, mlp.up_proj
        + _linear(t.intermediate_size, d, bias=False)  # mlp.down_proj
        + 2 * d  # input_layernorm, post_attention_layernorm
    )
    norm = d  # the final RMSNorm
    lm_head = 0 if t.tie_word_embeddings else _linear(d, t.vocab_size, bias=False)  # tied: reuses embed_tokens
    counts = {"embed_tokens": embed_tokens, "decoder_layer": layer, "decoder_layers": t.num_hidden_layers * layer,
              "norm": norm, "lm_head": lm_head}
    counts["text"] = embed_tokens + t.num_hidden_layers * layer + norm + lm_head
    return counts


def count_parameters(config: Qwen25VLConfig) -> dict[str, int]:
    """Parameters per component, by formula from the config (no model is built).

    Keys: patch_embed, vision_block (one), vision_blocks (all), merger, vision (tower + merger),
    embed_tokens, decoder_layer (one), decoder_layers (all), norm, lm_head (0 when tied), text,
    total. For "3b": total 3,754,622,976, of which vision 668,684,288.
    """
    counts = {**vision_counts(config), **text_counts(config)}
    counts["total"] = counts["vision"] + counts["text"]
    return counts


def parameter_bytes(config: Qwen25VLConfig, dtype: str = "bfloat16") -> int:
    """Bytes needed to hold the weights alone in `dtype` (no activations, no KV cache)."""
    if dtype not in BYTES_PER_PARAMETER:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(BYTES_PER_PARAMETER)}")
    return count_parameters(config)["total"] * BYTES_PER_PARAMETER[dtype]
