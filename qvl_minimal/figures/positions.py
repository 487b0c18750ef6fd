"""Figures of the 3D position ids (chapter 07): the three id rows of a prompt, and a video's time ids.

Every id drawn here comes from the library's `get_rope_index` / `vision_positions`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..config import Qwen25VLConfig
from ..positions import get_rope_index, vision_positions

AXES = ("t", "h", "w")


def image_prompt(config: Qwen25VLConfig, before: int = 3, grid=(1, 6, 8), after: int = 3):
    """A small prompt: `before` text tokens, <|vision_start|>, an image of patch grid `grid`,
    <|vision_end|>, `after` text tokens. -> (input_ids (1, L), image_grid_thw (1, 3), labels)"""
    n = grid[0] * grid[1] * grid[2] // config.vision_config.spatial_merge_size**2
    ids = ([100 + i for i in range(before)] + [config.vision_start_token_id] + [config.image_token_id] * n
           + [config.vision_end_token_id] + [200 + i for i in range(after)])
    labels = ["txt"] * before + ["<vs>"] + ["img"] * n + ["<ve>"] + ["txt"] * after
    return torch.tensor([ids]), torch.tensor([grid]), labels


def position_rows():
    """Figure 7.1: the t, h and w ids of a prompt with a 3 x 4-token image, and the image's (h, w)."""
    config = Qwen25VLConfig.preset("tiny")
    ids, grid, labels = image_prompt(config)
    pos, _ = get_rope_index(config, ids, image_grid_thw=grid)  # (3, 1, L)
    pos = pos[:, 0]  # (3, L)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 2.8), dpi=90, gridspec_kw={"width_ratios": [4.2, 1]})
    ax.imshow(pos.numpy(), cmap="viridis", aspect="auto", alpha=0.75)
    for r, row in enumerate(pos.tolist()):
        for c, v in enumerate(row):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=8)
    ax.set_yticks(range(3), [f"{a} id" for a in AXES])
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    first = labels.index("img")
    last = len(labels) - 1 - labels[::-1].index("img")
    ax.axvspan(first - 0.5, last + 0.5, fill=False, edgecolor="red", linewidth=2)
    ax.set_title("position ids: text counts on all three axes; the image spreads over h and w", fontsize=9)

    gh, gw = int(grid[0, 1]) // 2, int(grid[0, 2]) // 2
    block = pos[:, first:last + 1].reshape(3, gh, gw)  # (3, rows, cols) of merged tokens
    ax2.imshow(block[1].numpy() + block[2].numpy(), cmap="viridis", alpha=0.6)
    for r in range(gh):
        for c in range(gw):
            ax2.text(c, r, f"{int(block[1, r, c])},{int(block[2, r, c])}", ha="center", va="center", fontsize=8)
    ax2.set_xticks([])
    ax2.set_yticks([])
    ax2.set_title(f"image tokens as (h, w)\nt = {int(block[0, 0, 0])} for all", fontsize=9)
    fig.tight_layout()
    return fig


def video_time_ids():
    """Figure 7.2: the ids along a prompt with a video of grid (8, 4, 4); time ids follow seconds."""
    config = Qwen25VLConfig.preset("tiny")
    tps = config.vision_config.tokens_per_second
    n = 8 * 4 * 4 // config.vision_config.spatial_merge_size**2  # merged video tokens
    ids = torch.tensor([[100, 101, 102, config.vision_start_token_id] + [config.video_token_id] * n
                        + [config.vision_end_token_id, 200, 201, 202]])
    pos, delta = get_rope_index(config, ids, video_grid_thw=torch.tensor([[8, 4, 4]]),
                                second_per_grid_ts=torch.tensor([1.0]))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=90)
    for axis, name, marker in zip(range(3), AXES, "o^s"):
        ax.plot(pos[axis, 0].numpy(), marker, markersize=3, label=f"{name} id", alpha=0.8)
    ax.axvspan(3.5, 3.5 + n, color="orange", alpha=0.15, label="video tokens")
    ax.set_xlabel("token index in the prompt")
    ax.set_ylabel("position id")
    ax.set_title(f"grid (8, 4, 4), 1 s per time step: {n} tokens, ids up to {int(pos.max())} "
                 f"(delta {int(delta)})", fontsize=9)
    ax.legend(fontsize=8)

    for (seconds, fps), size in zip(((0.5, 4), (1.0, 2), (2.0, 1)), (3, 6, 9)):
        steps = int(8 / seconds)  # an 8-second clip: 2 frames per time step
        time = vision_positions((steps, 2, 2), 0, 2, seconds, tps)[0]  # (steps,): 1 token per step
        ax2.plot(torch.arange(steps) * seconds, time.numpy(), "o-", markersize=size, markerfacecolor="none",
                 label=f"fps {fps}: {steps} steps of {seconds} s")
    ax2.set_xlabel("seconds into the clip")
    ax2.set_ylabel("time id - start")
    ax2.set_title(f"an 8 s clip at three frame rates: time id = floor(seconds x {tps})", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


FIGURES = {
    "07_position_rows": position_rows,
    "07_video_time_ids": video_time_ids,
}
