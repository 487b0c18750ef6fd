"""Chapters 08-11's exercises: every solution passes its check; plausible wrong answers are refused,
with a message that names what differs (and never the expected value)."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from qvl_minimal.labs import check
from qvl_minimal.layers import apply_rotary
from qvl_minimal.vision import window_index


# ----------------------------------------------------------------------------- chapter 08
def rms_norm(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def attention_mine(x, W, cos, sin, mask, tc, tile=False):
    H, G, hd = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    q = rearrange(F.linear(x, W["self_attn.q_proj.weight"], W["self_attn.q_proj.bias"]), "b l (h d) -> b h l d", d=hd)
    k = rearrange(F.linear(x, W["self_attn.k_proj.weight"], W["self_attn.k_proj.bias"]), "b l (g d) -> b g l d", d=hd)
    v = rearrange(F.linear(x, W["self_attn.v_proj.weight"], W["self_attn.v_proj.bias"]), "b l (g d) -> b g l d", d=hd)
    q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
    if tile:  # the plausible mistake: Tensor.repeat tiles the KV heads (0, 1, 0, 1, ...)
        k, v = k.repeat(1, H // G, 1, 1), v.repeat(1, H // G, 1, 1)
    else:  # this model: each KV head repeated in place (= repeat_interleave)
        k, v = (repeat(t, "b g t d -> b (g r) t d", r=H // G) for t in (k, v))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return F.linear(rearrange(weights @ v, "b h l d -> b l (h d)"), W["self_attn.o_proj.weight"])


def swiglu(x, W):
    gate, up = F.linear(x, W["mlp.gate_proj.weight"]), F.linear(x, W["mlp.up_proj.weight"])
    return F.linear(F.silu(gate) * up, W["mlp.down_proj.weight"])


def decoder_layer_mine(h, W, cos, sin, mask, tc, post_norm=False):
    if post_norm:  # the plausible mistake: normalise the stream itself instead of the sub-block's input
        h = rms_norm(h + attention_mine(h, W, cos, sin, mask, tc), W["input_layernorm.weight"], tc.rms_norm_eps)
        return rms_norm(h + swiglu(h, W), W["post_attention_layernorm.weight"], tc.rms_norm_eps)
    h = h + attention_mine(rms_norm(h, W["input_layernorm.weight"], tc.rms_norm_eps), W, cos, sin, mask, tc)
    return h + swiglu(rms_norm(h, W["post_attention_layernorm.weight"], tc.rms_norm_eps), W)


def mha_weights_mine(W, tc, tile=False):
    H, G, hd = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    out = dict(W)
    for name in ("k_proj", "v_proj"):
        w = rearrange(W[f"self_attn.{name}.weight"], "(g d) c -> g d c", d=hd)
        b = rearrange(W[f"self_attn.{name}.bias"], "(g d) -> g d", d=hd)
        if tile:
            w, b = w.repeat(H // G, 1, 1), b.repeat(H // G, 1)
        else:
            w, b = repeat(w, "g d c -> (g r) d c", r=H // G), repeat(b, "g d -> (g r) d", r=H // G)
        out[f"self_attn.{name}.weight"] = rearrange(w, "h d c -> (h d) c")
        out[f"self_attn.{name}.bias"] = rearrange(b, "h d -> (h d)")
    return out


# ----------------------------------------------------------------------------- chapter 09
class KVCacheMine:
    def __init__(self, num_layers):
        self.keys, self.values = [None] * num_layers, [None] * num_layers

    @property
    def length(self):
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def append(self, layer, k, v):
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class KVCacheNewOnly(KVCacheMine):
    """The plausible mistake: stores everything but hands attention only the new keys and values."""

    def append(self, layer, k, v):
        super().append(layer, k, v)
        return k, v


def cached_step_mask(attention_mask, past, length, see_self=True):
    T = past + length
    query, key = torch.arange(past, T)[:, None], torch.arange(T)[None, :]
    allowed = (key <= query) & attention_mask.bool()[:, None, :]
    if see_self:
        allowed = allowed | (key == query)
    return rearrange(allowed, "b l t -> b 1 l t")


def delta_by_hand(gh, gw):
    return max(gh, gw) - gh * gw


def token_passes(L, n, cached):
    return L + (n - 1) if cached else sum(L + i for i in range(n))


# ----------------------------------------------------------------------------- chapter 10
def sample_frames_mine(total, video_fps, fps=2.0, round_even=True):
    wanted = total / video_fps * fps
    hi = math.floor(min(768, total) / 2) * 2
    count = min(max(wanted, 4), hi, total)
    count = math.floor(count / 2) * 2 if round_even else math.floor(count)
    return torch.linspace(0, total - 1, count).round().long().tolist(), count / total * video_fps


def swap_frames_mine(rows):
    pair = rearrange(rows, "n (c t hw) -> t n c hw", c=3, t=2)
    return rearrange(pair.flip(0), "t n c hw -> n (c t hw)")


# ----------------------------------------------------------------------------- chapter 11
def read_header_mine(path, absolute=False, offset_without_length=False):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    shift = 8 + n if absolute else 0  # the plausible mistake: offsets counted from the start of the file
    entries = {k: (v["dtype"], tuple(v["shape"]), *(o + shift for o in v["data_offsets"])) for k, v in header.items()}
    return entries, (n if offset_without_length else 8 + n)


def to_checkpoint_keys_mine(state_dict, tied, keep_head=False):
    out = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight" and tied and not keep_head:
            continue
        for old, new in (("model.visual.", "visual."), ("model.language_model.", "model.")):
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        out[key] = value
    return out


def to_raster_mine(merged, grid_thw, vc, forward=False):
    index, _ = window_index(grid_thw, vc)
    return merged[index] if forward else merged[torch.argsort(index)]


SOLUTIONS = {
    "08.1": attention_mine, "08.2": decoder_layer_mine, "08.3": (5, 16), "08.4": mha_weights_mine,
    "09.1": KVCacheMine, "09.2": cached_step_mask, "09.3": delta_by_hand, "09.4": token_passes,
    "10.1": sample_frames_mine, "10.2": (768, 3590, 3064), "10.3": swap_frames_mine,
    "11.1": read_header_mine, "11.2": to_checkpoint_keys_mine, "11.3": to_raster_mine,
}


@pytest.mark.parametrize("exercise_id", sorted(SOLUTIONS))
def test_solution_passes(exercise_id, capsys):
    check(exercise_id, SOLUTIONS[exercise_id])
    assert capsys.readouterr().out.startswith(f"PASS {exercise_id} ")


WRONG = {  # id: (a plausible wrong answer, words the message must contain)
    "08.1": (lambda *a: attention_mine(*a, tile=True), ["16 query heads over 2 KV heads", "values differ"]),
    "08.2": (lambda *a: decoder_layer_mine(*a, post_norm=True), ["decoder layer", "values differ"]),
    "08.3": ((5, 5), ["after two", "not right"]),
    "08.4": (lambda W, tc: mha_weights_mine(W, tc, tile=True), ["multi-head attention with your weights", "differ"]),
    "09.1": (KVCacheNewOnly, ["keys returned by append", "shape"]),
    "09.2": (lambda m, p, n: cached_step_mask(m, p, n, see_self=False), ["row 1 left-padded by 3", "values differ"]),
    "09.3": (lambda gh, gw: min(gh, gw) - gh * gw, ["delta_by_hand(21, 18)", "not right"]),
    "10.1": (lambda t, v, fps=2.0: sample_frames_mine(t, v, fps, round_even=False), ["number of frames kept", "7 frames wanted"]),
    "10.2": ((768, 3590, 3590), ["4.57.6's rule", "not right"]),
    "10.3": (lambda rows: rows, ["two frames of each step swapped", "values differ"]),
    "11.1": (lambda p: read_header_mine(p, absolute=True), ["entry", "data_offsets relative to the start of the data"]),
    "11.2": (lambda sd, tied: to_checkpoint_keys_mine(sd, tied, keep_head=True), ["a tied model", "lm_head.weight"]),
    "11.3": (lambda m, g, vc: to_raster_mine(m, g, vc, forward=True), ["grid [1, 42, 36]", "values differ"]),
}


@pytest.mark.parametrize("exercise_id", sorted(WRONG))
def test_wrong_answer_is_refused_by_name(exercise_id):
    answer, words = WRONG[exercise_id]
    with pytest.raises(AssertionError) as refused:
        check(exercise_id, answer)
    message = str(refused.value)
    assert message.startswith(f"{exercise_id} ")
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_10_2_library_rule_for_both_is_refused():
    with pytest.raises(AssertionError, match="last time id with the library's rule"):
        check("10.2", (768, 3064, 3064))


def test_header_reader_offset_off_by_eight_is_named():
    with pytest.raises(AssertionError, match="offset of the data"):
        check("11.1", lambda p: read_header_mine(p, offset_without_length=True))
