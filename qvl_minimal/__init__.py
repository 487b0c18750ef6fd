"""qvl_minimal: Qwen2.5-VL built from scratch, one readable file per component.

    import qvl_minimal as qvl
    config = qvl.Qwen25VLConfig.preset("3b")

Names are imported on first use, so `import qvl_minimal` stays fast and a chapter pays only
for the parts it touches.
"""

import importlib

_EXPORTS = {  # public name -> the module that defines it
    "Qwen25VLConfig": "config",
    "VisionConfig": "config",
    "TextConfig": "config",
    "GenerationConfig": "config",
    "RMSNorm": "layers",
    "SwiGLU": "layers",
    "sample_photo": "samples",
    "sample_clip": "samples",
    "smart_resize": "preprocess",
    "preprocess_image": "preprocess",
    "preprocess_video": "preprocess",
    "load_image": "image_files",
    "VisionTransformer": "vision",
    "PatchEmbed": "vision",
    "patch_positions": "vision",
    "vision_rotary_angles": "vision",
    "window_index": "vision",
    "full_cu_seqlens": "vision",
    "varlen_attention": "vision",
    "VisionAttention": "vision",
    "VisionBlock": "vision",
    "PatchMerger": "vision",
    "get_rope_index": "positions",
    "TextModel": "text",
    "mrope_cos_sin": "text",
    "KVCache": "text",
    "Attention": "text",
    "DecoderLayer": "text",
    "Qwen25VL": "model",
    "splice_visual_tokens": "model",
    "next_token": "model",
    "load_tokenizer": "tokenizer_files",
    "build_chat_prompt": "tokenizer",
    "encode_chat": "tokenizer",
    "expand_vision_pads": "tokenizer",
    "QwenTokenizer": "tokenizer",
    "load_pretrained": "weights",
    "count_parameters": "params",
    "diverge": "stages",
    "vision_flops": "params",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qvl_minimal' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
