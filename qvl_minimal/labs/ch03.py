"""Chapter 03's exercises: 2D rotary positions and angles in merge-unit order, the rotation, a quiz.

    03.1  positions(grid_thw) -> (N, 2) int64 (row, col) of every patch, in pixel_values order
    03.2  rotary_angles(grid_thw, head_dim) -> (N, head_dim // 2) float32
    03.3  rotate(x (N, heads, head_dim), angles (N, head_dim // 2)) -> x rotated, x's dtype
    03.4  quiz: the head dims a step down (row + 1) changes
    03.5  distinct_offsets(h, w) -> number of distinct (drow, dcol) on an h x w patch grid
    03.6  full_segments(grid_thw) -> cu_seqlens of the full-attention blocks: one segment per time step

Checked against the library (`patch_positions`, `vision_rotary_angles`, `apply_rotary`) on single
images, videos (t > 1) and batches, with sides that are odd in merge units (3 x 5 units).
"""

from __future__ import annotations

import torch

from ..layers import apply_rotary
from ..vision import full_cu_seqlens, patch_positions, vision_rotary_angles
from .core import assert_answer, assert_tensor_matches, exercise

_GRIDS = [
    ([[1, 4, 6]], "one image, 2 x 3 merge units"),
    ([[1, 2, 2]], "one merge unit"),
    ([[1, 6, 10]], "3 x 5 merge units (odd)"),
    ([[3, 8, 12]], "a video, t = 3"),
    ([[1, 42, 36]], "the photo"),
    ([[1, 4, 4], [2, 6, 2], [1, 2, 8]], "a batch of three grids"),
]


@exercise("03.1", "patch positions in merge-unit order")
def _(positions) -> str:
    for grid, what in _GRIDS:
        assert_tensor_matches(positions(torch.tensor(grid)), patch_positions(grid), f"grid_thw {grid} [{what}]")
    return f"{len(_GRIDS)} grids incl. odd merge-unit counts, t > 1 and a batch, exact"


@exercise("03.2", "rotary angles in merge-unit order")
def _(rotary_angles) -> str:
    cases = [(grid, what, head_dim) for grid, what in _GRIDS for head_dim in (80, 16)]
    cases.append(([[1, 6, 10]], "head_dim 64", 64))
    for grid, what, head_dim in cases:
        assert_tensor_matches(rotary_angles(torch.tensor(grid), head_dim), vision_rotary_angles(grid, head_dim),
                              f"grid_thw {grid}, head_dim {head_dim} [{what}]", atol=1e-5, rtol=1e-5)
    return f"{len(cases)} (grid, head_dim) cases incl. odd merge-unit counts, t > 1 and a batch"


@exercise("03.3", "rotating q and k with rotate_half")
def _(rotate) -> str:
    cases = [(5, 2, 80, torch.float32), (64, 16, 80, torch.float32), (7, 1, 16, torch.float32),
             (9, 3, 80, torch.bfloat16)]
    for n, heads, head_dim, dtype in cases:
        x = torch.randn(n, heads, head_dim).to(dtype)
        angles = torch.rand(n, head_dim // 2) * 40  # up to 40 radians, like the photo's
        emb = torch.cat([angles, angles], dim=-1)[:, None, :]  # (N, 1, head_dim)
        expected = apply_rotary(x, emb.cos(), emb.sin())
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert_tensor_matches(rotate(x.clone(), angles.clone()), expected,
                              f"x {tuple(x.shape)} {str(dtype).replace('torch.', '')}", atol=tol, rtol=tol)
    return f"{len(cases)} shapes incl. head_dim 16 and a bfloat16 input, within rounding"


@exercise("03.4", "the dims a row step changes")
def _(answer) -> str:
    x = torch.randn(80)
    angles = vision_rotary_angles([[1, 2, 2]], 80)  # (4, 40): patches (0, 0), (0, 1), (1, 0), (1, 1)
    emb = torch.cat([angles, angles], dim=-1)  # (4, 80)
    rotated = apply_rotary(x.expand(4, 80), emb.cos(), emb.sin())  # (4, 80)
    expected = ((rotated[2] - rotated[0]).abs() > 0).nonzero().flatten().tolist()  # (1, 0) vs (0, 0)
    mine = sorted(int(i) for i in answer) if isinstance(answer, (list, tuple, range, torch.Tensor)) else answer
    assert_answer(mine, expected, "dims", hint="which half of the 40 angles carries the row, and which dims share it?")
    return "exact"


@exercise("03.5", "distinct relative offsets on a grid")
def _(distinct_offsets) -> str:
    sides = [(2, 2), (1, 5), (4, 6), (10, 14), (42, 36), (3, 1)]
    for h, w in sides:
        pos = torch.cartesian_prod(torch.arange(h), torch.arange(w))  # (h*w, 2)
        d = pos[None] - pos[:, None]  # (h*w, h*w, 2): (drow, dcol) of every pair
        offsets = (d[..., 0] * (2 * w + 1) + d[..., 1]).unique().numel()  # one integer per (drow, dcol)
        assert_answer(distinct_offsets(h, w), offsets, f"a {h} x {w} grid", hint="count drow and dcol separately")
    return f"{len(sides)} grids incl. 1-wide ones, exact"


@exercise("03.6", "full-attention segments, one per time step")
def _(full_segments) -> str:
    for grid, what in _GRIDS:
        mine = full_segments(torch.tensor(grid))
        mine = mine.long() if isinstance(mine, torch.Tensor) else torch.as_tensor(mine, dtype=torch.long)
        assert_tensor_matches(mine, full_cu_seqlens(grid), f"grid_thw {grid} [{what}]")
    return f"{len(_GRIDS)} grids incl. t = 3 and a batch, exact"
