"""Chapter 00: Qwen2.5-VL in one picture, every size read from the config."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)  # draw off-screen unless a notebook backend is already active
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from ..config import Qwen25VLConfig  # noqa: E402
from ..params import count_parameters  # noqa: E402

VISION, TEXT, DATA = "#dbe9f6", "#fde7c8", "#eeeeee"  # box colours: vision tower, language model, tensors


def _box(ax, x, y, w, h, title, body, color):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#444444", lw=1.0))
    ax.text(x, y + h / 2 - 0.1, title, ha="center", va="top", fontsize=10, fontweight="bold")
    ax.text(x, y + h / 2 - 0.38, body, ha="center", va="top", fontsize=8.5, linespacing=1.3)


def _arrow(ax, start, end, label=None, **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.2, color="#333333", **kw))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.1, label, ha="center", va="bottom",
                fontsize=7.5, color="#444444")


def architecture(config: Qwen25VLConfig | None = None) -> plt.Figure:
    """Image -> patches -> patch embed -> vision blocks -> merger -> spliced tokens -> decoder -> logits."""
    config = config or Qwen25VLConfig.preset("3b")
    v, t = config.vision_config, config.text_config
    m2 = v.spatial_merge_size**2  # patches per visual token (4)
    win = v.window_size // v.patch_size  # window side in patches (8)
    full = ", ".join(str(i) for i in v.fullatt_block_indexes)
    head = "tied to embed_tokens" if t.tie_word_embeddings else "its own matrix"

    fig, ax = plt.subplots(figsize=(12, 5.0), dpi=90)
    ax.set(xlim=(0, 12), ylim=(0.2, 5.0))
    ax.axis("off")
    bw, bh = 1.7, 1.2  # box size
    xs = [0.95 + 2.02 * i for i in range(6)]

    # Row 1: the vision tower (视觉编码器)
    y1 = 4.0
    ax.text(0.12, 4.95, "vision tower + merger", fontsize=10, fontweight="bold", color="#1f4e79", va="top")
    row1 = [
        ("image", f"H x W pixels, RGB\nresized to multiples\nof {v.patch_size * v.spatial_merge_size} px", DATA),
        ("patches", f"(N, {v.patch_dim})\n{v.in_chans} x {v.temporal_patch_size} frames\n"
                    f"x {v.patch_size} x {v.patch_size} px each", DATA),
        ("patch embed", f"Conv3d = Linear\n{v.patch_dim} -> {v.hidden_size}\n(N, {v.hidden_size})", VISION),
        (f"{v.depth} vision blocks", f"{v.depth - len(v.fullatt_block_indexes)} in {win}x{win}-patch windows\n"
                                     f"{len(v.fullatt_block_indexes)} full: {full}\n"
                                     f"{v.num_heads} heads, 2D RoPE", VISION),
        ("merger", f"RMSNorm, 2x2 -> {m2 * v.hidden_size}\nMLP {m2 * v.hidden_size} -> "
                   f"{m2 * v.hidden_size}\n-> {v.out_hidden_size}", VISION),
        ("visual tokens", f"(N/{m2}, {v.out_hidden_size})\none per 2x2 patches", DATA),
    ]
    for x, (title, body, color) in zip(xs, row1):
        _box(ax, x, y1, bw, bh, title, body, color)
    for a, b in zip(xs, xs[1:]):
        _arrow(ax, (a + bw / 2, y1), (b - bw / 2, y1))

    # Row 2: the language model (语言模型)
    y2 = 0.9
    ax.text(0.12, 1.8, "language model", fontsize=10, fontweight="bold", color="#8a4b00", va="top")
    row2 = [
        ("token ids", "(L,) text ids with\nN/4 x <|image_pad|>\n" + f"(id {config.image_token_id})", DATA),
        ("embed_tokens", f"{t.vocab_size} x {t.hidden_size}\n(L, {t.hidden_size})", TEXT),
        ("splice", f"visual tokens replace\nthe <|image_pad|> rows\n(L, {t.hidden_size})", TEXT),
        (f"{t.num_hidden_layers} decoder layers", f"GQA {t.num_attention_heads} q / {t.num_key_value_heads} kv heads\n"
                                                  f"M-RoPE (t, h, w)\nSwiGLU {t.intermediate_size}", TEXT),
        ("norm + lm_head", f"RMSNorm, then\n{t.hidden_size} -> {t.vocab_size}\n({head})", TEXT),
        ("logits", f"(L, {t.vocab_size})\nnext token =\nargmax of last row", DATA),
    ]
    for x, (title, body, color) in zip(xs, row2):
        _box(ax, x, y2, bw, bh, title, body, color)
    for a, b in zip(xs, xs[1:]):
        _arrow(ax, (a + bw / 2, y2), (b - bw / 2, y2))
    # which vision blocks attend inside windows (light) and which over the whole image (dark)
    cell = bw / v.depth
    for i in range(v.depth):
        full_block = i in v.fullatt_block_indexes
        ax.add_patch(plt.Rectangle((xs[3] - bw / 2 + i * cell, y1 - bh / 2 - 0.3), cell * 0.85, 0.2,
                                   fc="#1f4e79" if full_block else "#9cc3e6", ec="none"))
    ax.text(xs[3], y1 - bh / 2 - 0.36, f"blocks 0..{v.depth - 1}: light = window, dark = full", ha="center",
            va="top", fontsize=7.5, color="#1f4e79")
    # the visual tokens drop into the splice
    _arrow(ax, (xs[5], y1 - bh / 2), (xs[2] + 0.3, y2 + bh / 2), connectionstyle="arc3,rad=-0.1")
    ax.text(xs[4] + 0.1, (y1 + y2) / 2 - 0.35, "N/4 visual tokens\nenter the sequence", fontsize=8.5,
            ha="left", style="italic", color="#444444")
    fig.tight_layout(pad=0.2)
    return fig


def parameter_shares(names=("3b", "7b", "72b")) -> plt.Figure:
    """Where the parameters live, per released size: one bar per model, split by component (by formula)."""
    parts = [("vision tower + merger", "vision", "#5b9bd5"), ("embed_tokens", "embed_tokens", "#f4b183"),
             ("decoder layers", "decoder_layers", "#c55a11"), ("lm_head", "lm_head", "#7f6000")]
    fig, ax = plt.subplots(figsize=(10, 2.6), dpi=90)
    for row, name in enumerate(names):
        counts = count_parameters(Qwen25VLConfig.preset(name))
        left = 0.0
        for label, key, color in parts:
            share = 100 * counts[key] / counts["total"]
            ax.barh(row, share, left=left, color=color, edgecolor="white", label=label if row == 0 else None)
            if share >= 4:  # label the segments wide enough to hold text
                ax.text(left + share / 2, row, f"{share:.1f}%", ha="center", va="center", fontsize=8.5,
                        color="black" if key == "embed_tokens" else "white")
            left += share
        ax.text(101, row, f"{counts['total'] / 1e9:.2f} B", va="center", fontsize=9)
    ax.set_yticks(range(len(names)), [n.upper() for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("share of all parameters (%)")
    ax.legend(ncol=4, fontsize=8.5, loc="upper center", bbox_to_anchor=(0.47, 1.3), frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


FIGURES = {"00_architecture": architecture, "00_parameter_shares": parameter_shares}
