"""Chapter 05's exercises: the vision block, the patch merger, and three quiz questions.

    05.1  block(x (N, d), W, i, cu_seqlens, cos, sin (N, 1, head_dim)) -> (N, d): vision block i of the
          state dict W (keys "blocks.{i}.norm1.weight", ...), 16 heads
    05.2  merge(hidden (N, d), W) -> (N / 4, out): the merger (keys "merger.ln_q.weight", ...)
    05.3  quiz: does the merger with the tanh GELU pass the 1e-5 check? (a bool)
    05.4  quiz: un-permute then merge == merge then un-permute? (a bool)
    05.5  quiz: (which patch of the 2 x 2 unit, which channel) feeds input 4000 of the merger's first Linear

The block and the merger are compared with the library's `VisionBlock` and `PatchMerger` (random
weights, random norm weights so that a forgotten weight shows) at the real width and at a narrower
one, on window segments, one full segment and a video's time steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ..config import VisionConfig
from ..vision import PatchMerger, VisionBlock, full_cu_seqlens, vision_rotary_angles, window_index
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


@exercise("05.3", "does the tanh GELU pass?")
def _(answer) -> str:
    merger = _random(PatchMerger, NARROW)
    hidden = torch.randn(64, NARROW.hidden_size)
    with torch.no_grad():
        z = merger.mlp[0](rearrange(merger.ln_q(hidden), "(u k) d -> u (k d)", k=4))  # (16, 1280)
        exact, tanh = merger.mlp[2](F.gelu(z)), merger.mlp[2](F.gelu(z, approximate="tanh"))
    rel = float((tanh - exact).abs().max() / exact.abs().max())
    assert_answer(answer, rel < 1e-5, "passes the 1e-5 check (True / False)",
                  hint="compute the merger both ways and compare the largest difference with the largest value")
    return "right"


@exercise("05.4", "merge and the permutation commute?")
def _(answer) -> str:
    merger = _random(PatchMerger, NARROW)
    hidden = torch.randn(4 * 30, NARROW.hidden_size)  # 30 merge units, window order
    inverse = torch.randperm(30)
    with torch.no_grad():
        after = merger(hidden)[inverse]
        before = merger(rearrange(rearrange(hidden, "(u k) d -> u k d", k=4)[inverse], "u k d -> (u k) d"))
    assert_answer(answer, bool(torch.allclose(after, before, atol=1e-6)), "same tokens (True / False)",
                  hint="the permutation moves whole merge units; what does the merger do with each unit?")
    return "right"


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
