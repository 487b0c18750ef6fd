"""Chapter 16's exercises: Qwen3-VL's position table, its interleaved M-RoPE, and its video positions.

    16.1  my_interpolate(table (S*S, C), h, w) -> (h, w, C): the learned position table resized to an
          h x w patch grid, bilinear with aligned corners
    16.2  my_axis(head_dim, mrope_section) -> (head_dim / 2,) long: which position id (0 t, 1 h, 2 w)
          turns each rotary frequency in the interleaved layout
    16.3  quiz: (largest position id, number of tokens) of a prompt with a video in Qwen3-VL's layout

Checked against the library (`qvl_minimal.qwen3vl`): tables of several sides, grids smaller and larger
than the table, a 1-patch-wide grid; the released (24, 20, 20) split and unequal splits.
"""

from __future__ import annotations

import torch

from ..qwen3vl.config import Qwen3TextConfig, Qwen3VisionConfig, Qwen3VLConfig
from ..qwen3vl.positions import get_rope_index
from ..qwen3vl.text import interleaved_axis
from ..qwen3vl.vision import interpolate_positions
from .core import assert_answer, assert_tensor_matches, exercise

GRIDS = [  # (table side S, h, w, what)
    (48, 18, 24, "the released 48 x 48 table, a 288 x 384 px image"),
    (48, 124, 94, "a large image: the table is stretched"),
    (8, 4, 6, "a small table, a smaller grid"),
    (8, 2, 30, "a wide strip"),
    (4, 4, 4, "a grid the size of the table: the table itself"),
]


@exercise("16.1", "bilinear interpolation of the learned position table")
def _(my_interpolate) -> str:
    gen = torch.Generator().manual_seed(16)
    for side, h, w, what in GRIDS:
        table = torch.randn(side * side, 8, generator=gen)
        assert_tensor_matches(my_interpolate(table, h, w), interpolate_positions(table, h, w),
                              f"table {side} x {side} -> grid {h} x {w} [{what}]", atol=1e-5, rtol=1e-5)
    return f"{len(GRIDS)} tables and grids, within 1e-5"


SECTIONS = [(128, (24, 20, 20), "the released split"), (16, (2, 3, 3), "a tiny head"),
            (24, (4, 4, 4), "equal thirds"), (64, (12, 12, 8), "a short width section")]


@exercise("16.2", "the interleaved M-RoPE layout")
def _(my_axis) -> str:
    for head_dim, sections, what in SECTIONS:
        config = Qwen3TextConfig(head_dim=head_dim, mrope_section=sections)
        mine = torch.as_tensor(my_axis(head_dim, sections))
        assert_tensor_matches(mine.long(), interleaved_axis(config), f"head_dim {head_dim}, {sections} [{what}]")
    return f"{len(SECTIONS)} layouts, exact"


QUIZ_CONFIG = Qwen3VLConfig(Qwen3VisionConfig(), Qwen3TextConfig())
QUIZ_GRID, QUIZ_TIMESTAMP = (4, 8, 8), 3  # 4 time steps of 4 x 4 tokens; "<0.5 seconds>" as 3 tokens


def quiz_prompt() -> torch.Tensor:
    """5 text tokens, the video (per step: timestamp, <|vision_start|>, pads, <|vision_end|>), 2 text tokens."""
    c, (t, h, w) = QUIZ_CONFIG, QUIZ_GRID
    step = ([7] * QUIZ_TIMESTAMP + [c.vision_start_token_id]
            + [c.video_token_id] * (h * w // 4) + [c.vision_end_token_id])
    return torch.tensor([[7] * 5 + step * t + [7] * 2])


def _quiz_expected() -> tuple[int, int]:
    ids = quiz_prompt()
    position_ids, _ = get_rope_index(QUIZ_CONFIG, ids, video_grid_thw=torch.tensor([QUIZ_GRID]))
    return int(position_ids.max()), ids.shape[1]


@exercise("16.3", "the largest position id of a video in Qwen3-VL's layout", expected=_quiz_expected)
def _(answer) -> str:
    assert_answer(answer, _quiz_expected(), "(largest id, number of tokens)",
                  hint="every time step is text (timestamp, start), a block spanning 4 ids, then an end token")
    return "right"
