"""Chapter 12's exercises: predict where the prefill turns compute-bound, build an int8 quantiser, and
lay a weight matrix out in pairs as a bfloat16 dot-product instruction reads it.

    12.1  quiz: the shortest prompt (tokens) whose 3B prefill in bfloat16 is compute-bound on a
          machine with a bfloat16 peak of 560 GFLOP/s and a memory bandwidth of 16 GB/s
          (its FLOPs per byte of weights read reach the ridge point, peak / bandwidth)
    12.2  quantize_groups_mine(w, group) -> (q, scale)
          weight-only int8 with one float32 scale per `group` consecutive weights of a row
          (llama.cpp's Q8_0 uses groups of 32): q int8 (rows, cols) in [-127, 127],
          scale (rows, cols // group) = the group's largest |w| / 127, w ~ scale * q
    12.3  pack_pairs_mine(w) -> packed
          w (out, in), out a multiple of 16 and in even -> (out / 16, in / 2, 16, 2) with
          packed[b, k, j, p] = w[16 b + j, 2 k + p]: 16 outputs side by side, each with its pair of
          neighbouring inputs (section 2.11's layout)

12.1 is checked against costs.prefill_flops / costs.decode_weight_bytes (within one token); 12.2 by
what defines the quantiser (shapes, dtypes, the range of q, the scales, and every weight within half a
step of its reconstruction) on matrices with an all-zero group, ties and extreme values; 12.3 exactly,
element by element, on matrices whose every entry names its own row and column.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..costs import decode_weight_bytes, prefill_flops
from .core import assert_answer, assert_tensor_matches, exercise

QUIZ_ROOF = {"gflops": 560.0, "copy_gbs": 16.0}  # bfloat16 peak and memory bandwidth of exercise 12.1


def _compute_bound_prompt() -> int:
    """The smallest L with prefill_flops(3B, L) / bytes of bfloat16 weights >= peak / bandwidth."""
    config = Qwen25VLConfig.preset("3b")
    ridge, weights = QUIZ_ROOF["gflops"] / QUIZ_ROOF["copy_gbs"], decode_weight_bytes(config, "bfloat16")
    length = 1
    while prefill_flops(config, length)[0] / weights < ridge:
        length += 1
    return length


@exercise("12.1", "the prompt length where the 3B prefill turns compute-bound", expected=_compute_bound_prompt)
def _(prompt_tokens) -> str:
    assert_answer(prompt_tokens, _compute_bound_prompt(), "shortest compute-bound prompt", tol=1,
                  hint="a prompt token does 2 FLOPs per weight it multiplies, but the head is read in full "
                       "and multiplies only the last position")
    return "right (within one token)"


def _matrices() -> list[tuple[torch.Tensor, int, str]]:
    w = torch.randn(6, 64)
    w[1, 32:] = 0  # an all-zero group: its scale is 0 and so is every q
    w[2, :8] = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25, 127.0, -3.0, 2.0])  # ties at half a step
    w[3, 5] = -50.0  # a negative extreme: q = -127 there
    return [(w, 32, "6 x 64 in groups of 32 (a zero group, ties, a negative extreme)"),
            (w, 64, "6 x 64 in groups of 64 (one group per row)"),
            (torch.randn(16, 256) * 0.02, 32, "16 x 256 weights of std 0.02 in groups of 32"),
            (torch.randn(3, 96) * torch.logspace(-3, 2, 96), 16, "3 x 96, magnitudes 1e-3 .. 1e2, groups of 16")]


@exercise("12.2", "int8 weights with one scale per group")
def _(quantize_groups_mine) -> str:
    cases = _matrices()
    for w, group, what in cases:
        q, scale = quantize_groups_mine(w.clone(), group)
        rows, cols = w.shape
        groups = w.reshape(rows, cols // group, group)  # (rows, groups, group)
        expected_scale = groups.abs().amax(dim=-1) / 127  # (rows, groups)
        assert_tensor_matches(scale, expected_scale, f"{what}: scale", rtol=1e-6)
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8 or tuple(q.shape) != (rows, cols):
            raise AssertionError(f"{what}: q must be an int8 tensor of shape {(rows, cols)}")
        if q.abs().max() > 127:
            raise AssertionError(f"{what}: q leaves [-127, 127]")
        step = expected_scale[:, :, None].expand_as(groups)  # (rows, groups, group)
        error = (groups - step * q.reshape(groups.shape).float()).abs()
        if (error > step / 2 * (1 + 1e-5) + 1e-12).any():
            raise AssertionError(f"{what}: some weight is more than half a step from scale * q "
                                 "(round to the nearest integer, do not truncate)")
        peak = q.reshape(groups.shape).abs().amax(dim=-1)  # (rows, groups)
        if not torch.equal(peak, torch.where(expected_scale > 0, 127, 0).to(torch.int8)):
            raise AssertionError(f"{what}: each group's largest |w| must become q = +-127")
    return f"{len(cases)} matrices, group sizes 16 to 64: scales within 1e-6, every weight within half a step"


def _pair_cases() -> list[tuple[torch.Tensor, str]]:
    def labelled(out, inp):  # entry (r, c) = 1000 r + c: a misplaced value says where it came from
        return (1000 * torch.arange(out)[:, None] + torch.arange(inp)).float()  # (out, in)

    return [(labelled(16, 2), "16 x 2 (one block, one pair)"), (labelled(32, 6), "32 x 6 (two blocks, three pairs)"),
            (labelled(48, 10), "48 x 10"), (torch.randn(64, 128), "64 x 128 random")]


@exercise("12.3", "a matrix in the pair layout of a bfloat16 dot product")
def _(pack_pairs_mine) -> str:
    cases = _pair_cases()
    for w, what in cases:
        out, inp = w.shape
        blocks = w.reshape(out // 16, 16, inp // 2, 2)  # (b, j, k, p): row 16 b + j, column 2 k + p
        expected = blocks.permute(0, 2, 1, 3).contiguous()  # (out / 16, in / 2, 16, 2)
        assert_tensor_matches(pack_pairs_mine(w.clone()), expected, f"{what}: packed[b, k, j, p] = w[16 b + j, 2 k + p]")
    return f"{len(cases)} matrices, every entry in its place"
