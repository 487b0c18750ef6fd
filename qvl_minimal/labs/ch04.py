"""Chapter 04's exercises: the window index, attention inside segments, the window mask, a prediction.

    04.1  window_index_chapter(grid_thw (n, 3)) -> (index (N/4,), cu_window_seqlens (windows + 1,))
    04.2  varlen_attention_chapter(q, k, v (N, heads, head_dim), cu_seqlens) -> (N, heads, head_dim)
    04.3  raster_window_mask(grid_thw (n, 3)) -> (N, N) bool: True where patches i and j, numbered as
          the rows of pixel_values, sit in the same window
    04.4  quiz: cu_window_seqlens of the video grid (2, 10, 26), predicted by hand

Every answer is compared with the library (`qvl_minimal.vision`, `qvl_minimal.params`) on the grids
the chapter warns about: sides that are and are not multiples of the window, odd merged sides,
videos (t > 1) and batches of grids whose unit numbers continue from one to the next.
"""

from __future__ import annotations

import torch

from ..config import VisionConfig
from ..vision import full_cu_seqlens, varlen_attention, window_index
from .core import assert_answer, assert_tensor_matches, exercise

VISION = VisionConfig()  # the released tower's windows: 112 px = 8 patches = 4 merge units

WINDOW_GRIDS = [  # (grid_thw, what the case tests)
    ([[1, 42, 36]], "the photo: 21 x 18 merge units"),
    ([[1, 22, 36]], "a 300 x 500 px image: 11 x 18 merge units"),
    ([[1, 32, 32]], "merged sides multiples of 4: the padding trap"),
    ([[1, 2, 2]], "a single merge unit"),
    ([[1, 2, 30]], "one row of 15 merge units"),
    ([[1, 34, 6]], "17 x 3 merge units, narrower than one window"),
    ([[3, 16, 24]], "a video: 3 time steps"),
    ([[2, 10, 6]], "a video with odd merged sides"),
    ([[1, 42, 36], [2, 22, 36], [1, 32, 32]], "three grids in one batch: unit numbers continue"),
]


def _random_grids(n: int) -> list:
    sides = torch.randint(1, 26, (n, 2)) * 2  # even sides in patches, 2..50
    steps = torch.randint(1, 3, (n,))
    return [([[int(t), int(h), int(w)]], "random") for t, (h, w) in zip(steps, sides.tolist())]


@exercise("04.1", "window_index with its padding")
def _(window_index_mine) -> str:
    cases = WINDOW_GRIDS + _random_grids(6)
    for grid, what in cases:
        grid = torch.tensor(grid)
        answer = window_index_mine(grid.clone())
        if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
            raise AssertionError(f"grid {grid.tolist()}: return (index, cu_window_seqlens), got {type(answer).__name__}")
        index, cu = window_index(grid, VISION)
        assert_tensor_matches(answer[1], cu, f"cu_window_seqlens of grid {grid.tolist()} [{what}]")
        assert_tensor_matches(answer[0], index, f"index of grid {grid.tolist()} [{what}]")
    return f"{len(cases)} grids incl. multiples of the window, odd sides, videos and a batch, exact"


def _segments(lengths: list[int]) -> torch.Tensor:
    return torch.nn.functional.pad(torch.tensor(lengths).cumsum(0), (1, 0))  # (segments + 1,)


@exercise("04.2", "attention inside segments (varlen)")
def _(varlen_attention_mine) -> str:
    _, photo_cu = window_index([[1, 42, 36]], VISION)
    cases = [  # (cu_seqlens, heads, head_dim, what)
        (photo_cu, 4, 80, "the photo's 30 windows, 4 heads of 80"),
        (_segments([5, 1, 7, 3]), 2, 8, "unequal segments, one of a single row"),
        (_segments([4, 0, 6]), 3, 16, "an empty segment (the reference's repeated boundary)"),
        (full_cu_seqlens([[3, 4, 6]]), 4, 16, "a full-attention block of a video: one segment per time step"),
        (_segments([12]), 1, 80, "one segment: plain attention"),
    ]
    for cu, heads, head_dim, what in cases:
        q, k, v = torch.randn(3, int(cu[-1]), heads, head_dim).unbind(0)  # (N, heads, head_dim) each
        mine = varlen_attention_mine(q.clone(), k.clone(), v.clone(), cu.clone())
        assert_tensor_matches(mine, varlen_attention(q, k, v, cu), f"output for segments {cu.diff().tolist()[:8]}"
                              f"{'...' if len(cu) > 9 else ''} [{what}]", atol=1e-5, rtol=1e-4)
    return f"{len(cases)} segmentations incl. a 1-row and an empty segment, within 1e-5"


