"""The released Qwen3-VL presets: each builds on the meta device, and its parameter count equals a
formula written here from the config fields alone (not a number copied from the library's output)."""

import pytest
import torch

from qvl_minimal.qwen3vl import Qwen3VL, Qwen3VLConfig
from qvl_minimal.qwen3vl.config import PRESETS


def linear(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def formula(cfg: Qwen3VLConfig) -> tuple[int, int]:
    """(vision tower incl. mergers, language model incl. embedding and head) from the fields."""
    v, t = cfg.vision_config, cfg.text_config
    c, wide = v.hidden_size, v.hidden_size * v.spatial_merge_size**2
    patch = v.in_channels * v.temporal_patch_size * v.patch_size**2 * c + c  # Conv3d with a bias
    table = v.num_position_embeddings * c
    block = (2 * 2 * c  # two LayerNorms, weight and bias
             + linear(c, 3 * c) + linear(c, c)  # qkv, proj
             + linear(c, v.intermediate_size) + linear(v.intermediate_size, c))  # the GELU MLP
    merger = 2 * c + linear(wide, wide) + linear(wide, v.out_hidden_size)  # norm over C
    deepstack = 2 * wide + linear(wide, wide) + linear(wide, v.out_hidden_size)  # norm over 4C
    vision = patch + table + v.depth * block + merger + len(v.deepstack_visual_indexes) * deepstack

    d, hd = t.hidden_size, t.head_dim
    q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
    layer = (linear(d, q, False) + 2 * linear(d, kv, False) + linear(q, d, False)  # no biases
             + 2 * hd  # q_norm, k_norm
             + 3 * d * t.intermediate_size  # SwiGLU gate, up, down
             + 2 * d)  # two RMSNorms
    embed = t.vocab_size * d
    head = 0 if t.tie_word_embeddings else t.vocab_size * d
    text = embed + t.num_hidden_layers * layer + d + head
    return vision, text


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_count_equals_the_formula(name):
    cfg = Qwen3VLConfig.preset(name)
    cfg.check(name)
    with torch.device("meta"):
        model = Qwen3VL(cfg)
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    total = sum(p.numel() for p in model.parameters())
    assert (vision, total - vision) == formula(cfg)


def test_presets_round_trip_through_config_json():
    for name, cfg in PRESETS.items():
        assert Qwen3VLConfig.from_dict(cfg.to_dict(), source=name) == cfg


def test_8b_total_matches_the_published_size():
    # LM Studio's model page for qwen/qwen3-vl-8b states "8.77B parameters" (copied in
    # github.com/EduardoNicacio/LLMBenchmark, qwen3-VL-8b/readme.md). Tolerance: the rounding of
    # that figure, +-0.005B.
    vision, text = formula(Qwen3VLConfig.preset("8b"))
    assert abs((vision + text) / 1e9 - 8.77) <= 0.005


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="4b"):
        Qwen3VLConfig.preset("2b")
