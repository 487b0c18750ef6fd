"""The reference Qwen3-VL (transformers 4.57.6 `Qwen3VLForConditionalGeneration`), for chapters and tests.

Like `qvl_minimal.reference` (whose version check, `randomize_` and `compare` it uses), nothing in
the model imports this file. The reference's module tree (`model.visual.*`,
`model.language_model.*`, `lm_head.weight`) is the checkpoint's and ours, so weights copy by name.
"""

from __future__ import annotations

import torch

from ..reference import _seeded, _transformers
from .config import Qwen3VLConfig


def reference_config(config: Qwen3VLConfig, attn_implementation: str = "sdpa"):
    """Our config as a transformers Qwen3VLConfig (attention "sdpa" or "eager", set on every part)."""
    hf = _transformers().Qwen3VLConfig(**config.to_dict())
    for part in (hf, hf.text_config, hf.vision_config):
        part._attn_implementation = attn_implementation
    return hf


def build_reference(config: Qwen3VLConfig, seed: int | None = 0, attn_implementation: str = "sdpa"):
    """transformers' Qwen3VLForConditionalGeneration for `config`: float32, eval, every parameter from `seed`
    (norm weights 1 + N(0, 0.1), the rest N(0, 0.02); see qvl_minimal.reference.randomize_)."""
    model = _seeded(_transformers().Qwen3VLForConditionalGeneration, reference_config(config, attn_implementation),
                    seed)
    if config.text_config.tie_word_embeddings:
        model.tie_weights()  # lm_head IS the embedding table
    return model


def reference_state_dict(model, config: Qwen3VLConfig) -> dict:
    """The reference's weights under our (= the checkpoint's) names; a tied head is not a tensor of its own."""
    state = dict(model.state_dict())
    if config.text_config.tie_word_embeddings:
        state.pop("lm_head.weight")
    return state


def ours_sharing_weights(ref, config: Qwen3VLConfig):
    """Our Qwen3VL whose parameters ARE the reference's tensors (built on meta, then assigned; strict)."""
    from .model import Qwen3VL

    with torch.device("meta"):
        ours = Qwen3VL(config)
    ours.load_state_dict(reference_state_dict(ref, config), strict=True, assign=True)
    return ours.eval()


def reference_image_processor():
    """transformers' Qwen2VLImageProcessor set as Qwen3-VL's preprocessor_config.json sets it (see
    qwen3vl/preprocess.py): patch 16, merge 2, mean and std 0.5, 65536..16777216 pixels."""
    from .preprocess import MAX_PIXELS, MEAN, MIN_PIXELS, PATCH, STD

    return _transformers().Qwen2VLImageProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                                                 image_mean=list(MEAN), image_std=list(STD),
                                                 min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def reference_video_processor_defaults() -> dict:
    """The class defaults of transformers' Qwen3VLVideoProcessor (no instance: it needs torchvision)."""
    _transformers()
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as P

    return {"patch_size": P.patch_size, "merge_size": P.merge_size, "temporal_patch_size": P.temporal_patch_size,
            "image_mean": tuple(P.image_mean), "image_std": tuple(P.image_std), "fps": P.fps,
            "min_frames": P.min_frames, "max_frames": P.max_frames}
