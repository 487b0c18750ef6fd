"""Qwen3-VL built on the book's library: each file holds what changed from Qwen2.5-VL.

    config.py     the new and changed config fields (patch 16, position table, DeepStack, head_dim, ...)
    vision.py     interpolated learned positions, LayerNorm + GELU(tanh) blocks, no windows, DeepStack mergers
    text.py       Qwen3 attention (q/k norms, no biases), interleaved M-RoPE, DeepStack in the decoder
    positions.py  position ids with one block per video frame (timestamps are text)
    model.py      the whole model (generation inherited from Qwen25VL)
    weights.py    a Qwen3-VL checkpoint folder -> Qwen3VL
    reference.py  the transformers 4.57.6 reference for chapters and tests (the only transformers user here)
"""

from .config import Qwen3TextConfig, Qwen3VisionConfig, Qwen3VLConfig
from .model import Qwen3VL

__all__ = ["Qwen3VLConfig", "Qwen3VisionConfig", "Qwen3TextConfig", "Qwen3VL"]
