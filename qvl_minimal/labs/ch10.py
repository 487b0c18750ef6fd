"""Chapter 10's exercises: frame sampling and the position ids of a video block.

    10.1  sample_frames_mine(total_frames, video_fps, fps=2.0) -> (kept frame indices, sample_fps)
    10.2  video_position_ids_mine(start, grid_thw, second_per_grid_t) -> (3, t * h/2 * w/2) long
    10.3  swap_frames_mine(pixel_values (N, 1176)) -> the same rows with the two frames of each step swapped

10.1 is compared with the library's `sample_frame_indices` on clips that hit every clamp (the 4-frame
floor, the 768 cap, an odd count, a clip shorter than its 2 fps target); 10.2 with the video block of
`get_rope_index` on chat-like prompts, at whole and fractional seconds per time step.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..positions import get_rope_index
from ..preprocess import sample_frame_indices
from .core import assert_answer, assert_tensor_matches, exercise

_CLIPS = [  # (seconds, video_fps, what)
    (4, 24, "4 s at 24 fps"), (1, 30, "1 s: raised to the 4-frame floor"), (3.5, 24, "7 frames wanted: rounded down to 6"),
    (100, 30, "100 s"), (600, 24, "10 min: capped at 768"), (0.25, 24, "6 frames in all: fewer than the floor"),
    (2.5, 25, "an odd target (5 frames)"), (7.3, 29.97, "NTSC rate"), (0.1, 30, "3 frames: an odd clip"),
]


@exercise("10.1", "frame sampling")
def _(sample_frames_mine) -> str:
    for seconds, video_fps, what in _CLIPS:
        total = round(seconds * video_fps)
        want = sample_frame_indices(total, video_fps)
        got = sample_frames_mine(total, video_fps)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise AssertionError("return (kept frame indices, sample_fps)")
        indices, rate = list(got[0]), got[1]
        assert_answer(len(indices), len(want[0]), f"number of frames kept of {total} at {video_fps} fps [{what}]",
                      hint="duration x fps, clamped to [4, min(768, total)] (bounds even), rounded DOWN to even")
        assert_answer(indices, want[0], f"which frames are kept of {total} at {video_fps} fps [{what}]",
                      hint="spread evenly from the first frame to the last, rounded to the nearest frame")
        assert_answer(float(rate), want[1], f"sample_fps of {total} frames at {video_fps} fps [{what}]", tol=1e-9)
    return f"{len(_CLIPS)} clips incl. the 4-frame floor, the 768 cap, odd counts; equal"


def _block_ids(config, grid_thw, second_per_grid_t, prefix: int):
    t, h, w = grid_thw
    n = t * h * w // 4
    ids = torch.tensor([[7] * prefix + [config.vision_start_token_id] + [config.video_token_id] * n
                        + [config.vision_end_token_id, 8, 9]])  # (1, L)
    pos, _ = get_rope_index(config, ids, video_grid_thw=torch.tensor([list(grid_thw)]),
                            second_per_grid_ts=torch.tensor([second_per_grid_t]))
    return pos[:, 0, prefix + 1: prefix + 1 + n]  # (3, n): the video block


@exercise("10.2", "position ids of a video block")
def _(video_position_ids_mine) -> str:
    config = Qwen25VLConfig.preset("tiny")
    cases = [((4, 20, 28), 1.0, 15, "the chapter's clip at 2 fps"), ((2, 20, 28), 2.0, 15, "the same clip at 1 fps"),
             ((2, 2, 2), 0.5, 3, "a 1 s clip: 0.5 s per step"), ((3, 4, 6), 1.28, 0, "1.28 s per step"),
             ((5, 6, 4), 1.5625, 9, "a tall grid, 1.5625 s per step"), ((1, 2, 8), 1.0, 2, "one time step")]
    for grid, seconds, prefix, what in cases:
        start = prefix + 1  # the first video token's position: after `prefix` text tokens and <|vision_start|>
        want = _block_ids(config, grid, seconds, prefix)
        got = video_position_ids_mine(start, grid, seconds)
        assert_tensor_matches(torch.as_tensor(got), want, f"ids of a video block, grid {grid}, "
                              f"{seconds} s per step, starting at {start} [{what}] (rows: t, h, w)")
    return f"{len(cases)} grids at whole and fractional seconds per step, equal to get_rope_index"


@exercise("10.3", "swap the frames of every time step")
def _(swap_frames_mine) -> str:
    from ..preprocess import patchify

    shapes = [(2, 28, 28), (8, 56, 84), (4, 28, 112), (6, 84, 56)]  # (frames, height, width)
    for t, h, w in shapes:
        frames = torch.randn(t, 3, h, w)
        rows, _ = patchify(frames)  # (N, 1176): each row (3 colours, 2 frames, 14, 14)
        swapped = frames.reshape(t // 2, 2, 3, h, w).flip(1).reshape(t, 3, h, w)  # frame 2k+1 before 2k
        assert_tensor_matches(swap_frames_mine(rows.clone()), patchify(swapped)[0],
                              f"rows of {t} frames of {h} x {w} with the two frames of each step swapped")
    return f"{len(shapes)} clips, equal to patchify of the swapped frames"
