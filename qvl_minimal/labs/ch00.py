"""Chapter 00's exercises: parameter counts from the config, the visual-token count of any image.

    00.1  vision_block_params(vision_config) -> int      one vision block, by formula
    00.2  decoder_layer_params(text_config) -> int       one decoder layer, by formula
    00.3  visual_tokens(height, width) -> int             <|image_pad|> tokens of an image of any size
    00.4-00.6  quiz numbers (bytes of 7B, the untied 3B, the padding rows of the vocabulary)

Each count is checked against the library's formula (`qvl_minimal.params`) and against the real
module built on the meta device (shapes only, no memory), on the released sizes and on altered
configs, so that a formula tuned to the 3B numbers does not pass.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..params import BYTES_PER_PARAMETER, count_parameters
from ..preprocess import smart_resize
from .core import assert_answer, exercise

_SIZES = ("3b", "7b", "72b")


def _meta_numel(module_factory) -> int:
    with torch.device("meta"):
        module = module_factory()
    return sum(p.numel() for p in module.parameters())


def _vision_configs():
    """The released vision config and variants: another width, MLP width, head count, patch size."""
    base = Qwen25VLConfig.preset("3b")
    variants = [{}, {"hidden_size": 160, "num_heads": 2, "intermediate_size": 64},
                {"hidden_size": 96, "num_heads": 3, "intermediate_size": 250},
                {"hidden_size": 1280, "intermediate_size": 3456}]
    return [base.replace(vision_config=v) for v in variants]


def _text_configs():
    """The released text configs (3B tied, 7B, 72B) and variants with other head and KV-head counts."""
    configs = [Qwen25VLConfig.preset(n).text_config for n in _SIZES]
    base = Qwen25VLConfig.preset("3b")
    for change in [{"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 700},
                   {"hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 6, "intermediate_size": 96}]:
        configs.append(base.replace(text_config=change).text_config)
    return configs


@exercise("00.1", "parameters of one vision block")
def _(vision_block_params) -> str:
    from ..vision import VisionBlock

    configs = _vision_configs()
    for config in configs:
        vc = config.vision_config
        mine = vision_block_params(vc)
        real = _meta_numel(lambda: VisionBlock(vc))
        assert count_parameters(config)["vision_block"] == real  # the library's formula agrees with the module
        what = (f"width {vc.hidden_size}, MLP {vc.intermediate_size}, {vc.num_heads} heads")
        assert_answer(mine, real, f"block of {what}",
                      hint="count 2 RMSNorms, qkv and proj (with bias), gate/up/down (with bias)")
    return f"{len(configs)} configs, equal to VisionBlock on the meta device"


@exercise("00.2", "parameters of one decoder layer")
def _(decoder_layer_params) -> str:
    from ..text import DecoderLayer

    configs = _text_configs()
    for tc in configs:
        mine = decoder_layer_params(tc)
        real = _meta_numel(lambda: DecoderLayer(tc, 0))
        what = (f"width {tc.hidden_size}, {tc.num_attention_heads} query / {tc.num_key_value_heads} KV heads, "
                f"MLP {tc.intermediate_size}")
        assert_answer(mine, real, f"layer of {what}",
                      hint="k and v have num_key_value_heads * head_dim outputs; q, k, v have a bias, "
                           "o_proj and the MLP have none")
    return f"{len(configs)} configs (3B, 7B, 72B and 2 variants), equal to DecoderLayer on the meta device"


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


@exercise("00.4", "bytes of Qwen2.5-VL-7B in bfloat16")
def _(answer) -> str:
    expected = count_parameters(Qwen25VLConfig.preset("7b"))["total"] * BYTES_PER_PARAMETER["bfloat16"]
    assert_answer(answer, expected, "bytes", hint="count_parameters(...)['total'] x 2 bytes; 7B's head is not tied")
    return "exact"


@exercise("00.5", "parameters of an untied 3B")
def _(answer) -> str:
    untied = Qwen25VLConfig.preset("3b").replace(text_config={"tie_word_embeddings": False})
    assert_answer(answer, count_parameters(untied)["total"], "parameters",
                  hint="an untied head is one more vocab_size x hidden_size matrix")
    return "exact"


@exercise("00.6", "padding rows of the 3B embedding table")
def _(answer) -> str:
    in_use = 151_643 + 22  # byte-level BPE pieces + added tokens (14 of them special)
    assert_answer(answer, Qwen25VLConfig.preset("3b").text_config.vocab_size - in_use, "rows",
                  hint="151,643 pieces + 22 added tokens are in use")
    return "exact"
