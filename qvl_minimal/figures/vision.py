"""Figures of the vision part (chapters 02-04): patches, 2D rotary angles, windows.

Every quantity drawn here is computed by the library (preprocess_image, patch_positions,
vision_rotary_angles, window_index), so a picture cannot disagree with the code it illustrates.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from matplotlib.patches import Rectangle

from ..config import VisionConfig
from ..vision import patch_positions, vision_rotary_angles, window_index

PATCH, MERGE = 14, 2  # patch side in pixels, merge-unit side in patches


def _photo_patches():
    """The sample photo as (pixel_values (N, 1176), grid_thw (1, 3)), via the library's preprocessing."""
    from ..preprocess import preprocess_image
    from ..samples import sample_photo

    return preprocess_image(sample_photo())


def rebuild_frame(pixel_values: torch.Tensor, grid_thw) -> np.ndarray:
    """Undo the row layout of pixel_values: frame 0 of image 0 as an (H, W, 3) array in [0, 1].

    Rows are (time, merge-unit row, merge-unit col, 2 x 2 patches); each row is (c, t, 14, 14).
    The CLIP normalisation is undone, so the colours are the resized photo's.
    """
    from ..preprocess import CLIP_MEAN, CLIP_STD

    t, h, w = (int(v) for v in grid_thw[0])
    frames = rearrange(pixel_values[: t * h * w], "(gt hb wb a b) (c tp ph pw) -> (gt tp) (hb a ph) (wb b pw) c",
                       gt=t, hb=h // MERGE, wb=w // MERGE, a=MERGE, b=MERGE, c=3, tp=2, ph=PATCH, pw=PATCH)
    img = frames[0] * torch.tensor(CLIP_STD) + torch.tensor(CLIP_MEAN)  # (H, W, 3) back on [0, 1]
    return img.clamp(0, 1).numpy()


def _grid_lines(ax, h_px: int, w_px: int, step: int, **style):
    for x in range(0, w_px + 1, step):
        ax.axvline(x - 0.5, **style)
    for y in range(0, h_px + 1, step):
        ax.axhline(y - 0.5, **style)


def patch_rows():
    """Figure 2.1: the photo rebuilt from its patch rows; the rows' order; one row unfolded."""
    pixel_values, grid = _photo_patches()
    img = rebuild_frame(pixel_values, grid)
    pos = patch_positions(grid)  # (N, 2) (row, col) of each pixel_values row
    row_of = {(int(r), int(c)): i for i, (r, c) in enumerate(pos)}
    r0, c0, nr, nc = 12, 14, 4, 6  # zoom: 4 x 6 patches = 2 x 3 merge units around the face
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), dpi=90, gridspec_kw={"width_ratios": [1, 1.3, 0.8]})

    ax = axes[0]
    ax.imshow(img)
    _grid_lines(ax, img.shape[0], img.shape[1], PATCH * MERGE, color="white", lw=0.3, alpha=0.6)
    ax.add_patch(Rectangle((c0 * PATCH - 0.5, r0 * PATCH - 0.5), nc * PATCH, nr * PATCH, fill=False, ec="red", lw=2))
    ax.set_title(f"rebuilt from pixel_values {tuple(pixel_values.shape)}\n"
                 f"grid {grid[0].tolist()}, lines every merge unit (28 px)", fontsize=9)
    ax.axis("off")

    ax = axes[1]
    ax.imshow(img[r0 * PATCH:(r0 + nr) * PATCH, c0 * PATCH:(c0 + nc) * PATCH])
    _grid_lines(ax, nr * PATCH, nc * PATCH, PATCH, color="white", lw=0.5)
    _grid_lines(ax, nr * PATCH, nc * PATCH, PATCH * MERGE, color="yellow", lw=2)
    for r in range(nr):
        for c in range(nc):
            ax.text(c * PATCH + PATCH / 2, r * PATCH + PATCH / 2, row_of[(r0 + r, c0 + c)], ha="center",
                    va="center", fontsize=8, color="black", bbox={"fc": "white", "alpha": 0.7, "pad": 1, "lw": 0})
    ax.set_title("zoom (red box): each number is the patch's row\nin pixel_values (merge units in yellow)",
                 fontsize=9)
    ax.axis("off")

    first = row_of[(r0, c0)]
    tiles = rearrange(pixel_values[first], "(c t h w) -> (c h) (t w)", c=3, t=2, h=PATCH, w=PATCH)
    ax = axes[2]
    ax.imshow(tiles.numpy(), cmap="gray")
    ax.set_xticks([PATCH / 2 - 0.5, 3 * PATCH / 2 - 0.5], ["frame 0", "frame 1"])
    ax.set_yticks([PATCH * k + PATCH / 2 - 0.5 for k in range(3)], ["R", "G", "B"])
    ax.set_title(f"row {first} unfolded: 1176 = 3 x 2 x 14 x 14\n(a still image: frame 1 = frame 0)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def rope_angles():
    """Figure 3.1: cos of the 2D rotary angle over the photo's 42 x 36 patch grid, for a few frequencies."""
    grid, head_dim = [[1, 42, 36]], 80
    angles = vision_rotary_angles(grid, head_dim)  # (1512, 40): 20 row angles, then 20 column angles
    pos = patch_positions(grid)  # (1512, 2)
    nfreq = head_dim // 4
    picks = [0, 2, 4, 6]
    fig, axes = plt.subplots(2, len(picks), figsize=(10, 5.6), dpi=90)
    for half, name in enumerate(["row", "column"]):
        for j, i in enumerate(picks):
            channel = half * nfreq + i  # pair (channel, channel + 40) of the 80-wide head
            canvas = torch.zeros(42, 36)
            canvas[pos[:, 0], pos[:, 1]] = angles[:, channel].cos()
            ax = axes[half, j]
            ax.imshow(canvas.numpy(), cmap="RdBu", vmin=-1, vmax=1)
            period = 2 * np.pi * 10000 ** (2 * i / (head_dim // 2))
            ax.set_title(f"dims {channel} & {channel + head_dim // 2}: {name}\nfreq {i}, period {period:.1f} patches",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("cos(angle) per patch: the top row varies down the image only, the bottom row across it",
                 fontsize=10)
    fig.tight_layout()
    return fig


def merge_order():
    """Figure 3.2: the order of patches in pixel_values (and so of the angles) on a 6 x 8 patch grid."""
    h, w = 6, 8
    pos = patch_positions([[1, h, w]])  # (48, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4.3), dpi=90)
    checker = (pos[:, 0] // MERGE + pos[:, 1] // MERGE) % 2  # alternate shades per merge unit
    canvas = torch.zeros(h, w)
    canvas[pos[:, 0], pos[:, 1]] = checker.float() * 0.3
    ax.imshow(canvas.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.plot(pos[:, 1].numpy(), pos[:, 0].numpy(), color="gray", lw=1, alpha=0.8)
    for i, (r, c) in enumerate(pos.tolist()):
        ax.text(c, r, str(i), ha="center", va="center", fontsize=10)
    for k in range(0, w + 1, MERGE):
        ax.axvline(k - 0.5, color="black", lw=2)
    for k in range(0, h + 1, MERGE):
        ax.axhline(k - 0.5, color="black", lw=2)
    ax.set_xticks(range(w))
    ax.set_yticks(range(h))
    ax.set_xlabel("column (patches)")
    ax.set_ylabel("row (patches)")
    ax.set_title("storage order of patches: 2 x 2 merge units, row-major", fontsize=10)
    fig.tight_layout()
    return fig


def windows_on_photo():
    """Figure 4.1: the 112 px windows (4 x 4 merge units) of the photo; edge windows are smaller."""
    config = VisionConfig()
    pixel_values, grid = _photo_patches()
    img = rebuild_frame(pixel_values, grid)
    t, h, w = grid[0].tolist()
    gw = w // MERGE
    index, cu = window_index(grid, config)  # (N/4,), (windows + 1,)
    units = cu.diff() // MERGE**2  # merge units per window
    window_of_position = torch.repeat_interleave(torch.arange(len(units)), units)  # (N/4,)
    window_of_unit = torch.empty_like(index)
    window_of_unit[index] = window_of_position  # the window of every merge unit (raster numbering)

    fig, ax = plt.subplots(figsize=(5.2, 5.8), dpi=75)
    ax.imshow(img)
    colours = plt.get_cmap("tab10")
    unit_px = PATCH * MERGE
    for u, win in enumerate(window_of_unit.tolist()):
        r, c = divmod(u, gw)
        ax.add_patch(Rectangle((c * unit_px - 0.5, r * unit_px - 0.5), unit_px, unit_px, lw=0,
                               fc=colours((win + win // 5) % 10), alpha=0.25))
    for win in range(len(units)):
        members = torch.nonzero(window_of_unit == win).flatten()
        rows, cols = members // gw, members % gw
        y0, x0 = rows.min().item() * unit_px, cols.min().item() * unit_px
        hh, ww = (rows.max().item() + 1) * unit_px - y0, (cols.max().item() + 1) * unit_px - x0
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), ww, hh, fill=False, ec="white", lw=1.5))
        ax.text(x0 + ww / 2, y0 + hh / 2, f"{win}\n{units[win].item() * MERGE**2}", ha="center", va="center",
                fontsize=7, color="white", fontweight="bold", bbox={"fc": "black", "alpha": 0.35, "pad": 1, "lw": 0})
    ax.set_title(f"{len(units)} windows of 112 x 112 px over grid {grid[0].tolist()}\n"
                 "number: window (order of attention), patches inside", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def window_mask(grid=((1, 12, 20),)):
    """Figure 4.2: who may attend to whom in a window block, in window order and in storage order."""
    config = VisionConfig()
    index, cu = window_index(list(grid), config)
    n = int(cu[-1])
    segment = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())  # (N,) window of each position
    mask = segment[:, None] == segment[None, :]  # (N, N) window order: block diagonal
    patch_of = rearrange(index[:, None] * MERGE**2 + torch.arange(MERGE**2), "u k -> (u k)")  # (N,)
    storage = torch.zeros(n, n, dtype=torch.bool)
    storage[patch_of[:, None], patch_of[None, :]] = mask  # same mask, rows and columns in storage order

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), dpi=90)
    for ax, m, title in [(axes[0], mask, "window order (after the permutation)"),
                         (axes[1], storage, "storage order (merge units row-major)")]:
        ax.imshow(m.numpy(), cmap="Greys", interpolation="nearest")
        ax.set_title(f"{title}\n{int(m.sum())} of {n * n} query-key pairs allowed", fontsize=9)
        ax.set_xlabel("key patch")
        ax.set_ylabel("query patch")
    fig.suptitle(f"window attention mask, grid {list(grid[0])}: {len(cu) - 1} windows, "
                 f"cu_window_seqlens {cu.tolist()}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


FIGURES = {
    "02_patch_rows": patch_rows,
    "03_rope_angles": rope_angles,
    "03_merge_order": merge_order,
    "04_windows_on_photo": windows_on_photo,
    "04_window_mask": window_mask,
}
