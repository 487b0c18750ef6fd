"""Chapter 15's figures: one box in the model's pixels and in the file's, and the three conventions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from ..grounding import from_relative, to_original, to_resized
from ..preprocess import smart_resize
from ..samples import sample_photo

FACE = [160, 125, 365, 330]  # Grace Hopper's face in the sample photo's own pixels (512 x 600), drawn by eye
ZOOM = 4                     # the "large photo": the sample enlarged 4x, 2048 x 2400 px
BUDGET = 1280 * 28 * 28      # a common --max-pixels setting (1280 tokens' worth of pixels)


def large_photo() -> tuple[Image.Image, list[int]]:
    """The sample photo enlarged ZOOM times (a stand-in for a 5-megapixel camera file) and the face's box in it."""
    photo = sample_photo()
    big = photo.resize((photo.width * ZOOM, photo.height * ZOOM), Image.BICUBIC)
    return big, [v * ZOOM for v in FACE]


def _box(ax, box, colour, label, style="-"):
    x1, y1, x2, y2 = box
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=2.2, ls=style))
    ax.text(x1, y1 - 8, label, color="white", fontsize=8, va="bottom",
            bbox=dict(facecolor=colour, edgecolor="none", pad=1.5))


def box_two_sizes() -> plt.Figure:
    """Left: the image the model saw (after smart_resize) with the box it writes. Middle: that box's numbers
    drawn on the file as they are (wrong: it shrinks towards the top-left corner). Right: mapped per axis."""
    big, face = large_photo()
    h2, w2 = smart_resize(big.height, big.width, max_pixels=BUDGET)  # (1064, 924)
    seen = big.resize((w2, h2), Image.BICUBIC)
    (answer,) = to_resized([{"bbox_2d": face}], (big.width, big.height), (w2, h2))  # what a perfect model writes
    (mapped,) = to_original([answer], (big.width, big.height), (w2, h2))

    fig, axes = plt.subplots(1, 3, figsize=(12, 5.2), dpi=80)
    panels = [(seen, answer["bbox_2d"], "tab:green", f"what the model saw: {w2} x {h2} px\nit answers {answer['bbox_2d']}"),
              (big, answer["bbox_2d"], "tab:red", f"the file, {big.width} x {big.height} px:\nthe same numbers drawn as they are"),
              (big, mapped["bbox_2d"], "tab:green", "the file: x * W / W2, y * H / H2\n(to_original)")]
    for ax, (image, box, colour, title) in zip(axes, panels):
        ax.imshow(np.asarray(image))
        _box(ax, [round(v) for v in box], colour, "face")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, big.width if image is big else w2)
        ax.set_ylim(big.height if image is big else h2, 0)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"One box, two pixel grids (--max-pixels {BUDGET}): Qwen2.5-VL's numbers are pixels of the resized image",
                 fontsize=11)
    fig.tight_layout()
    return fig


def three_conventions() -> plt.Figure:
    """The same answer [120, 100, 380, 330] read two ways on the sample photo: Qwen2.5-VL's absolute pixels
    of the resized image, and Qwen2-VL's / Qwen3-VL's relative 0-1000 grid."""
    photo = sample_photo()
    h2, w2 = smart_resize(photo.height, photo.width)  # (588, 504)
    numbers = [120, 100, 380, 330]
    (absolute,) = to_original([{"bbox_2d": numbers}], photo.size, (w2, h2))
    (relative,) = from_relative([{"bbox_2d": numbers}], photo.size)
    fig, ax = plt.subplots(figsize=(5.2, 5.6), dpi=80)
    ax.imshow(np.asarray(photo))
    _box(ax, absolute["bbox_2d"], "tab:green", "read as Qwen2.5-VL: pixels of the 504 x 588 image")
    _box(ax, relative["bbox_2d"], "tab:purple", "read as Qwen2-VL / Qwen3-VL: 0-1000 grid", style="--")
    ax.set_title(f"the answer {numbers}, read two ways\non the {photo.width} x {photo.height} px sample photo", fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    return fig


FIGURES = {"15_box_two_sizes": box_two_sizes, "15_three_conventions": three_conventions}
