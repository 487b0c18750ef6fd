"""Chapters 00-03's exercises: every solution passes its check; plausible wrong answers are refused,
with a message that names what differs (and never the expected value)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

import qvl_minimal as qvl
from qvl_minimal.labs import check
from qvl_minimal.layers import rotate_half
from qvl_minimal.preprocess import (VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, frame_pixel_budget, patchify,
                                   sample_frame_indices, smart_resize)
from qvl_minimal.vision import patch_positions


# ----------------------------------------------------------------------------- solutions
def vision_params(v, merger_bias=True):
    h, i, wide = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size**2
    patch_embed = v.in_chans * v.temporal_patch_size * v.patch_size**2 * h
    block = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * (h * i + i) + (i * h + h)
    merger = h + wide * wide + wide * v.out_hidden_size + (wide + v.out_hidden_size) * merger_bias
    return patch_embed + v.depth * block + merger


def decoder_layer_params(t):
    d, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    return (d * q + q) + 2 * (d * kv + kv) + q * d + 3 * d * t.intermediate_size + 2 * d


def text_params(t, count_tied_head=False):
    head = t.vocab_size * t.hidden_size * (count_tied_head or not t.tie_word_embeddings)
    embed = t.vocab_size * t.hidden_size
    return embed + t.num_hidden_layers * decoder_layer_params(t) + t.hidden_size + head


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


def video_tokens(total_frames, video_fps, height, width, budget=True):
    kept, _ = sample_frame_indices(total_frames, video_fps)
    top = frame_pixel_budget(len(kept)) if budget else VIDEO_MAX_PIXELS
    h, w = smart_resize(height, width, min_pixels=VIDEO_MIN_PIXELS, max_pixels=top)
    return len(kept) // 2 * (h // 28) * (w // 28)


def changed_by_white(rgba):
    return (rgba[..., 3] < 255) & (rgba[..., :3] != 255).any(axis=-1)


def patch_embed_linear(pixel_values, weight, order="d c t h w -> d (c t h w)"):
    return pixel_values @ rearrange(weight, order).T


def patch_embed_still(frame_rows, weight):
    return frame_rows @ rearrange(weight.sum(dim=2), "d c h w -> d (c h w)").T


def fold_normalisation(weight, mean, std, bias=True):
    scaled = weight / std[None, :, None, None, None]  # (D, C, T, P, P): one 1/std per channel
    b = -(scaled * mean[None, :, None, None, None]).sum(dim=(1, 2, 3, 4))  # (D,)
    return rearrange(scaled, "d c t h w -> d (c t h w)"), b * bias


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


def offset_score(q, k, d_row, d_col, sign=1):
    inv = 1.0 / 10000 ** (torch.arange(0, q.shape[-1] // 2, 2, dtype=torch.float64) / (q.shape[-1] // 2))
    angles = torch.cat([d_row * inv, d_col * inv]).repeat(2) * sign  # (head_dim,)
    return q @ (k * angles.cos() + rotate_half(k) * angles.sin())


SOLUTIONS = {
    "00.1": vision_params,
    "00.2": decoder_layer_params,
    "00.3": visual_tokens,
    "00.4": text_params,
    "00.5": (6 * 11, 84 - 6 * 11),  # 720 x 1280 -> 728 x 1288: 26 x 46 merge units, 7 x 12 windows
    "00.6": 546,  # 546 / 28 = 19.5 rounds to the even 20: 400 tokens > 378
    "01.1": smart_resize_mine,
    "01.2": patch_rows,
    "01.3": {(14, 2800): 29, (350, 994): 432, (6000, 4000): 16224},
    "01.4": 3598,
    "01.5": video_tokens,
    "01.6": changed_by_white,
    "01.7": unpatch,
    "02.1": patch_embed_linear,
    "02.2": patch_embed_still,
    "02.3": fold_normalisation,
    "02.4": 14 * 14 + 1,  # 196 free pixel values, plus the constant the normalisation adds
    "03.1": positions,
    "03.2": rotary_angles,
    "03.3": rotate,
    "03.4": [19, 25],  # 19 - 6 pi = 0.150, 25 - 8 pi = -0.133
    "03.5": offset_score,
    "03.6": lambda g: torch.cat([torch.zeros(1, dtype=torch.long), (g[:, 1] * g[:, 2]).repeat_interleave(g[:, 0]).cumsum(0)]),
}


@pytest.mark.parametrize("exercise_id", sorted(SOLUTIONS))
def test_solution_passes(exercise_id, capsys):
    check(exercise_id, SOLUTIONS[exercise_id])
    assert capsys.readouterr().out.startswith(f"PASS {exercise_id} ")


WRONG = {  # id: (a plausible wrong answer, words the message must contain, the right value it must not show)
    "00.1": (lambda v: vision_params(v, merger_bias=False), "width 1280, MLP 3420, depth 32", "668684288"),
    "00.2": (lambda t: decoder_layer_params(t) + t.hidden_size, "16 query / 2 KV heads", "77076992"),  # o_proj bias
    "00.3": (lambda h, w: round(h / 28) * round(w / 28), "20 x 20 px", None),  # forgets min_pixels
    "00.4": (lambda t: text_params(t, count_tied_head=True), "head tied", "3085938688"),
    "00.5": ((7 * 12, 0), "full windows", "66"),  # every window counted as full
    "00.6": (547, "side (px): 547 is not right", "546"),  # a half rounded down
    "01.1": (lambda h, w, **kw: smart_resize_mine(h, w, **kw, rounding=lambda x: math.floor(x + 0.5)),
             "smart_resize(70, 700) [a side at an exact half", "(56, 700)"),  # round half up
    "01.2": (lambda f: patch_rows(f, "(gt t) c (gh ph) (gw pw) -> (gt gh gw) (c t ph pw)"),
             "frames (2, 3, 56, 56)", None),  # raster order, no merge units
    "01.3": ({(14, 2800): 100, (350, 994): 432, (6000, 4000): 16224}, "14 x 2800 px", "29"),  # no min branch
    "01.4": (3584, "side (px): 3584 is not right", "3598"),
    "01.5": (lambda *clip: video_tokens(*clip, budget=False), "6000 frames at 30.0 fps", "115200"),
    "01.7": (lambda pv, g: rearrange(pv, "(gt uh uw mh mw) (c t ph pw) -> (gt t) c (mh uh ph) (mw uw pw)", gt=1,
                                     uh=g[0, 1].item() // 2, uw=g[0, 2].item() // 2, mh=2, mw=2, c=3, t=2, ph=14, pw=14),
             "grid_thw [[1, 4, 4]]", None),  # unit and in-unit axes swapped
    "02.1": (lambda pv, w: patch_embed_linear(pv, w, "d c t h w -> d (t c h w)"), "weight (1280, 3, 2, 14, 14)", None),
    "02.2": (lambda fr, w: fr @ rearrange(w[:, :, 0], "d c h w -> d (c h w)").T, "one-frame rows", None),
    "02.3": (lambda w, m, s: fold_normalisation(w, m, s, bias=False), "raw rows through your (W, b)", None),
    "02.4": (14 * 14, "rank: 196 is not right", "197"),  # forgets the constant
    "03.1": (lambda g: positions(g, unit_order=False), "grid_thw [[1, 4, 6]]", None),  # raster order
    "03.2": (lambda g, d: rotary_angles(g, d, interleave=True), "head_dim 80", None),  # row/col interleaved
    "03.3": (rotate_pairs, "x (5, 2, 80) float32", None),
    "03.4": ([6, 13, 19, 25, 31, 38], "row offsets", "[19, 25]"),  # every near-multiple of 2 pi
    "03.5": (lambda q, k, r, c: offset_score(q, k, r, c, sign=-1), "head_dim 80, offset", None),  # k by -offset
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
        check("01.3", (29, 432, 16224))
    with pytest.raises(AssertionError, match="pair"):
        check("00.5", 84)
    with pytest.raises(AssertionError, match="expected shape"):
        check("02.3", lambda w, m, s: (w.flatten(1), torch.zeros(1)))


def test_video_tokens_agree_with_preprocess_video():
    """The checker's count (frames kept, budget, smart_resize) is the number of rows preprocess_video gives / 4."""
    for total, fps, h, w in [(90, 30.0, 60, 80), (48, 24.0, 20, 30), (7, 24.0, 30, 40)]:
        clip = np.zeros((total, h, w, 3), dtype=np.uint8)
        values, _, _ = qvl.preprocess_video(clip, video_fps=fps)
        assert values.shape[0] // 4 == video_tokens(total, fps, h, w)


