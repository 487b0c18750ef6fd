"""Figures of chapter 16 (Qwen3-VL): which position axis turns each rotary frequency.

The interleaved layout comes from the library's `qwen3vl.text.interleaved_axis`; the block layout
is chapter 07's (Qwen2.5-VL's mrope_section (16, 24, 24), consecutive blocks).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from ..qwen3vl.config import Qwen3TextConfig
from ..qwen3vl.text import interleaved_axis

COLORS = ("tab:blue", "tab:orange", "tab:green")  # t, h, w


def interleaved_mrope():
    """Figure 16.1: each of the 64 frequencies coloured by its axis, blocks vs interleaved (top), and
    the wavelengths each axis gets, on a log scale (bottom)."""
    cfg = Qwen3TextConfig()  # head_dim 128, mrope_section (24, 20, 20), rope_theta 5e6
    half = cfg.head_dim // 2
    blocks = torch.repeat_interleave(torch.arange(3), torch.tensor([16, 24, 24]))
    inter = interleaved_axis(cfg)
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    wavelength = 2 * torch.pi / inv_freq  # positions per full turn

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 5.2), dpi=90, gridspec_kw={"height_ratios": [1, 2.2]})
    ax.imshow(torch.stack([blocks, inter]).numpy(), cmap=ListedColormap(COLORS), aspect="auto", vmin=0, vmax=2)
    ax.set_yticks([0, 1], ["blocks\n(Qwen2.5-VL)", "interleaved\n(Qwen3-VL)"], fontsize=8)
    ax.set_xticks(range(0, half, 4))
    ax.set_xlabel("rotary frequency index i (0 = fastest)", fontsize=8)
    ax.set_title("which position id turns frequency i: t (blue), h (orange), w (green)", fontsize=9)

    rows = [(f"{name}: {a}", layout == k, k) for name, layout in (("blocks", blocks), ("interleaved", inter))
            for k, a in enumerate("thw")]
    for y, (label, sel, k) in enumerate(rows):
        ax2.hlines(y, wavelength[sel].min(), wavelength[sel].max(), color=COLORS[k], linewidth=6, alpha=0.3)
        ax2.plot(wavelength[sel].numpy(), [y] * int(sel.sum()), "|", color=COLORS[k], markersize=9)
    ax2.axhline(2.5, color="gray", linewidth=0.8)
    ax2.set_xscale("log")
    ax2.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("wavelength of the frequency: positions per full turn (log scale)", fontsize=8)
    ax2.set_title("each tick one frequency: blocks give w only the slowest (and t only the fastest); "
                  "interleaved, each axis spans fast to slow", fontsize=9)
    fig.tight_layout()
    return fig


FIGURES = {"16_interleaved_mrope": interleaved_mrope}
