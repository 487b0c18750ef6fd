"""A Qwen3-VL stand-in checkpoint: the hub's layout, written by the reference itself, tiny and random.

No machine here can download Qwen3-VL, so `describe` and the loader are checked on a folder that
transformers' own `save_pretrained` writes (`qvl_minimal.standin.write_standin_checkpoint` with the
Qwen3-VL reference as the builder): config.json with model_type "qwen3_vl", model.safetensors
(names model.visual.*, model.language_model.*), generation_config.json, and the tokenizer files.

The widths are tiny (vision 32, text 32, 2 blocks and 2 layers, DeepStack from vision block 0),
the vocabulary is the real 151,936 rows (the tokenizer's ids index them) and the head is tied, so
the folder is about 10 MB in bfloat16 and written in a second or two. The answers are noise.

The tokenizer: Qwen3-VL's tokenizer.json is Qwen3's, the same BPE and the same added tokens
151643..151664 as Qwen2.5-VL's, plus <think>, </think>, <tool_response>, </tool_response> (151665..
151668), which `describe` never writes. So the stand-in carries Qwen2.5-VL's files
(tokenizer_files.write_tokenizer_files); every id the prompt uses is the same in both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..standin import write_standin_checkpoint
from .config import Qwen3TextConfig, Qwen3VisionConfig, Qwen3VLConfig


def qwen3_standin_config() -> Qwen3VLConfig:
    """Tiny widths, the real vocabulary and special ids (Qwen3VLConfig's defaults: image 151655, ...)."""
    vision = Qwen3VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=32,
                               num_position_embeddings=64, deepstack_visual_indexes=(0,))
    text = Qwen3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, mrope_section=(2, 3, 3), tie_word_embeddings=True)
    return Qwen3VLConfig(vision_config=vision, text_config=text)


def write_qwen3_standin(folder, config: Qwen3VLConfig | None = None, seed: int = 0,
                        dtype=torch.bfloat16) -> Path:
    """Write a Qwen3-VL stand-in checkpoint folder (see the module's docstring) -> the folder."""
    from .reference import build_reference

    return write_standin_checkpoint(folder, config or qwen3_standin_config(), seed=seed, dtype=dtype,
                                    build=build_reference)
