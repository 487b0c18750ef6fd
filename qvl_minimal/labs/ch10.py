"""Chapter 10's exercises: frame sampling and the position ids of a video block.

    10.1  sample_frames_mine(total_frames, video_fps, fps=2.0) -> (kept frame indices, sample_fps)
    10.2  quiz: (frames kept, last time id: the library's, transformers 4.57.6's) of a 30-minute clip
    10.3  swap_frames_mine(pixel_values (N, 1176)) -> the same rows with the two frames of each step swapped

10.1 is compared with the library's `sample_frame_indices` on clips that hit every clamp (the 4-frame
floor, the 768 cap, an odd count, a clip shorter than its 2 fps target); 10.2 with
`sample_frame_indices` and `vision_positions` (the library's rule) and 4.57.6's rule (seconds per
step cast to int before multiplying, chapter 07 section 2.5).
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..positions import vision_positions
from ..preprocess import sample_frame_indices
from .core import assert_answer, assert_tensor_matches, exercise

TPS = Qwen25VLConfig.preset("tiny").vision_config.tokens_per_second  # time ids per second: 2

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


LECTURE = (30 * 60, 30)  # 10.2: a 30-minute clip filmed at 30 fps


def _lecture_time_ids() -> tuple[int, int, int]:
    """(frames kept, last time step's time id with the library's rule, with 4.57.6's), relative to the block."""
    seconds, video_fps = LECTURE
    kept, rate = sample_frame_indices(seconds * video_fps, video_fps)
    steps, per_step = len(kept) // 2, 2 / rate  # 2 frames per time step
    ours = vision_positions((steps, 2, 2), 0, 2, per_step, TPS)[0, -1]
    truncated = (steps - 1) * int(per_step) * TPS  # transformers 4.57.6: int(second_per_grid_t) first
    return len(kept), int(ours), int(truncated)


@exercise("10.2", "the time ids of a 30-minute clip", expected=_lecture_time_ids)
def _(answer) -> str:
    kept, ours, truncated = _lecture_time_ids()
    if not (isinstance(answer, (tuple, list)) and len(answer) == 3):
        raise AssertionError(f"give (frames kept, last time id: library, last time id: 4.57.6), got {answer!r}")
    assert_answer(answer[0], kept, "frames kept", hint="2 fps, then the clamps of section 2.2")
    assert_answer(answer[1], ours, "last time id with the library's rule",
                  hint="seconds per step = 2 / sample_fps; the time id is floor(k x seconds x 2)")
    assert_answer(answer[2], truncated, "last time id with transformers 4.57.6's rule",
                  hint="4.57.6 casts the seconds per step to an int before multiplying")
    return "all three right"


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
