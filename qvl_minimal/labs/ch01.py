"""Chapter 01's exercises: smart_resize, the 1176-wide patch rows and their inverse, and a quiz.

    01.1  smart_resize(height, width, factor=28, min_pixels=..., max_pixels=...) -> (h, w)
    01.2  patch_rows(frames (T, 3, H, W)) -> pixel_values (T'/2 * H/14 * W/14, 1176)
    01.3  quiz: <|image_pad|> tokens of a 1080 x 1920 screenshot
    01.4  quiz: the largest square side that the pixel budget does not shrink
    01.5  quiz: frames kept, time steps and second_per_grid_t of two clips
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


@exercise("01.3", "tokens of a 1080 x 1920 screenshot")
def _(answer) -> str:
    assert_answer(answer, _tokens(1080, 1920), "tokens",
                  hint="both sides to the nearest multiple of 28, then one token per 28 x 28 px")
    return "exact"


@exercise("01.4", "the largest square the budget leaves alone")
def _(answer) -> str:
    side = max(s for s in range(3000, 4000) if smart_resize(s, s) == (round(s / FACTOR) * FACTOR,) * 2)
    assert_answer(answer, side, "side (px)", hint=f"which sides round to a square of at most {MAX_PIXELS:,} px?")
    return "exact"


@exercise("01.5", "frames, time steps and seconds of two clips")
def _(answer) -> str:
    clips = {"4.5 s at 30 fps": (135, 30.0), "1.5 s at 24 fps": (36, 24.0)}  # not the chapter's table
    if not isinstance(answer, dict) or set(answer) != set(clips):
        raise AssertionError(f"answer must be a dict with the keys {sorted(clips)}")
    for name, (total, fps) in clips.items():
        kept, rate = sample_frame_indices(total, fps)
        mine = answer[name]
        if not (isinstance(mine, (tuple, list)) and len(mine) == 3):
            raise AssertionError(f"{name}: give (frames kept, t, second_per_grid_t), got {mine!r}")
        assert_answer(mine[0], len(kept), f"{name}: frames kept", hint="duration x 2 fps, clamped to [4, 768], even")
        assert_answer(mine[1], len(kept) // 2, f"{name}: t", hint="two frames per time step")
        assert_answer(mine[2], 2 / rate, f"{name}: second_per_grid_t", tol=1e-9,
                      hint="2 / the rate the kept frames sample")
    return "2 clips, exact"


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
