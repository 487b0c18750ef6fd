"""Chapter 00's exercises: parameter counts from the config, visual tokens and windows of any image.

    00.1  vision_params(vision_config) -> int            the whole vision side: patch embedding, blocks, merger
    00.2  decoder_layer_params(text_config) -> int       one decoder layer, by formula
    00.3  visual_tokens(height, width) -> int             <|image_pad|> tokens of an image of any size
    00.4  text_params(text_config) -> int                 the whole language side, tied head or not
    00.5  quiz: full and edge attention windows of a 720 x 1280 frame
    00.6  quiz: the smallest square image that costs more tokens than the photo

Each count is checked against the library's own modules built on the meta device (shapes only, no
memory), on the released sizes and on altered configs (other widths, depths, patch and merge sizes),
so that a formula tuned to the 3B numbers does not pass.
"""

from __future__ import annotations

import math

import torch

from ..config import Qwen25VLConfig
from ..preprocess import smart_resize
from .core import assert_answer, exercise

_SIZES = ("3b", "7b", "72b")
_WINDOW_UNITS = 4  # a window is 112 px = 8 patches = 4 merge units on a side


def _meta_numel(module_factory, prefixes: tuple[str, ...] = ("",)) -> int:
    """Parameters of the module built on the meta device whose names start with one of `prefixes`
    (a tied weight counts once: named_parameters() lists it once)."""
    with torch.device("meta"):
        module = module_factory()
    return sum(p.numel() for name, p in module.named_parameters() if name.startswith(prefixes))


def _vision_configs():
    """The released vision config and variants: width, MLP width, heads, depth, patch, frames, merge."""
    base = Qwen25VLConfig.preset("3b")
    variants = [{}, {"hidden_size": 160, "num_heads": 2, "intermediate_size": 64, "depth": 3,
                     "fullatt_block_indexes": (1,)},
                {"hidden_size": 96, "num_heads": 3, "intermediate_size": 250, "patch_size": 16,
                 "out_hidden_size": 40, "depth": 2, "fullatt_block_indexes": ()},
                {"hidden_size": 64, "num_heads": 2, "intermediate_size": 100, "spatial_merge_size": 3,
                 "temporal_patch_size": 4, "in_chans": 1, "depth": 1, "fullatt_block_indexes": (0,)},
                {"hidden_size": 1280, "intermediate_size": 3456, "out_hidden_size": 8192}]
    return [base.replace(vision_config=v).vision_config for v in variants]


def _text_configs():
    """The released text configs (3B tied, 7B, 72B) and variants: other heads, KV heads, ties."""
    configs = [Qwen25VLConfig.preset(n).text_config for n in _SIZES]
    base = Qwen25VLConfig.preset("3b")
    for change in [{"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 1,
                    "intermediate_size": 700, "num_hidden_layers": 3},
                   {"hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 6,
                    "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": 1000,
                    "tie_word_embeddings": False},
                   {"tie_word_embeddings": False}]:
        configs.append(base.replace(text_config=change).text_config)
    return configs


@exercise("00.1", "parameters of the vision side")
def _(vision_params) -> str:
    from ..vision import VisionTransformer

    configs = _vision_configs()
    for vc in configs:
        real = _meta_numel(lambda: VisionTransformer(vc))
        what = (f"vision config with width {vc.hidden_size}, MLP {vc.intermediate_size}, depth {vc.depth}, "
                f"patch {vc.in_chans} x {vc.temporal_patch_size} x {vc.patch_size}^2, merge "
                f"{vc.spatial_merge_size} x {vc.spatial_merge_size}, out {vc.out_hidden_size}")
        assert_answer(vision_params(vc), real, what,
                      hint="patch embedding (a Linear without bias from the patch's numbers), depth x one "
                           "block (2 RMSNorms, qkv, proj, gate, up, down, all with bias), and the merger "
                           "(ln_q, then two Linears with bias on merge x merge patches side by side)")
    return f"{len(configs)} configs, equal to VisionTransformer on the meta device"


