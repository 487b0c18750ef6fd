"""Chapters 00-03's exercises: every solution passes its check; plausible wrong answers are refused,
with a message that names what differs (and never the expected value)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from einops import rearrange

import qvl_minimal as qvl
from qvl_minimal.labs import check
from qvl_minimal.layers import rotate_half
from qvl_minimal.preprocess import patchify, smart_resize
from qvl_minimal.vision import patch_positions


# ----------------------------------------------------------------------------- solutions
def vision_block_params(v):
    h, i = v.hidden_size, v.intermediate_size
    return 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * (h * i + i) + (i * h + h)


def decoder_layer_params(t):
    d, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    return (d * q + q) + 2 * (d * kv + kv) + q * d + 3 * d * t.intermediate_size + 2 * d


def visual_tokens(height, width):
    h, w = smart_resize(height, width)
    return (h // 28) * (w // 28)


def smart_resize_mine(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28,
                      rounding=round):
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio over 200:1")
    h, w = rounding(height / factor) * factor, rounding(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def patch_rows(frames, pattern="(gt t) c (uh mh ph) (uw mw pw) -> (gt uh uw mh mw) (c t ph pw)"):
    if frames.shape[0] % 2:
        frames = torch.cat([frames, frames[-1:]])
    sizes = {k: v for k, v in dict(t=2, mh=2, mw=2, ph=14, pw=14).items() if f" {k}" in pattern}
    return rearrange(frames, pattern, **sizes)


def unpatch(pixel_values, grid_thw):
    t, h, w = grid_thw[0].tolist()
    return rearrange(pixel_values, "(gt uh uw mh mw) (c t ph pw) -> (gt t) c (uh mh ph) (uw mw pw)",
                     gt=t, uh=h // 2, uw=w // 2, mh=2, mw=2, c=3, t=2, ph=14, pw=14)


def changed_by_white(rgba):
    return (rgba[..., 3] < 255) & (rgba[..., :3] != 255).any(axis=-1)


def patch_embed_linear(pixel_values, weight, order="d c t h w -> d (c t h w)"):
    return pixel_values @ rearrange(weight, order).T


def patch_embed_still(frame_rows, weight):
    return frame_rows @ rearrange(weight.sum(dim=2), "d c h w -> d (c h w)").T


def positions(grid_thw, unit_order=True):
    out = []
    for t, h, w in torch.as_tensor(grid_thw).tolist():
        pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), dim=-1)  # (h, w, 2)
        pattern = "(hb a) (wb b) two -> (hb wb a b) two" if unit_order else "(hb a) (wb b) two -> (hb a wb b) two"
        out.append(rearrange(pos, pattern, a=2, b=2).repeat(t, 1))
    return torch.cat(out)


def rotary_angles(grid_thw, head_dim, interleave=False):
    freqs = 1.0 / 10000 ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float) / (head_dim // 2))
    pos = patch_positions(grid_thw).float()
    angles = pos[:, :, None] * freqs  # (N, 2, head_dim // 4)
    return rearrange(angles, "n two f -> n (f two)" if interleave else "n two f -> n (two f)")


def rotate(x, angles):
    emb = torch.cat([angles, angles], dim=-1)[:, None, :]
    xf = x.float()
    return (xf * emb.cos() + rotate_half(xf) * emb.sin()).to(x.dtype)


def rotate_pairs(x, angles):  # the GPT-J convention: pairs (2i, 2i + 1) instead of (i, i + d/2)
    xf = x.float()
    x1, x2, c, s = xf[..., 0::2], xf[..., 1::2], angles.cos()[:, None], angles.sin()[:, None]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).to(x.dtype)


SOLUTIONS = {
    "00.1": vision_block_params,
    "00.2": decoder_layer_params,
    "00.3": visual_tokens,
    "00.4": qvl.count_parameters(qvl.Qwen25VLConfig.preset("7b"))["total"] * 2,
    "00.5": qvl.count_parameters(qvl.Qwen25VLConfig.preset("3b").replace(text_config={"tie_word_embeddings": False}))["total"],
    "00.6": 151936 - 151643 - 22,
    "01.1": smart_resize_mine,
    "01.2": patch_rows,
    "01.3": visual_tokens(1080, 1920),
    "01.4": 3598,
    "01.5": {"4.5 s at 30 fps": (8, 4, 1.125), "1.5 s at 24 fps": (4, 2, 0.75)},
    "01.6": changed_by_white,
    "01.7": unpatch,
    "02.1": patch_embed_linear,
    "02.2": patch_embed_still,
    "02.3": 1280 * 3 * 2 * 16 * 16,
    "02.4": 2 * 78 * 138 * 1176 * 1280,
    "03.1": positions,
    "03.2": rotary_angles,
    "03.3": rotate,
    "03.4": list(range(0, 20)) + list(range(40, 60)),
    "03.5": lambda h, w: (2 * h - 1) * (2 * w - 1),
    "03.6": lambda g: torch.cat([torch.zeros(1, dtype=torch.long), (g[:, 1] * g[:, 2]).repeat_interleave(g[:, 0]).cumsum(0)]),
}


@pytest.mark.parametrize("exercise_id", sorted(SOLUTIONS))
def test_solution_passes(exercise_id, capsys):
    check(exercise_id, SOLUTIONS[exercise_id])
    assert capsys.readouterr().out.startswith(f"PASS {exercise_id} ")


WRONG = {  # id: (a plausible wrong answer, words the message must contain, the right value it must not show)
    "00.1": (lambda v: 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size, "block of width 1280", "19702200"),
    "00.2": (lambda t: decoder_layer_params(t) + t.hidden_size, "16 query / 2 KV heads", "77076992"),  # o_proj bias
    "00.3": (lambda h, w: round(h / 28) * round(w / 28), "20 x 20 px", None),  # forgets min_pixels
    "01.1": (lambda h, w, **kw: smart_resize_mine(h, w, **kw, rounding=lambda x: math.floor(x + 0.5)),
             "smart_resize(70, 700) [a side at an exact half", "(56, 700)"),  # round half up
    "01.2": (lambda f: patch_rows(f, "(gt t) c (gh ph) (gw pw) -> (gt gh gw) (c t ph pw)"),
             "frames (2, 3, 56, 56)", None),  # raster order, no merge units
    "01.4": (3584, "side (px): 3584 is not right", "3598"),
    "01.7": (lambda pv, g: rearrange(pv, "(gt uh uw mh mw) (c t ph pw) -> (gt t) c (mh uh ph) (mw uw pw)", gt=1,
                                     uh=g[0, 1].item() // 2, uw=g[0, 2].item() // 2, mh=2, mw=2, c=3, t=2, ph=14, pw=14),
             "grid_thw [[1, 4, 4]]", None),  # unit and in-unit axes swapped
    "02.1": (lambda pv, w: patch_embed_linear(pv, w, "d c t h w -> d (t c h w)"), "weight (1280, 3, 2, 14, 14)", None),
    "02.2": (lambda fr, w: fr @ rearrange(w[:, :, 0], "d c h w -> d (c h w)").T, "one-frame rows", None),
    "02.4": (2 * 10764 * 1176 * 1280 // 2, "FLOPs", "32405667840"),  # counts multiply-adds, not FLOPs
    "03.1": (lambda g: positions(g, unit_order=False), "grid_thw [[1, 4, 6]]", None),  # raster order
    "03.2": (lambda g, d: rotary_angles(g, d, interleave=True), "head_dim 80", None),  # row/col interleaved
    "03.3": (rotate_pairs, "x (5, 2, 80) float32", None),
    "03.5": (lambda h, w: (2 * h + 1) * (2 * w + 1), "a 2 x 2 grid", "9 "),  # off by one
    "03.6": (lambda g: torch.cat([torch.zeros(1, dtype=torch.long), (g.prod(-1)).cumsum(0)]),  # one segment per image
             "grid_thw [[3, 8, 12]]", None),
}


@pytest.mark.parametrize("exercise_id", sorted(WRONG))
def test_wrong_answer_is_refused(exercise_id):
    wrong, names, secret = WRONG[exercise_id]
    with pytest.raises(AssertionError) as err:
        check(exercise_id, wrong)
    message = str(err.value)
    assert message.startswith(exercise_id) and names in message, message
    assert any(word in message for word in ("differ", "is not right", "shape")), message
    if secret is not None:
        assert secret not in message.replace(",", "").replace("_", ""), message


def test_refusing_200_to_1_is_required():
    def no_limit(h, w, **kw):
        return smart_resize(min(h, 28 * h), w, **kw) if max(h, w) / min(h, w) <= 200 else (28, 28 * 200)

    with pytest.raises(AssertionError, match="must raise ValueError"):
        check("01.1", no_limit)


def test_quiz_with_the_wrong_shape_says_what_to_give():
    with pytest.raises(AssertionError, match="keys"):
        check("01.5", (8, 4, 1.125))


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        check("03.1", stub)
