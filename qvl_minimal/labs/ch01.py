"""Chapter 01's exercises: smart_resize, the 1176-wide patch rows and their inverse, and a quiz.

    01.1  smart_resize(height, width, factor=28, min_pixels=..., max_pixels=...) -> (h, w)
    01.2  patch_rows(frames (T, 3, H, W)) -> pixel_values (T'/2 * H/14 * W/14, 1176)
    01.3  quiz: <|image_pad|> tokens of three images that smart_resize changes in unexpected ways
    01.4  quiz: the largest square side that the pixel budget does not shrink
    01.5  video_tokens(total_frames, video_fps, height, width) -> <|video_pad|> tokens of a clip
    01.6  changed_by_white(rgba (H, W, 4) uint8) -> (H, W) bool
    01.7  unpatch(pixel_values, grid_thw) -> frames (2t, 3, 14h, 14w)

Every answer is compared with the library (`qvl_minimal.preprocess`) on seeded inputs, including
the edge cases the chapter warns about: halves rounded to even, both pixel bounds, the 200:1 limit,
videos with several time steps and an odd frame count.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..preprocess import (FACTOR, MAX_PIXELS, MAX_RATIO, VIDEO_MIN_PIXELS, frame_pixel_budget, paste_on_white,
                          patchify, sample_frame_indices, smart_resize, to_rgb)
from .core import assert_answer, assert_tensor_matches, exercise

_RESIZE_CASES = [  # (height, width, keyword arguments, what the case tests)
    (600, 512, {}, "the sample photo"),
    (70, 700, {}, "a side at an exact half: 70 / 28 = 2.5 (halves go to even)"),
    (42, 42, {}, "42 / 28 = 1.5 (halves go to even)"),
    (98, 300, {}, "98 / 28 = 3.5 (halves go to even)"),
    (14, 1000, {}, "a side that rounds to 0, then the min_pixels branch"),
    (20, 20, {}, "under min_pixels"),
    (3, 50, {}, "a 3 px tall image"),
    (8000, 6000, {}, "48 MP, over max_pixels"),
    (3621, 3621, {}, "a square just over the budget"),
    (4000, 21, {"max_pixels": 100_000}, "max_pixels=100,000 with a 21 px side (clamped up to 28)"),
    (60, 80, {"min_pixels": VIDEO_MIN_PIXELS, "max_pixels": frame_pixel_budget(6)}, "a video frame's bounds"),
    (300, 500, {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}, "the processor class defaults"),
    (28, 5600, {}, "exactly 200:1 (allowed)"),
]


@exercise("01.1", "smart_resize")
def _(smart_resize_mine) -> str:
    cases = list(_RESIZE_CASES)
    for h, w in torch.randint(1, 5000, (40, 2)).tolist():
        if max(h, w) / min(h, w) <= MAX_RATIO:
            cases.append((h, w, {}, "random"))
    for h, w, kwargs, what in cases:
        args = f"{h}, {w}" + "".join(f", {k}={v:_}" for k, v in kwargs.items())
        mine = smart_resize_mine(h, w, **kwargs)
        assert_answer(tuple(mine) if isinstance(mine, (tuple, list)) else mine, smart_resize(h, w, **kwargs),
                      f"smart_resize({args}) [{what}]",
                      hint="round to the nearest multiple of 28 with Python's round; shrink by beta and floor "
                           "(never below 28) over max_pixels; grow by beta and ceil under min_pixels")
    for h, w in [(28, 5601), (5601, 28), (1, 201)]:
        try:
            smart_resize_mine(h, w)
        except ValueError:
            continue
        raise AssertionError(f"smart_resize({h}, {w}) must raise ValueError: the aspect ratio is over {MAX_RATIO}:1")
    return f"{len(cases)} sizes incl. halves, both pixel bounds, 200:1; 3 refusals over 200:1"


def _frames(t: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(t, 3, h * 14, w * 14)  # (t, 3, 14h, 14w): h, w in patches


_FRAME_SHAPES = [(2, 4, 4, "2 frames, 4 x 4 patches"), (1, 2, 2, "1 frame (a still image, repeated to 2)"),
                 (2, 6, 10, "3 x 5 merge units (odd in merge units)"), (4, 4, 6, "4 frames = 2 time steps"),
                 (3, 8, 2, "3 frames (odd: the last one repeated)"), (1, 42, 36, "the photo's grid")]


@exercise("01.2", "the 1176-wide patch rows")
def _(patch_rows) -> str:
    for t, h, w, what in _FRAME_SHAPES:
        frames = _frames(t, h, w)
        mine = patch_rows(frames.clone())
        assert_tensor_matches(mine, patchify(frames)[0], f"frames {tuple(frames.shape)} [{what}]")
    return f"{len(_FRAME_SHAPES)} shapes incl. a still image, odd merge-unit counts and 3 frames, exact"


def _tokens(height: int, width: int) -> int:
    h, w = smart_resize(height, width)
    return (h // FACTOR) * (w // FACTOR)


_QUIZ_SIZES = [(14, 2800), (350, 994), (6000, 4000)]  # (height, width): min branch, two halves, max branch


def _quiz_tokens() -> dict[tuple[int, int], int]:
    return {size: _tokens(*size) for size in _QUIZ_SIZES}


@exercise("01.3", "tokens of three images, predicted", expected=_quiz_tokens)
def _(answer) -> str:
    if not isinstance(answer, dict) or set(answer) != set(_QUIZ_SIZES):
        raise AssertionError(f"answer must be a dict with the keys {_QUIZ_SIZES} (height, width)")
    hints = {(14, 2800): "14 / 28 = 0.5 rounds to 0: which branch runs then, and what does its ceil do?",
             (350, 994): "350 / 28 = 12.5 and 994 / 28 = 35.5: halves go to the even neighbour",
             (6000, 4000): "24 MP is over max_pixels: beta shrinks both sides, then floor each one"}
    for size in _QUIZ_SIZES:
        assert_answer(answer[size], _tokens(*size), f"{size[0]} x {size[1]} px", hint=hints[size])
    return "3 images, exact"


def _largest_plain_square() -> int:
    return max(s for s in range(3000, 4000) if smart_resize(s, s) == (round(s / FACTOR) * FACTOR,) * 2)


@exercise("01.4", "the largest square the budget leaves alone", expected=_largest_plain_square)
def _(answer) -> str:
    side = _largest_plain_square()
    assert_answer(answer, side, "side (px)", hint=f"which sides round to a square of at most {MAX_PIXELS:,} px?")
    return "exact"


def _video_tokens(total_frames: int, video_fps: float, height: int, width: int) -> int:
    kept, _ = sample_frame_indices(total_frames, video_fps)
    h, w = smart_resize(height, width, min_pixels=VIDEO_MIN_PIXELS, max_pixels=frame_pixel_budget(len(kept)))
    return len(kept) // 2 * (h // FACTOR) * (w // FACTOR)


_CLIPS = [  # (total frames, video_fps, height, width, what the case tests)
    (90, 30.0, 60, 80, "the chapter's 3 s clip"),
    (30, 30.0, 1080, 1920, "1 s of 1080p: 4 frames at least"),
    (135, 30.0, 720, 1280, "4.5 s: 9 frames rounded down to even"),
    (7, 24.0, 480, 640, "0.3 s: raised to the 4-frame minimum"),
    (6000, 30.0, 1080, 1920, "200 s: 400 frames share the total budget"),
    (36000, 30.0, 720, 1280, "20 min: the 768-frame cap"),
    (48, 24.0, 20, 30, "a tiny clip: the per-frame minimum"),
    (1001, 29.97, 2160, 3840, "4K at 29.97 fps"),
]


@exercise("01.5", "<|video_pad|> tokens of a clip")
def _(video_tokens) -> str:
    for total, fps, h, w, what in _CLIPS:
        assert_answer(video_tokens(total, fps, h, w), _video_tokens(total, fps, h, w),
                      f"{total} frames at {fps} fps, {h} x {w} px [{what}]",
                      hint="frames kept -> time steps (2 frames each); one size for all frames from "
                           "smart_resize with the video bounds, whose maximum depends on the frames kept")
    return f"{len(_CLIPS)} clips incl. the 4-frame minimum, the shared budget and the 768-frame cap, exact"


@exercise("01.6", "which pixels paste_on_white changes")
def _(changed_by_white) -> str:
    shapes = [(4, 4), (7, 3), (30, 20)]
    for h, w in shapes:
        rgba = torch.randint(0, 256, (h, w, 4), dtype=torch.uint8).numpy()
        rgba[..., 3] = np.where(torch.rand(h, w).numpy() < 0.5, 0, 255)  # alpha 0 or 255
        rgba[: h // 2, : w // 2, :3] = 255  # a white corner, opaque and transparent pixels alike
        image = Image.fromarray(rgba)
        truth = (np.asarray(paste_on_white(image)) != np.asarray(to_rgb(image))).any(axis=-1)
        mine = changed_by_white(rgba.copy())
        assert_tensor_matches(torch.as_tensor(np.asarray(mine)), torch.from_numpy(truth), f"a {h} x {w} RGBA image")
    return f"{len(shapes)} images with transparent, opaque and white pixels, exact"


@exercise("01.7", "pixel_values back to frames")
def _(unpatch) -> str:
    for t, h, w, what in _FRAME_SHAPES:
        frames = _frames(t + t % 2, h, w)  # an even count: the frames patchify keeps as they are
        rows, grid = patchify(frames)
        mine = unpatch(rows.clone(), grid.clone())
        assert_tensor_matches(mine, frames, f"grid_thw {grid.tolist()} [{what}]")
    return f"{len(_FRAME_SHAPES)} grids incl. 2 time steps and odd merge-unit counts, exact round trip"
