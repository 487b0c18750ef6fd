"""Chapter 03's exercises: 2D rotary positions and angles in merge-unit order, the rotation, a quiz.

    03.1  positions(grid_thw) -> (N, 2) int64 (row, col) of every patch, in pixel_values order
    03.2  rotary_angles(grid_thw, head_dim) -> (N, head_dim // 2) float32
    03.3  rotate(x (N, heads, head_dim), angles (N, head_dim // 2)) -> x rotated, x's dtype
    03.4  quiz: the row offsets at which the fastest rotary pair nearly comes back to its start
    03.5  offset_score(q (head_dim,), k (head_dim,), d_row, d_col) -> the score of q at any patch p
          with k at p + (d_row, d_col), from the offset alone
    03.6  full_segments(grid_thw) -> cu_seqlens of the full-attention blocks: one segment per time step

Checked against the library (`patch_positions`, `vision_rotary_angles`, `apply_rotary`) on single
images, videos (t > 1) and batches, with sides that are odd in merge units (3 x 5 units).
"""

from __future__ import annotations

import math

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


_PHOTO_ROWS = 42  # the photo's grid is 42 x 36 patches
_NEAR = 0.2  # radians: "nearly back to the start"


def _near_turns() -> list[int]:
    """Row offsets 1..41 at which the fastest pair's angle is within 0.2 rad of a whole turn."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 40, 2, dtype=torch.float64) / 40)  # (20,)
    offsets = torch.arange(1, _PHOTO_ROWS, dtype=torch.float64)  # (41,)
    angle = offsets * inv_freq[0]  # the fastest pair: dims 0 and 40
    off_turn = (angle - 2 * math.pi * torch.round(angle / (2 * math.pi))).abs()  # distance to a whole turn
    return [int(d) for d in offsets[off_turn < _NEAR]]


@exercise("03.4", "where the fastest rotary pair comes back", expected=_near_turns)
def _(answer) -> str:
    mine = sorted(int(i) for i in answer) if isinstance(answer, (list, tuple, range, torch.Tensor)) else answer
    assert_answer(mine, _near_turns(), "row offsets",
                  hint="the fastest pair turns by 1 radian per row; a whole turn is 2 pi = 6.283... radians, "
                       "so look near the multiples of 2 pi below 42")
    return "exact"


@exercise("03.5", "a score from the offset alone")
def _(offset_score) -> str:
    cases = [(80, 42, 36), (80, 6, 10), (16, 8, 8), (64, 20, 4)]  # (head_dim, grid height, grid width)
    for head_dim, h, w in cases:
        grid = [[1, h, w]]
        pos = patch_positions(grid)  # (N, 2)
        emb = torch.cat([vision_rotary_angles(grid, head_dim)] * 2, dim=-1).double()  # (N, head_dim)
        q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
        for _ in range(6):
            i, j = torch.randint(0, h * w, (2,)).tolist()  # q at patch i, k at patch j
            d_row, d_col = (pos[j] - pos[i]).tolist()
            qr = apply_rotary(q, emb[i].cos(), emb[i].sin())
            kr = apply_rotary(k, emb[j].cos(), emb[j].sin())
            mine = offset_score(q.clone(), k.clone(), d_row, d_col)
            mine = float(mine) if isinstance(mine, (int, float, torch.Tensor)) else mine
            assert_answer(mine, float(qr @ kr), f"head_dim {head_dim}, offset ({d_row}, {d_col})",
                          tol=1e-5 * float(q.norm() * k.norm()),  # float32 angles: about 1e-7 each
                          hint="rotate only k, by the angles of the offset (negative offsets included)")
    return f"{len(cases) * 6} patch pairs on 4 grids incl. head_dim 16 and 64, within 1e-5 |q| |k|"


@exercise("03.6", "full-attention segments, one per time step")
def _(full_segments) -> str:
    for grid, what in _GRIDS:
        mine = full_segments(torch.tensor(grid))
        mine = mine.long() if isinstance(mine, torch.Tensor) else torch.as_tensor(mine, dtype=torch.long)
        assert_tensor_matches(mine, full_cu_seqlens(grid), f"grid_thw {grid} [{what}]")
    return f"{len(_GRIDS)} grids incl. t = 3 and a batch, exact"
