"""Chapter 02's exercises: the Conv3d patch embedding as one matrix product, and a quiz.

    02.1  patch_embed_linear(pixel_values (N, C*T*P*P), weight (D, C, T, P, P)) -> (N, D)
    02.2  patch_embed_still(frame_rows (N, C*P*P), weight (D, C, 2, P, P)) -> (N, D)
    02.3  quiz: parameters of the patch embedding with 16-pixel patches
    02.4  quiz: FLOPs of the patch embedding on a 1080 x 1920 frame

Answers are compared with the library's `PatchEmbed` carrying the same seeded weight, on several
widths, patch sizes, channel counts and frame depths, so that a kernel flattened in the wrong
order (for example (t c h w) instead of the row's (c t h w)) cannot pass.
"""

from __future__ import annotations

import torch
from einops import repeat

from ..config import Qwen25VLConfig
from ..params import count_parameters, vision_flops
from ..preprocess import smart_resize
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


@exercise("02.3", "patch embedding parameters with 16-pixel patches")
def _(answer) -> str:
    config = Qwen25VLConfig.preset("3b").replace(vision_config={"patch_size": 16})
    assert_answer(answer, count_parameters(config)["patch_embed"], "parameters",
                  hint="hidden_size x channels x frames x patch x patch, no bias")
    return "exact"


@exercise("02.4", "patch embedding FLOPs on a 1080 x 1920 frame")
def _(answer) -> str:
    h, w = smart_resize(1080, 1920)
    _, parts = vision_flops(Qwen25VLConfig.preset("3b"), [[1, h // 14, w // 14]])
    assert_answer(answer, parts["patch_embed"], "FLOPs", hint="2 x patches x 1176 x 1280 (2 FLOPs per multiply-add)")
    return "exact"
