"""Chapter 09's exercises: the KV cache, its mask, and two questions on decoding.

    09.1  KVCacheMine(num_layers): .length, .append(layer, k, v) -> (all keys, all values)
    09.2  cached_step_mask(attention_mask (B, T), past, length) -> (B, 1, L, T) booleans
    09.3  delta_by_hand(gh, gw) -> delta of a prompt with one image of gh x gw merged tokens
    09.4  token_passes(L, n, cached) -> token-layer passes per layer to generate n tokens after L

09.1 is compared with the library's `KVCache`, alone and inside the library's `TextModel` (a prefill,
then single tokens and a chunk of 3), batch 1 and 2; 09.2 with `attention_mask_4d` (whose None,
"plain causal", is spelled out as booleans); 09.3 with `get_rope_index`; 09.4 with a count of the
tokens each step feeds.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..positions import get_rope_index
from ..text import KVCache, TextModel, attention_mask_4d
from .core import assert_answer, assert_tensor_matches, exercise


def _tiny_text_model(seed: int = 0) -> TextModel:
    config = Qwen25VLConfig.preset("tiny").replace(text_config={"vocab_size": 512})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextModel(config.text_config).eval()


@exercise("09.1", "the KV cache")
def _(KVCacheMine) -> str:
    # 1. alone: appends of several lengths, two layers, batch 2
    mine, lib = KVCacheMine(2), KVCache(2)
    assert_answer(mine.length, 0, "length of an empty cache")
    for step, new in enumerate([5, 1, 1, 3]):
        for layer in range(2):
            k, v = torch.randn(2, 2, new, 8), torch.randn(2, 2, new, 8)  # (B, G, new, hd)
            got, want = mine.append(layer, k.clone(), v.clone()), lib.append(layer, k, v)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise AssertionError(f"append must return (all keys, all values), got {type(got).__name__}")
            assert_tensor_matches(got[0], want[0], f"keys returned by append (layer {layer}, after append {step + 1} of {new} tokens)")
            assert_tensor_matches(got[1], want[1], f"values returned by append (layer {layer}, after append {step + 1})")
        assert_answer(mine.length, lib.length, f"length after {step + 1} appends (5, 1, 1, 3 tokens)")
    # 2. inside the library's decoder: prefill, two single tokens, a chunk of 3; batch 1 and 2
    model = _tiny_text_model()
    D = model.config.hidden_size
    for batch in (1, 2):
        mine, lib = KVCacheMine(len(model.layers)), KVCache(len(model.layers))
        seen = 0
        for new in (6, 1, 1, 3):
            x = torch.randn(batch, new, D)  # (B, new, D)
            ids = torch.arange(seen, seen + new).expand(3, batch, new)  # (3, B, new): text positions
            with torch.no_grad():
                got, want = model(x, ids, cache=mine), model(x, ids, cache=lib)
            seen += new
            assert_tensor_matches(got, want, f"TextModel output with your cache (batch {batch}, tokens {seen - new}..{seen - 1})",
                                  atol=1e-5, rtol=1e-5)
        assert_answer(mine.length, seen, f"length after the decoder ran on {seen} tokens (batch {batch})")
    return "4 appends of 5/1/1/3 tokens, and the tiny decoder with your cache: batch 1 and 2, equal"


def _spelled_out(attention_mask, past: int, length: int) -> torch.Tensor:
    """attention_mask_4d, with its None (plain causal) and (L, T) forms written as (B, 1, L, T) booleans."""
    B, T = attention_mask.shape
    lib = attention_mask_4d(attention_mask, past, length)
    if lib is None:
        lib = torch.arange(T)[None, :] <= torch.arange(past, T)[:, None]  # (L, T): causal
    return lib.expand(B, 1, length, T) if lib.ndim == 2 else lib


_MASK_CASES = [  # (padding per row, past, length, what)
    ([0], 0, 6, "a prefill without padding"),
    ([0, 3], 0, 7, "a prefill, row 1 left-padded by 3"),
    ([0, 3], 7, 1, "one new token after 7 cached, row 1 padded by 3"),
    ([2, 0, 5], 8, 1, "one new token, batch of 3"),
    ([0, 2], 5, 3, "a chunk of 3 new tokens after 5 cached"),
    ([4], 4, 2, "a row that is padding up to the cache's end"),
]


@exercise("09.2", "the mask for cached steps")
def _(cached_step_mask) -> str:
    for pads, past, length, what in _MASK_CASES:
        T = past + length
        attention_mask = torch.ones(len(pads), T, dtype=torch.long)
        for row, pad in enumerate(pads):
            attention_mask[row, :pad] = 0
        mine = cached_step_mask(attention_mask.clone(), past, length)
        assert_tensor_matches(mine, _spelled_out(attention_mask, past, length),
                              f"mask for {what} (past={past}, length={length}, (B, 1, L, T) booleans)")
    return f"{len(_MASK_CASES)} cases: prefill, single tokens, a chunk, left padding; exact"


@exercise("09.3", "delta by hand")
def _(delta_by_hand) -> str:
    config = Qwen25VLConfig.preset("tiny")
    for gh, gw in [(21, 18), (4, 6), (1, 1), (3, 17), (16, 2)]:
        ids = torch.tensor([[11, 12, config.vision_start_token_id] + [config.image_token_id] * (gh * gw)
                            + [config.vision_end_token_id, 13, 14]])  # (1, L)
        _, delta = get_rope_index(config, ids, image_grid_thw=torch.tensor([[1, 2 * gh, 2 * gw]]))
        assert_answer(delta_by_hand(gh, gw), int(delta), f"delta_by_hand({gh}, {gw})",
                      hint="the image spends gh * gw positions of the sequence; how many ids does it spend?")
    return "5 merged grids incl. 1 x 1 and wide/tall ones, equal to get_rope_index"


@exercise("09.4", "token passes with and without the cache")
def _(token_passes) -> str:
    for L, n in [(403, 24), (10, 1), (1, 5), (100, 50)]:
        fed_without = sum(L + i for i in range(n))  # step i runs the whole sequence of L + i tokens
        fed_with = L + (n - 1)  # the prompt once, then each new token but the last is fed back once
        assert_answer(token_passes(L, n, cached=False), fed_without, f"token_passes({L}, {n}, cached=False)",
                      hint="without the cache, step i runs every token of the sequence so far")
        assert_answer(token_passes(L, n, cached=True), fed_with, f"token_passes({L}, {n}, cached=True)",
                      hint="the prompt once; then every new token is fed once, except the last (nobody reads it)")
    return "4 (L, n) pairs, both ways"
