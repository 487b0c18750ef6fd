"""Chapter 12's exercises: where the memory and the compute go, against the library.

    12.1  kv_cache_bytes_mine(text_config, tokens, bytes_per_value, gqa) -> int
          bytes of keys and values for `tokens` tokens, all layers; gqa=False: one KV head per query head
    12.2  vision_attention_flops_mine(vision_config, grid_thw) -> (windowed, full)
          FLOPs of the attention products (scores and weighted sums) in the windowed blocks and in
          the full-attention blocks, with the book's definition (params.vision_flops)

Checked on the released configs and modified ones (other head counts, depths, window layouts) and
on grids with cut windows, several images and video time steps.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import Qwen25VLConfig
from ..figures.decoder import kv_cache_bytes
from ..params import vision_flops
from .core import assert_answer, exercise

_SIZES = ("3b", "7b", "72b", "tiny")


@exercise("12.1", "KV-cache bytes with and without GQA")
def _(kv_cache_bytes_mine) -> str:
    cases = 0
    for name in _SIZES:
        tc = Qwen25VLConfig.preset(name).text_config
        for tokens, nbytes in ((1, 2), (403, 2), (32768, 4)):
            for gqa in (True, False):
                expected = kv_cache_bytes(tc, tokens, nbytes, kv_heads=None if gqa else tc.num_attention_heads)
                assert_answer(kv_cache_bytes_mine(tc, tokens, nbytes, gqa), expected,
                              f"{name}, {tokens} tokens, {nbytes} bytes per value, gqa={gqa}",
                              hint="keys AND values, every layer, only the stored heads")
                cases += 1
    return f"{cases} cases on 4 configs, exact"


def _vision_cases():
    base = Qwen25VLConfig.preset("3b").vision_config
    grids = ([[1, 36, 42]], [[1, 8, 8]], [[1, 10, 14]], [[1, 52, 92]], [[2, 12, 20]], [[1, 16, 16], [3, 6, 10]])
    configs = (base, replace(base, depth=6, fullatt_block_indexes=(2, 5)),
               Qwen25VLConfig.preset("tiny").vision_config)
    return [(c, g) for c in configs for g in grids]


@exercise("12.2", "vision attention FLOPs, windowed and full")
def _(vision_attention_flops_mine) -> str:
    cases = _vision_cases()
    for config, grid in cases:
        _, parts = vision_flops(config, grid)
        mine = vision_attention_flops_mine(config, grid)
        what = f"depth {config.depth}, width {config.hidden_size}, grid {grid}"
        assert_answer(tuple(int(x) for x in mine), (parts["window_attention"], parts["full_attention"]), what,
                      hint="4 * width * L^2 per segment, summed over the segments and over the blocks of each kind")
    return f"{len(cases)} grids x configs incl. cut windows and videos, exact"
