"""Chapter 02's exercises: the Conv3d patch embedding as one matrix product, folded, and a quiz.

    02.1  patch_embed_linear(pixel_values (N, C*T*P*P), weight (D, C, T, P, P)) -> (N, D)
    02.2  patch_embed_still(frame_rows (N, C*P*P), weight (D, C, 2, P, P)) -> (N, D)
    02.3  fold_normalisation(weight (D, C, T, P, P), mean (C,), std (C,)) -> (W (D, C*T*P*P), b (D,))
    02.4  quiz: the rank of the features of many grayscale still images

Answers are compared with the library's `PatchEmbed` carrying the same seeded weight, on several
widths, patch sizes, channel counts and frame depths, so that a kernel flattened in the wrong
order (for example (t c h w) instead of the row's (c t h w)) cannot pass.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from ..config import Qwen25VLConfig
from ..preprocess import CLIP_MEAN, CLIP_STD
from ..vision import PatchEmbed
from .core import assert_answer, assert_tensor_matches, exercise

_SHAPES = [  # (rows N, width D, channels C, frames T, patch P)
    (37, 1280, 3, 2, 14), (1, 64, 3, 2, 14), (5, 48, 3, 2, 16), (9, 32, 1, 2, 14), (6, 40, 3, 4, 14), (11, 24, 2, 2, 4),
]


def _library_embed(d: int, c: int, t: int, p: int) -> PatchEmbed:
    config = Qwen25VLConfig.preset("3b").replace(
        vision_config={"hidden_size": d, "in_chans": c, "temporal_patch_size": t, "patch_size": p, "num_heads": 1})
    embed = PatchEmbed(config.vision_config)
    with torch.no_grad():
        embed.proj.weight.normal_(0.0, 0.02)
    return embed


@exercise("02.1", "the Conv3d as a Linear")
def _(patch_embed_linear) -> str:
    for n, d, c, t, p in _SHAPES:
        embed = _library_embed(d, c, t, p)
        rows = torch.randn(n, c * t * p * p)
        with torch.no_grad():
            mine = patch_embed_linear(rows.clone(), embed.proj.weight.detach().clone())
            assert_tensor_matches(mine, embed(rows), f"{n} rows, weight {tuple(embed.proj.weight.shape)}",
                                  atol=1e-5, rtol=1e-4)
    return f"{len(_SHAPES)} weight shapes incl. 16 px patches, 1 channel and 4 frames, within float32 rounding"


@exercise("02.2", "a still image through one frame's Linear")
def _(patch_embed_still) -> str:
    shapes = [s for s in _SHAPES if s[3] == 2]
    for n, d, c, t, p in shapes:
        embed = _library_embed(d, c, t, p)
        frame_rows = torch.randn(n, c * p * p)  # one frame, flattened (c h w)
        rows = repeat(frame_rows, "n (c hw) -> n (c t hw)", c=c, t=t)  # the frame repeated in time: (N, C*T*P*P)
        with torch.no_grad():
            mine = patch_embed_still(frame_rows.clone(), embed.proj.weight.detach().clone())
            assert_tensor_matches(mine, embed(rows), f"{n} one-frame rows, weight {tuple(embed.proj.weight.shape)}",
                                  atol=1e-5, rtol=1e-4)
    return f"{len(shapes)} weight shapes, equal to PatchEmbed on the time-repeated rows"


@exercise("02.3", "the CLIP normalisation folded into the patch embedding")
def _(fold_normalisation) -> str:
    for n, d, c, t, p in _SHAPES:
        embed = _library_embed(d, c, t, p)
        mean, std = torch.rand(c) * 0.5 + 0.25, torch.rand(c) * 0.2 + 0.2  # (C,) each
        raw = torch.rand(n, c, t * p * p)  # pixels in [0, 1], not normalised
        normalised = rearrange((raw - mean[:, None]) / std[:, None], "n c thw -> n (c thw)")
        with torch.no_grad():
            folded = fold_normalisation(embed.proj.weight.detach().clone(), mean.clone(), std.clone())
            if not (isinstance(folded, (tuple, list)) and len(folded) == 2):
                raise AssertionError(f"return a pair (weight (D, C*T*P*P), bias (D,)), got {type(folded).__name__}")
            weight, bias = folded
            what = f"weight {tuple(embed.proj.weight.shape)}"
            for name, tensor, shape in [("folded weight", weight, (d, c * t * p * p)), ("bias", bias, (d,))]:
                if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                    got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                    raise AssertionError(f"{what}: the {name} is {got}, expected shape {shape}")
            mine = rearrange(raw, "n c thw -> n (c thw)") @ weight.T + bias  # (N, D) from raw pixels
            assert_tensor_matches(mine, embed(normalised), f"{what}, raw rows through your (W, b)",
                                  atol=1e-5, rtol=1e-4)
    return f"{len(_SHAPES)} weight shapes with random means and deviations, raw rows == normalised rows"


def _grayscale_rank() -> int:
    """The rank of the features of 300 random grayscale still images' patch rows (float64)."""
    g = torch.Generator().manual_seed(24)
    weight = torch.randn(1280, 3, 2, 14, 14, generator=g, dtype=torch.float64)
    gray = torch.rand(300, 1, 1, 14, 14, generator=g, dtype=torch.float64)  # one value per pixel
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64)[:, None, None, None]  # (3, 1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64)[:, None, None, None]
    rows = ((gray - mean) / std).expand(300, 3, 2, 14, 14)  # (300, 3, 2, 14, 14): 3 channels, 2 frames
    features = rearrange(rows, "n c t h w -> n (c t h w)") @ rearrange(weight, "d c t h w -> (c t h w) d")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small SVD: one thread is fastest, and immune to a busy machine
    try:
        return int(torch.linalg.matrix_rank(features))  # (300, 1280): at most 300
    finally:
        torch.set_num_threads(threads)


@exercise("02.4", "the rank of grayscale still-image features", expected=_grayscale_rank)
def _(answer) -> str:
    assert_answer(answer, _grayscale_rank(), "rank",
                  hint="how many of a grayscale still patch's 1176 numbers can you choose freely? And is the "
                       "map from those numbers to the features linear, or linear plus a constant?")
    return "exact"
