"""Chapter 01's figures: how a photo is cut into 14 px patches and 28 px merge units."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from ..preprocess import FACTOR, PATCH, patchify, smart_resize, to_rgb
from ..samples import sample_photo


def patch_grid() -> plt.Figure:
    """Left: the photo after smart_resize with its patch grid (thin) and merge units (thick).

    Right: the top-left 112 x 112 px (4 x 4 merge units) with, in each patch, its row number in
    pixel_values, found by running the library's patchify on an image of patch numbers.
    """
    photo = to_rgb(sample_photo())
    height, width = smart_resize(photo.height, photo.width)  # (588, 504)
    resized = np.asarray(photo.resize((width, height), resample=Image.BICUBIC))
    gh, gw = height // PATCH, width // PATCH

    # an "image" whose every pixel holds the raster number of its patch; patchify reorders the rows
    raster = torch.arange(gh * gw, dtype=torch.float32).reshape(gh, gw)
    frame = raster.repeat_interleave(PATCH, 0).repeat_interleave(PATCH, 1).expand(1, 3, -1, -1)
    rows, _ = patchify(frame)  # (gh*gw, 1176): every value in row i is the raster number of patch i
    row_of_patch = torch.empty(gh * gw, dtype=torch.long)
    row_of_patch[rows[:, 0].long()] = torch.arange(gh * gw)
    row_of_patch = row_of_patch.reshape(gh, gw)

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.8, 4.9), dpi=80, gridspec_kw={"width_ratios": [1, 1]})
    left.imshow(resized)
    for k in range(0, max(height, width) + 1, PATCH):
        thick = k % FACTOR == 0
        style = dict(color="white" if thick else "yellow", lw=0.9 if thick else 0.4, alpha=0.9 if thick else 0.8)
        if k <= width:
            left.axvline(k - 0.5, **style)
        if k <= height:
            left.axhline(k - 0.5, **style)
    left.add_patch(plt.Rectangle((-0.5, -0.5), 4 * FACTOR, 4 * FACTOR, fill=False, ec="red", lw=2))
    left.set_title(f"{photo.height} x {photo.width} -> {height} x {width} px: grid {gh} x {gw} patches,\n"
                   f"{gh // 2} x {gw // 2} = {gh * gw // 4} merge units (tokens)", fontsize=10)
    left.set_axis_off()

    side = 4 * FACTOR // PATCH  # 8 patches = 4 merge units = one 112 px window
    right.imshow(resized[: side * PATCH, : side * PATCH])
    for k in range(side + 1):
        for draw in (right.axvline, right.axhline):
            draw(k * PATCH - 0.5, color="white", lw=2.0 if k % 2 == 0 else 0.5)
    for r in range(side):
        for c in range(side):
            right.text(c * PATCH + PATCH / 2 - 0.5, r * PATCH + PATCH / 2 - 0.5, str(row_of_patch[r, c].item()),
                       ha="center", va="center", fontsize=8, color="black",
                       bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    right.set_title("top-left 112 x 112 px (red box): the row of\n"
                    f"each patch in pixel_values ({gw // 2 * 4} rows per merge-unit row)", fontsize=10)
    right.set_axis_off()
    fig.tight_layout()
    return fig


FIGURES = {"01_patch_grid": patch_grid}
