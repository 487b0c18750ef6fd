"""Figures of chapter 12 (speed and memory): the vision tower's cost against image size, and the roofline.

Both are predictions from the config (params.vision_flops, costs.prefill_flops, decode_weight_bytes),
so the stored PNGs do not depend on the machine; the chapter adds its own measured points inline.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..config import Qwen25VLConfig
from ..costs import decode_weight_bytes, prefill_flops
from ..params import vision_flops
from ..preprocess import smart_resize

SIDES = (224, 448, 672, 896, 1344, 1792, 2688, 3584)  # square images, pixels per side
EXAMPLE_ROOF = {"gflops": 420.0, "copy_gbs": 18.0}  # a 2-core CPU with native bfloat16 (appendix A.9)


def vision_grid(side: int) -> list[list[int]]:
    """The patch grid of a side x side image after smart_resize (the checkpoint's pixel limits)."""
    h, w = smart_resize(side, side)
    return [[1, h // 14, w // 14]]


def vision_cost_parts(config: Qwen25VLConfig, sides=SIDES) -> dict[str, np.ndarray]:
    """Per side: patches, and TFLOP of the linear layers (patch embed, blocks, merger), the windowed
    attention and the full attention."""
    rows = [(int(np.prod(vision_grid(s)[0])), vision_flops(config, vision_grid(s))[1]) for s in sides]
    return {
        "patches": np.array([n for n, _ in rows]),
        "linear": np.array([(p["patch_embed"] + p["linear"] + p["merger"]) / 1e12 for _, p in rows]),
        "window_attention": np.array([p["window_attention"] / 1e12 for _, p in rows]),
        "full_attention": np.array([p["full_attention"] / 1e12 for _, p in rows]),
    }


def vision_cost(config: Qwen25VLConfig | None = None, measured: dict | None = None, sides=SIDES):
    """Figure 12.1: TFLOP of the 3B tower per image size, split into linear layers, windowed attention
    (grows like the patches) and the 4 full-attention blocks (grows like patches^2). `measured`
    ({"patches": [...], "seconds": [...], "predicted": [...]}) adds a second panel: time against prediction."""
    config = config or Qwen25VLConfig.preset("3b")
    parts = vision_cost_parts(config, sides)
    panels = 2 if measured else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.2), dpi=90, squeeze=False)
    ax = axes[0, 0]
    n = parts["patches"]
    bottom = np.zeros(len(n))
    for key, colour, label in (("linear", "#3b75af", "linear layers (grow like N)"),
                               ("window_attention", "#6fb36f", "windowed attention (like N)"),
                               ("full_attention", "#e07b39", "4 full-attention blocks (like N^2)")):
        ax.fill_between(n, bottom, bottom + parts[key], color=colour, alpha=0.8, label=label)
        bottom = bottom + parts[key]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=parts["linear"][0] / 2)
    ax.set_xlabel("patches N (square images of 224 ... 3584 px)")
    ax.set_ylabel("TFLOP, stacked")
    ax.set_title("the 3B vision tower: predicted work per image")
    ax.legend(fontsize=8, loc="upper left")
    if measured:
        ax = axes[0, 1]
        ax.plot(measured["patches"], measured["predicted"], "o--", color="#999999", label="predicted (FLOPs / matmul speed)")
        ax.plot(measured["patches"], measured["seconds"], "s-", color="#3b75af", label="measured")
        ax.set_xlabel("patches N")
        ax.set_ylabel("seconds")
        ax.set_title(measured.get("title", "measured on this machine"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roofline(roof: dict | None = None, points: dict | None = None, config: Qwen25VLConfig | None = None):
    """Figure 12.2: attainable GFLOP/s = min(matmul peak, intensity x bandwidth), with the 3B text model's
    prefill (403 tokens) and decode (one token) placed by their FLOPs per byte of weights read in bfloat16.
    `points` ({label: (flops_per_byte, gflops)}) adds measured points."""
    roof = roof or EXAMPLE_ROOF
    config = config or Qwen25VLConfig.preset("3b")
    weights = decode_weight_bytes(config, "bfloat16")
    predicted = {"prefill, 403 tokens": prefill_flops(config, 403)[0] / weights,
                 "decode, 1 token": prefill_flops(config, 1)[0] / weights}
    x = np.logspace(-1, 4, 200)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
    ax.plot(x, np.minimum(roof["gflops"], x * roof["copy_gbs"]), color="black", label="roof: min(peak, intensity x bandwidth)")
    for (label, intensity), colour in zip(predicted.items(), ("#e07b39", "#3b75af")):
        ax.plot([intensity], [min(roof["gflops"], intensity * roof["copy_gbs"])], "o", color=colour, ms=9, label=label)
    for label, (intensity, gflops) in (points or {}).items():
        ax.plot([intensity], [gflops], "x", ms=9, mew=2, label=f"measured: {label}")
    ax.axvline(roof["gflops"] / roof["copy_gbs"], color="#999999", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per byte of weights read (arithmetic intensity)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"roofline: peak {roof['gflops']:.0f} GFLOP/s, bandwidth {roof['copy_gbs']:.0f} GB/s")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


FIGURES = {"12_vision_cost": vision_cost, "12_roofline": roofline}