@exercise("00.2", "parameters of one decoder layer")
def _(decoder_layer_params) -> str:
    from ..text import DecoderLayer

    configs = _text_configs()
    for tc in configs:
        mine = decoder_layer_params(tc)
        real = _meta_numel(lambda: DecoderLayer(tc, 0))
        what = (f"layer of width {tc.hidden_size}, {tc.num_attention_heads} query / {tc.num_key_value_heads} "
                f"KV heads, MLP {tc.intermediate_size}")
        assert_answer(mine, real, what,
                      hint="k and v have num_key_value_heads * head_dim outputs; q, k, v have a bias, "
                           "o_proj and the MLP have none")
    return f"{len(configs)} configs (3B, 7B, 72B and 3 variants), equal to DecoderLayer on the meta device"


def _tokens(height: int, width: int) -> int:
    h, w = smart_resize(height, width)
    return (h // 28) * (w // 28)


@exercise("00.3", "visual tokens of an image of any size")
def _(visual_tokens) -> str:
    cases = [(600, 512, "the sample photo"), (20, 20, "a tiny image (under min_pixels)"),
             (70, 700, "a side at an exact half (70 / 28 = 2.5)"), (8000, 6000, "48 MP (over max_pixels)"),
             (28, 5600, "200:1"), (1, 200, "1 px tall")]
    sizes = torch.randint(1, 4000, (20, 2)).tolist()
    cases += [(h, w, "random") for h, w in sizes if max(h, w) / min(h, w) <= 200]
    for h, w, what in cases:
        assert_answer(visual_tokens(h, w), _tokens(h, w), f"{h} x {w} px ({what})",
                      hint="smart_resize first, then one token per 28 x 28 px merge unit")
    return f"{len(cases)} sizes incl. tiny, over-budget and half-way sides, exact"


@exercise("00.4", "parameters of the language side")
def _(text_params) -> str:
    from ..model import Qwen25VL

    configs = _text_configs()
    base = Qwen25VLConfig.preset("3b")
    for tc in configs:
        config = Qwen25VLConfig(vision_config=base.vision_config, text_config=tc)
        real = _meta_numel(lambda: Qwen25VL(config), prefixes=("model.", "lm_head."))
        what = (f"language side of width {tc.hidden_size}, {tc.num_hidden_layers} layers, vocabulary "
                f"{tc.vocab_size}, head {'tied' if tc.tie_word_embeddings else 'untied'}")
        assert_answer(text_params(tc), real, what,
                      hint="embed_tokens, the layers, the final norm, and an lm_head only when it is not tied")
    return f"{len(configs)} configs (3B tied, 7B, 72B and 3 variants), equal to our model on the meta device"


def _windows(height: int, width: int) -> tuple[int, int]:
    """(full 4 x 4-unit windows, smaller windows at the bottom and right edges) of an image."""
    h, w = smart_resize(height, width)
    units_h, units_w = h // 28, w // 28
    full = (units_h // _WINDOW_UNITS) * (units_w // _WINDOW_UNITS)
    return full, math.ceil(units_h / _WINDOW_UNITS) * math.ceil(units_w / _WINDOW_UNITS) - full


@exercise("00.5", "full and edge windows of a 720 x 1280 frame", expected=lambda: _windows(720, 1280))
def _(answer) -> str:
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise AssertionError(f"give a pair (full windows, edge windows), got {answer!r}")
    full, edge = _windows(720, 1280)
    assert_answer(answer[0], full, "full windows (4 x 4 merge units)",
                  hint="smart_resize first; count merge units per side, then whole groups of 4")
    assert_answer(answer[1], edge, "edge windows (fewer than 4 x 4 merge units)",
                  hint="a side with a remainder adds one more window row or column")
    return "exact"


def _smallest_square_over(tokens: int) -> int:
    return next(s for s in range(1, 10_000) if _tokens(s, s) > tokens)


@exercise("00.6", "the smallest square that costs more than the photo",
          expected=lambda: _smallest_square_over(_tokens(600, 512)))
def _(answer) -> str:
    assert_answer(answer, _smallest_square_over(_tokens(600, 512)), "side (px)",
                  hint="which square token counts come after the photo's? Where does a side start "
                       "rounding up to the next multiple of 28, and which way does an exact half go?")
    return "exact"
