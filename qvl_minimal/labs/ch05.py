"""Chapter 05's exercises: the vision block, the patch merger, the whole tower, and two quiz questions.

    05.1  block(x (N, d), W, i, cu_seqlens, cos, sin (N, 1, head_dim)) -> (N, d): vision block i of the
          state dict W (keys "blocks.{i}.norm1.weight", ...), 16 heads
    05.2  merge(hidden (N, d), W) -> (N / 4, out): the merger (keys "merger.ln_q.weight", ...)
    05.3  tower(pixel_values (N, 1176), grid_thw (n, 3), W, vc) -> (N / 4, out): the whole tower from
          05.1's block and 05.2's merge (patch embedding, window order, blocks, merger, raster order)
    05.4  quiz: rows of the hidden state that change after blocks 0, 2 and 3 when one patch changes
    05.5  quiz: (which patch of the 2 x 2 unit, which channel) feeds input 4000 of the merger's first Linear

The block, the merger and the tower are compared with the library's `VisionBlock` and `PatchMerger` (random
weights, random norm weights so that a forgotten weight shows) at the real width and at a narrower
one, on window segments, one full segment and a video's time steps.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..config import VisionConfig
from ..vision import (PatchMerger, VisionBlock, VisionTransformer, full_cu_seqlens, patch_positions,
                      vision_rotary_angles, window_index)
from .core import assert_answer, assert_tensor_matches, exercise

REAL = VisionConfig()  # 1280 wide, 16 heads of 80, MLP 3420, merger 5120 -> 2048
NARROW = VisionConfig(hidden_size=320, num_heads=16, intermediate_size=96, out_hidden_size=96)  # 16 heads of 20


def _random(cls, config: VisionConfig) -> torch.nn.Module:
    """A library module with fast random weights: matrices ~ N(0, 1/fan_in), biases small, norm weights
    around 1 but not 1 (so that a forgotten norm weight shows)."""
    with torch.device("meta"):
        module = cls(config)
    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            elif "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return module.eval()


def _rotary(grid, head_dim: int):
    """cos, sin (N, 1, head_dim) for a grid, in raster order (the check does not need the window order)."""
    angles = vision_rotary_angles(grid, head_dim)  # (N, head_dim / 2)
    emb = torch.cat([angles, angles], dim=-1)[:, None, :]  # (N, 1, head_dim)
    return emb.cos(), emb.sin()


@exercise("05.1", "the vision block")
def _(block_mine) -> str:
    cases = [  # (config, grid, kind of segments, what)
        (REAL, [[1, 8, 12]], "windows", "real width, windows of 64 and 32 patches"),
        (NARROW, [[1, 8, 12]], "full", "one full segment"),
        (NARROW, [[2, 10, 6]], "windows", "a video, windows of unequal sizes"),
        (NARROW, [[3, 4, 6]], "full", "a video, one segment per time step"),
    ]
    for config, grid, kind, what in cases:
        index = int(torch.randint(0, 32, ()))  # the block's number in the state dict
        block = _random(VisionBlock, config)
        W = {f"blocks.{index}.{k}": v for k, v in block.state_dict().items()}
        cu = window_index(grid, config)[1] if kind == "windows" else full_cu_seqlens(grid)
        n = int(torch.tensor(grid).prod(-1).sum())
        x = torch.randn(n, config.hidden_size)  # (N, d)
        cos, sin = _rotary(grid, config.head_dim)
        with torch.no_grad():
            mine = block_mine(x.clone(), W, index, cu.clone(), cos, sin)
            expected = block(x, cu, cos, sin)
        assert_tensor_matches(mine, expected, f"output of block {index} (width {config.hidden_size}, {kind} "
                              f"{cu.diff().tolist()[:6]}) [{what}]", atol=1e-4, rtol=1e-4)
    return f"{len(cases)} blocks at 2 widths, windows, full and video segments, within 1e-4"


@exercise("05.2", "the patch merger (2 x 2 grouping)")
def _(merge_mine) -> str:
    cases = [(REAL, 24, "real width: 1280 -> 5120 -> 2048"), (NARROW, 10, "narrow: 320 -> 1280 -> 96"),
             (NARROW, 1, "a single merge unit")]
    for config, units, what in cases:
        merger = _random(PatchMerger, config)
        W = {f"merger.{k}": v for k, v in merger.state_dict().items()}
        hidden = torch.randn(4 * units, config.hidden_size)  # (N, d), 4 rows per merge unit
        with torch.no_grad():
            mine = merge_mine(hidden.clone(), W)
            expected = merger(hidden)
        assert_tensor_matches(mine, expected, f"merged tokens of {4 * units} rows [{what}]", atol=1e-5, rtol=1e-4)
    return f"{len(cases)} mergers incl. the real width and a single unit, within 1e-5"


TOWER = VisionConfig(hidden_size=320, num_heads=16, intermediate_size=96, out_hidden_size=96, depth=4,
                     fullatt_block_indexes=(1, 3))  # NARROW with 4 blocks, full attention in 1 and 3
TOWER_GRIDS = [  # (grid_thw, what the case tests)
    ([[1, 8, 12]], "one image, windows of 64 and 32 patches"),
    ([[1, 12, 10], [1, 4, 4]], "two images: unit numbers continue, one full segment each"),
    ([[2, 6, 10]], "a video of 2 time steps: one full segment per time step"),
]


@exercise("05.3", "the whole tower from your block and merge")
def _(tower_mine) -> str:
    tower = _random(VisionTransformer, TOWER)
    W = tower.state_dict()
    for grid, what in TOWER_GRIDS:
        n = int(torch.tensor(grid).prod(-1).sum())
        pixel_values = torch.randn(n, TOWER.patch_dim)  # (N, 1176)
        with torch.no_grad():
            mine = tower_mine(pixel_values.clone(), torch.tensor(grid), W, TOWER)
            expected = tower(pixel_values, grid)
        assert_tensor_matches(mine, expected, f"visual tokens of grids {grid} [{what}]; raster order, "
                              f"blocks {TOWER.fullatt_block_indexes} full", atol=1e-4, rtol=1e-4)
    return f"{len(TOWER_GRIDS)} inputs incl. two images and a video, within 1e-4"


CHANGED_PATCH = (40, 20)  # 05.4: (row, col) in the photo's 42 x 36 patch grid
PHOTO_GRID = [[1, 42, 36]]


def _rows_changed() -> tuple[int, int, int]:
    """Rows that differ after block 0 (window), block 2 (window) and block 3 (full) of the chapter's tower."""
    row = int(((patch_positions(PHOTO_GRID) == torch.tensor(CHANGED_PATCH)).all(-1)).nonzero())
    index, cu = window_index(PHOTO_GRID, REAL)
    position = int((index == row // 4).nonzero())  # where its merge unit sits in the window order
    window = int(torch.searchsorted(cu, position * 4, right=True)) - 1
    size = int(cu[window + 1] - cu[window])
    return size, size, int(cu[-1])


@exercise("05.4", "which rows one changed patch reaches", expected=_rows_changed)
def _(answer) -> str:
    if not (isinstance(answer, (tuple, list)) and len(answer) == 3):
        raise AssertionError(f"give three counts (after block 0, after block 2, after block 3), got {answer!r}")
    after_0, after_2, after_3 = _rows_changed()
    assert_answer(answer[0], after_0, "rows changed after block 0 (a window block)",
                  hint="attention mixes rows only inside a window; which window holds that patch, and how big "
                       "is it at the photo's bottom edge?")
    assert_answer(answer[1], after_2, "rows changed after block 2 (three window blocks)",
                  hint="do the windows move between blocks?")
    assert_answer(answer[2], after_3, "rows changed after block 3 (a full block)",
                  hint="in a full block every row attends to every row of its image")
    return "exact"


@exercise("05.5", "which patch and channel feed input 4000")
def _(answer) -> str:
    d, unit = REAL.hidden_size, REAL.spatial_merge_size**2
    label = torch.arange(unit * d).view(unit, d)  # row k, channel c of one unit: k * d + c
    grouped = rearrange(label, "(u k) d -> u (k d)", k=unit)[0]  # as the merger groups them (5120,)
    k, c = divmod(int(grouped[4000]), d)
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise AssertionError(f"give (patch, channel) with patch 0..3 in the unit's order, got {answer!r}")
    assert_answer(int(answer[0]), k, "patch (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)",
                  hint="the 4 rows of a unit are laid side by side, 1280 channels each")
    assert_answer(int(answer[1]), c, "channel", hint="subtract the channels of the patches before it")
    return "exact"