def test_grayscale_rank_is_what_a_grayscale_photo_gives():
    """02.4's expected rank (random pixels) equals the rank the photo's preprocessing gives a grayscale image."""
    from qvl_minimal.labs.ch02 import _grayscale_rank

    rows, _ = qvl.preprocess_image(qvl.sample_photo().convert("L").resize((252, 280)))  # (360, 1176)
    weight = torch.randn(1280, 1176, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rank = int(torch.linalg.matrix_rank(rows.double() @ weight.T, rtol=1e-5))  # float32 rows: 1e-7 noise
    finally:
        torch.set_num_threads(threads)
    assert rank == _grayscale_rank() == 197


def test_quiz_answers_are_not_in_the_handouts(tmp_path):
    """A quiz of chapters 00-03 is a prediction: its value appears nowhere in the student's handout."""
    import nbformat

    from qvl_minimal.labs.core import EXERCISES, load_chapter
    from qvl_minimal.labs.handouts import write_handouts

    chapters = ("00", "01", "02", "03")
    write_handouts(Path(__file__).resolve().parent.parent / "chapters", tmp_path, only=list(chapters))
    quizzes = 0
    for chapter in chapters:
        load_chapter(chapter)
        (path,) = tmp_path.glob(f"{chapter}_*.ipynb")
        text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        for ex in (e for k, e in EXERCISES.items() if k.startswith(chapter) and e.expected):
            value = ex.expected()
            values = list(value.values()) if isinstance(value, dict) else [value]
            shown = [str(value)] + [str(v) for v in values] + [f"{v:,}" for v in values if isinstance(v, int)]
            for s in shown:
                if len(s) >= 3:  # "4" or "29" appear in any chapter; three characters and up are the answer's
                    assert s not in text, f"{ex.id}: the answer {s!r} is printed in the handout {path.name}"
            quizzes += 1
    assert quizzes == 6


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        check("03.1", stub)
