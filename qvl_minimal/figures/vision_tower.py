"""Figures of chapter 05 (the vision tower): the merger's 2 x 2 grouping, where the parameters are.

Everything drawn is computed by the library: preprocess_image and patch_positions give the rows of
each merge unit, a VisionTransformer built on the meta device gives the parameter counts.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, Rectangle

from ..config import VisionConfig
from ..vision import VisionTransformer, patch_positions
from .vision import _photo_patches, rebuild_frame

PATCH, MERGE = 14, 2  # patch side in pixels, merge-unit side in patches
COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"]  # the 4 patches of one merge unit


def merger_grouping(unit_rc=(7, 8)):
    """Figure 5.1: four consecutive pixel_values rows = one 2 x 2 unit -> one 5120 vector -> one token."""
    pixel_values, grid = _photo_patches()
    img = rebuild_frame(pixel_values, grid)  # (588, 504, 3)
    _, h, w = grid[0].tolist()
    pos = patch_positions(grid)  # (N, 2): (row, col) of every row of pixel_values
    ur, uc = unit_rc  # the merge unit we follow, in merged coordinates
    token = ur * (w // MERGE) + uc  # its token index in raster order
    rows = [i for i, (r, c) in enumerate(pos.tolist()) if r // MERGE == ur and c // MERGE == uc]
    assert rows == list(range(4 * token, 4 * token + 4))  # consecutive: the merger's view(-1, 5120) works

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), dpi=85, gridspec_kw={"width_ratios": [1, 1.25, 1]})
    ax = axes[0]  # zoom on 6 x 6 patches around the unit
    r0, c0 = (ur - 1) * MERGE, (uc - 1) * MERGE
    ax.imshow(img[r0 * PATCH:(r0 + 6) * PATCH, c0 * PATCH:(c0 + 6) * PATCH], extent=(0, 6, 6, 0))
    for k in range(7):
        style = dict(color="white", lw=2.0 if k % 2 == 0 else 0.6)
        ax.axvline(k, **style), ax.axhline(k, **style)
    for k, i in enumerate(rows):
        r, c = pos[i].tolist()
        ax.add_patch(Rectangle((c - c0, r - r0), 1, 1, fc=COLORS[k], alpha=0.45, ec=COLORS[k], lw=2))
        ax.text(c - c0 + 0.5, r - r0 + 0.5, f"row\n{i}", ha="center", va="center", fontsize=8, color="white",
                fontweight="bold")
    ax.set_title(f"merge unit ({ur}, {uc}): patches of rows {rows[0]}..{rows[-1]}", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])

    ax = axes[1]  # ln_q per row, then concatenation into 5120 and the MLP
    ax.set_xlim(0, 10), ax.set_ylim(0, 10), ax.axis("off")
    for k, i in enumerate(rows):
        ax.add_patch(Rectangle((0.2, 8.4 - 1.1 * k), 2.6, 0.8, fc=COLORS[k], alpha=0.7))
        ax.text(1.5, 8.8 - 1.1 * k, f"row {i}: 1280", ha="center", va="center", fontsize=8)
    ax.text(1.5, 9.6, "ln_q (RMSNorm) per row", ha="center", fontsize=9)
    for k in range(4):
        ax.add_patch(Rectangle((3.6 + 1.5 * k, 6.9), 1.5, 0.8, fc=COLORS[k], alpha=0.7))
    ax.text(6.6, 7.95, "view(-1, 5120): one 2 x 2 unit", ha="center", fontsize=9)
    ax.add_artist(FancyArrowPatch((2.9, 7.3), (3.5, 7.3), arrowstyle="->", mutation_scale=12))
    steps = ["Linear 5120 -> 5120", "GELU (exact, erf)", "Linear 5120 -> 2048"]
    for k, s in enumerate(steps):
        ax.add_patch(Rectangle((4.3, 5.0 - 1.5 * k), 4.6, 0.9, fc="#eeeeee", ec="gray"))
        ax.text(6.6, 5.45 - 1.5 * k, s, ha="center", va="center", fontsize=9)
        top = 6.8 if k == 0 else 5.0 - 1.5 * (k - 1)
        ax.add_artist(FancyArrowPatch((6.6, top), (6.6, 5.95 - 1.5 * k), arrowstyle="->", mutation_scale=12))
    ax.add_artist(FancyArrowPatch((6.6, 2.0), (6.6, 1.2), arrowstyle="->", mutation_scale=12))
    ax.text(6.6, 0.8, f"token {token} of {h * w // 4} (width 2048)", ha="center", fontsize=9)

    ax = axes[2]  # the token grid over the photo
    ax.imshow(img, extent=(0, w // MERGE, h // MERGE, 0), alpha=0.55)
    for k in range(w // MERGE + 1):
        ax.axvline(k, color="gray", lw=0.3)
    for k in range(h // MERGE + 1):
        ax.axhline(k, color="gray", lw=0.3)
    ax.add_patch(Rectangle((uc, ur), 1, 1, fc="#9467bd", ec="black", lw=1.5))
    ax.set_title(f"{h // MERGE} x {w // MERGE} tokens, raster order: token {token}", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def block_parameters(config: VisionConfig | None = None):
    """Figure 5.2: parameters of one vision block by part, and of the tower by part (3B width)."""
    config = config or VisionConfig()
    with torch.device("meta"):
        tower = VisionTransformer(config)
    block = {n: sum(p.numel() for p in m.parameters()) for n, m in tower.blocks[0].named_modules()
             if n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    parts = {"patch_embed": tower.patch_embed, "32 blocks": tower.blocks, "merger": tower.merger}
    whole = {n: sum(p.numel() for p in m.parameters()) for n, m in parts.items()}

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), dpi=85)
    for ax, counts, title in [(axes[0], block, f"one vision block: {sum(block.values()):,}"),
                              (axes[1], whole, f"vision tower + merger: {sum(whole.values()):,}")]:
        names, values = list(counts), np.array(list(counts.values())) / 1e6
        bars = ax.barh(names[::-1], values[::-1], color="#4c72b0")
        for bar, n in zip(bars, list(counts.values())[::-1]):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {n:,}", va="center", fontsize=8)
        ax.set_xlim(0, values.max() * 1.3)
        ax.set_xlabel("parameters (millions)"), ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


FIGURES = {
    "05_merger_grouping": merger_grouping,
    "05_block_parameters": block_parameters,
}