def _raster_mask(grid) -> torch.Tensor:
    """(N, N) bool in pixel_values' row order: the window of every patch, compared pairwise."""
    index, cu = window_index(grid, VISION)
    unit = VISION.spatial_merge_size**2
    window_of_unit = torch.empty_like(index)  # (N/4,) window of each merge unit, raster order
    window_of_unit[index] = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff() // unit)
    window = window_of_unit.repeat_interleave(unit)  # (N,) window of each patch row
    return window[:, None] == window[None, :]


def _window_order_mask(grid) -> torch.Tensor:
    """The block-diagonal mask of cu_window_seqlens: right in window order, wrong for raster rows."""
    cu = window_index(grid, VISION)[1]
    segment = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())  # (N,)
    return segment[:, None] == segment[None, :]


MASK_GRIDS = [  # (grid_thw, what the case tests)
    ([[1, 12, 20]], "figure 4.2's grid: 6 windows"),
    ([[1, 22, 36]], "a 300 x 500 px image: 15 windows"),
    ([[1, 2, 2]], "a single merge unit"),
    ([[2, 10, 6]], "a video: windows never span two time steps"),
    ([[1, 8, 12], [1, 4, 4]], "two images: windows never span two images"),
]


@exercise("04.3", "the window mask in raster order")
def _(raster_window_mask) -> str:
    for grid, what in MASK_GRIDS:
        mine = raster_window_mask(torch.tensor(grid))
        if isinstance(mine, torch.Tensor) and mine.shape == _raster_mask(grid).shape and not torch.equal(
                mine, _raster_mask(grid)) and torch.equal(mine, _window_order_mask(grid)):
            raise AssertionError(f"grid {grid} [{what}]: this is the block-diagonal mask of the window order; "
                                 f"number rows and columns as the rows of pixel_values instead (undo the "
                                 f"permutation)")
        assert_tensor_matches(mine, _raster_mask(grid), f"mask of grid {grid} [{what}]")
    return f"{len(MASK_GRIDS)} grids incl. a video and two images, exact"


VIDEO_GRID = [[2, 10, 26]]  # 04.4: a video of 2 time steps, 140 x 364 px


def _video_cu() -> list[int]:
    return window_index(VIDEO_GRID, VISION)[1].tolist()


@exercise("04.4", "cu_window_seqlens of a video, by hand", expected=_video_cu)
def _(answer) -> str:
    expected = _video_cu()
    mine = answer.tolist() if isinstance(answer, torch.Tensor) else answer
    if not (isinstance(mine, (list, tuple)) and all(isinstance(x, int) for x in mine)):
        raise AssertionError(f"give a list of ints (0, the end of window 1, ...), got {answer!r}")
    mine = list(mine)
    if not mine or mine[0] != 0:
        raise AssertionError("the boundaries start at 0")
    if any(b <= a for a, b in zip(mine, mine[1:])):
        raise AssertionError("the boundaries must increase: no window is empty")
    total = sum(t * h * w for t, h, w in VIDEO_GRID)
    if mine[-1] != total:
        raise AssertionError(f"the last boundary is {mine[-1]}, but the boundaries count patches: the video has "
                             f"t * h * w of them (both time steps)")
    if len(mine) != len(expected):
        raise AssertionError(f"{len(mine) - 1} windows is not right. Hint: halve the sides (merge units), cut each "
                             f"side into runs of 4 units from the top left, and do it for each time step")
    assert_answer(mine, expected, "cu_window_seqlens",
                  hint="windows go row-major, one time step after the other; a window of a x b units holds 4ab "
                       "patches")
    return "exact"
