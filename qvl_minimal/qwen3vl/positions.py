"""Qwen3-VL's position ids: the rule of `qvl_minimal.positions`, with every video frame on its own.

Qwen3-VL's processor writes a video of T time steps (2 frames each) as T blocks of text:

    <0.5 seconds><|vision_start|><|video_pad|> x (h/2 * w/2)<|vision_end|><1.5 seconds><|vision_start|>...

so time is text the model reads, and the position ids no longer carry it. The reference
(`Qwen3VLModel.get_rope_index`) splits each video grid (T, h, w) into T grids (1, h, w) and
numbers every block like an image: t = start, h = start + row, w = start + col, and the next
token starts at max + 1. Qwen2.5-VL instead gave one block whose time id grew with the seconds
(chapter 10). Text-only prompts and left padding are numbered as before.
"""

from __future__ import annotations

import torch

from ..positions import get_rope_index as qwen25_rope_index
from ..vision import check_grid


def frame_grids(video_grid_thw, merge: int = 2) -> torch.Tensor | None:
    """(num_videos, 3) grids -> (sum of T, 3): one (1, h, w) grid per time step, in order."""
    if video_grid_thw is None or len(video_grid_thw) == 0:
        return None
    grid = check_grid(video_grid_thw, merge, "video_grid_thw")  # (n, 3)
    frames = torch.repeat_interleave(grid, grid[:, 0], dim=0)  # (sum T, 3)
    frames[:, 0] = 1
    return frames


def get_rope_index(config, input_ids: torch.Tensor, image_grid_thw=None, video_grid_thw=None,
                   attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids (3, B, L) and decoding deltas (B, 1) of a batch of Qwen3-VL prompts.

    Each video frame is a block of its own with time id 0 (config.vision_config.tokens_per_second
    is 0: the seconds are in the text, not in the ids).
    """
    frames = frame_grids(video_grid_thw, config.vision_config.spatial_merge_size)
    seconds = None if frames is None else torch.zeros(len(frames))  # time ids do not advance
    return qwen25_rope_index(config, input_ids, image_grid_thw, frames, seconds, attention_mask)
