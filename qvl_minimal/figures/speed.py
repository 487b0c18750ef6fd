"""Figures of chapter 12 (speed and memory): the vision tower's cost against image size, and the
roofline of one dtype.

    vision_cost(config, measured)     TFLOP per square image, stacked by kind of work (+ measured panel)
    roofline(roof, points, dtype)     attainable GFLOP/s = min(peak, intensity x bandwidth), one dtype

Both are predictions from the config (params.vision_flops, costs.prefill_flops,
costs.decode_weight_bytes); the stored PNGs use the example roofs below, so they do not depend on
the machine that draws them. The chapter draws the same figures with the roofs and the points it
measures on the reader's machine.
"""

from __future__ import annotations

from functools import partial

import matplotlib.pyplot as plt
import numpy as np

from ..config import Qwen25VLConfig
from ..costs import decode_weight_bytes, prefill_flops
from ..params import vision_flops
from ..preprocess import smart_resize

SIDES = (224, 448, 672, 896, 1344, 1792, 2688, 3584)  # square images, pixels per side
PROMPT_TOKENS = 403  # the photo with chapter 11's question, "Describe this image." (chapter 12 computes it)
# Example roofs: the author's 2-core AMD EPYC with avx512_bf16 (appendix A.9): a large matrix
# product's GFLOP/s in each dtype, and the memory bandwidth a matrix-vector product streamed at.
EXAMPLE_ROOFS = {"float32": {"gflops": 190.0, "copy_gbs": 18.0},
                 "bfloat16": {"gflops": 420.0, "copy_gbs": 18.0}}


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
        ax.plot(measured["patches"], measured["predicted"], "o--", color="#999999",
                label="predicted (FLOPs / matmul speed)")
        ax.plot(measured["patches"], measured["seconds"], "s-", color="#3b75af", label="measured")
        ax.set_xscale("log")
        ax.set_yscale("log")  # time proportional to FLOPs: two parallel lines
        ax.set_xlabel("patches N")
        ax.set_ylabel("seconds")
        ax.set_title(measured.get("title", "measured on this machine"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roofline(roof: dict | None = None, points: dict | None = None, config: Qwen25VLConfig | None = None,
             dtype: str = "bfloat16", prompt_tokens: int = PROMPT_TOKENS):
    """Figures 12.2 and 12.3: the roofline of one dtype, attainable GFLOP/s = min(peak, intensity x
    bandwidth), with the 3B text model's prefill (`prompt_tokens` tokens) and decode (one token) placed
    by their FLOPs per byte of weights read in that dtype. `roof` = {"gflops": peak of a matrix product in
    this dtype, "copy_gbs": memory bandwidth}; `points` ({label: (flops_per_byte, gflops)}) adds
    measured points, which belong under this dtype's roof only."""
    roof = roof or EXAMPLE_ROOFS[dtype]
    config = config or Qwen25VLConfig.preset("3b")
    weights = decode_weight_bytes(config, dtype)
    predicted = {f"3B prefill, {prompt_tokens} tokens": prefill_flops(config, prompt_tokens)[0] / weights,
                 "3B decode, 1 token": prefill_flops(config, 1)[0] / weights}
    ridge = roof["gflops"] / roof["copy_gbs"]  # FLOP/s over byte/s: FLOPs per byte where the roofs meet
    x = np.logspace(-1.5, 3.5, 200)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
    ax.plot(x, np.minimum(roof["gflops"], x * roof["copy_gbs"]), color="black",
            label="roof: min(peak, intensity x bandwidth)")
    ax.axvline(ridge, color="#999999", ls=":", lw=1)
    ax.text(ridge * 1.1, roof["gflops"] * 0.02, f"ridge {ridge:.0f} FLOP/byte", fontsize=8, color="#555555")
    ax.text(x[0] * 1.3, roof["gflops"] * 1.4, "memory-bound", fontsize=8, color="#555555")
    ax.text(ridge * 1.3, roof["gflops"] * 1.4, "compute-bound", fontsize=8, color="#555555")
    for (label, intensity), colour in zip(predicted.items(), ("#e07b39", "#3b75af")):
        ax.plot([intensity], [min(roof["gflops"], intensity * roof["copy_gbs"])], "o", color=colour, ms=9,
                label=f"{label} (predicted)")
    for label, (intensity, gflops) in (points or {}).items():
        ax.plot([intensity], [gflops], "x", ms=9, mew=2, label=f"measured: {label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    highest = max([roof["gflops"], *(gflops for _, gflops in (points or {}).values())])
    ax.set_ylim(top=highest * 3)  # a measured point above a roof measured on a busy machine stays in view
    ax.set_xlabel(f"FLOPs per byte of {dtype} weights read (arithmetic intensity)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{dtype}: peak {roof['gflops']:.0f} GFLOP/s, bandwidth {roof['copy_gbs']:.0f} GB/s")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


FIGURES = {"12_vision_cost": vision_cost,
           "12_roofline_float32": partial(roofline, dtype="float32"),
           "12_roofline_bfloat16": partial(roofline, dtype="bfloat16")}
