"""Chapter 04's exercises: the window index with its padding, attention inside segments, two quiz questions.

    04.1  window_index_chapter(grid_thw (n, 3)) -> (index (N/4,), cu_window_seqlens (windows + 1,))
    04.2  varlen_attention_chapter(q, k, v (N, heads, head_dim), cu_seqlens) -> (N, heads, head_dim)
    04.3  quiz: empty windows the reference's padding makes for grid (1, 32, 32)
    04.4  quiz: at 1080p, attention FLOPs of the 4 full blocks / those of the 28 window blocks

Every answer is compared with the library (`qvl_minimal.vision`, `qvl_minimal.params`) on the grids
the chapter warns about: sides that are and are not multiples of the window, odd merged sides,
videos (t > 1) and batches of grids whose unit numbers continue from one to the next.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig, VisionConfig
from ..params import vision_flops
from ..preprocess import smart_resize
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


@exercise("04.3", "empty windows of the reference's padding")
def _(answer) -> str:
    side = VISION.window_size // VISION.patch_size // VISION.spatial_merge_size  # 4 merge units
    merged = 32 // VISION.spatial_merge_size  # the merged side of grid (1, 32, 32)
    made = ((merged + side - merged % side) // side) ** 2  # the reference pads by side - n % side
    real = int(window_index([[1, 32, 32]], VISION)[1].numel()) - 1
    assert_answer(answer, made - real, "empty windows",
                  hint="the reference pads a side of n units by 4 - n % 4 units; how many windows does it cut?")
    return "exact"


@exercise("04.4", "full vs window attention at 1080p")
def _(answer) -> str:
    h, w = smart_resize(1080, 1920)
    _, parts = vision_flops(Qwen25VLConfig.preset("3b"), [[1, h // 14, w // 14]])
    assert_answer(answer, parts["full_attention"] / parts["window_attention"], "FLOP ratio (4 full / 28 window blocks)",
                  tol=0.1, hint="attention of a segment of L patches costs 4 * 1280 * L^2 FLOPs")
    return "within 0.1"
