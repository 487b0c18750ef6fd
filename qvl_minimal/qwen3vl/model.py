"""The whole Qwen3-VL model: the Qwen2.5-VL pipeline of `qvl_minimal.model`, with DeepStack.

    pixels --model.visual--> visual tokens (N, D) and k DeepStack features (N, D) each
    visual tokens --splice into the placeholders--> inputs_embeds (B, L, D)
    input_ids, grids --get_rope_index (one block per video frame)--> position ids (3, B, L)
    inputs_embeds, positions, DeepStack --model.language_model--> hidden (B, L, D) --head--> logits

Module names equal the checkpoint's keys: `model.visual.*`, `model.language_model.*`, and
`lm_head.weight` when the head is not tied to the embedding table. Checking the inputs, the
head, `forward` and `generate` (prefill, then one token at a time with the KV cache) are
Qwen25VL's, inherited; a decode step has no visual token, so DeepStack acts in the prefill only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import GenerationConfig
from ..model import Qwen25VL, splice_visual_tokens
from ..text import KVCache
from .config import Qwen3VLConfig
from .positions import get_rope_index
from .text import Qwen3TextModel
from .vision import Qwen3VisionModel


class Qwen3VLModel(nn.Module):
    """The checkpoint's `model.*`: `visual` (vision tower + mergers) and `language_model` (decoder)."""

    def __init__(self, config: Qwen3VLConfig):
        super().__init__()
        self.visual = Qwen3VisionModel(config.vision_config)
        self.language_model = Qwen3TextModel(config.text_config)


def joint_deepstack(image_mask, video_mask, image_features: list, video_features: list) -> list:
    """Per-layer DeepStack features of images and videos, merged in the order of the visual tokens.

    image_mask, video_mask (B, L) booleans; image_features[i] (N_img, D), video_features[i] (N_vid, D)
    -> list of (N_img + N_vid, D), rows in the row-major order of (image_mask | video_mask).
    """
    if not video_features:
        return image_features
    if not image_features:
        return video_features
    visual = image_mask | video_mask  # (B, L)
    out = []
    for img, vid in zip(image_features, video_features):
        joint = img.new_zeros(int(visual.sum()), img.shape[-1])  # (N, D)
        joint[image_mask[visual]] = img
        joint[video_mask[visual]] = vid.to(img.dtype)
        out.append(joint)
    return out


class Qwen3VL(Qwen25VL):
    """Qwen3-VL: `model.visual`, `model.language_model`, `lm_head` if untied."""

    def __init__(self, config: Qwen3VLConfig):
        nn.Module.__init__(self)  # Qwen25VL's modules are not built: ours replace them
        self.config = config
        self.generation_config = GenerationConfig.for_config(config)
        self.model = Qwen3VLModel(config)
        if not config.text_config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)

    @property
    def language(self) -> Qwen3TextModel:
        return self.model.language_model

    @property
    def visual(self) -> Qwen3VisionModel:
        return self.model.visual

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
              video_grid_thw=None):
        """-> (inputs_embeds (B, L, D) with the visual tokens spliced in, visual mask (B, L),
        DeepStack features: one (N_visual, D) per layer that receives them)."""
        cfg = self.config
        x = self.language.embed_tokens(input_ids)  # (B, L, D)
        tower = self.visual.patch_embed.proj.weight  # its device and dtype are the tower's
        masks, deepstack = {}, {}
        for pixels, grid, token_id, what in ((pixel_values, image_grid_thw, cfg.image_token_id, "image"),
                                             (pixel_values_videos, video_grid_thw, cfg.video_token_id, "video")):
            masks[what] = input_ids == token_id  # (B, L)
            deepstack[what] = []
            if pixels is not None:
                features, deepstack[what] = self.visual(pixels.to(device=tower.device, dtype=tower.dtype), grid)
                x = splice_visual_tokens(x, input_ids, features.to(x.device), token_id, what)  # (B, L, D)
        visual_mask = masks["image"] | masks["video"]  # (B, L)
        return x, visual_mask, joint_deepstack(masks["image"], masks["video"], deepstack["image"],
                                               deepstack["video"])

    def prefill(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None,
                cache: KVCache | None = None):
        """Run the whole prompt once. -> (hidden states (B, L, D), position deltas (B, 1))."""
        if second_per_grid_ts is not None:
            raise ValueError("Qwen3-VL takes no second_per_grid_ts: each frame's time is written in the prompt "
                             "as text (<1.5 seconds>) before its <|vision_start|>; drop the argument")
        self.check_inputs(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                          video_grid_thw, None)
        x, visual_mask, deepstack = self.embed(input_ids, pixel_values, image_grid_thw, pixel_values_videos,
                                               video_grid_thw)
        position_ids, deltas = get_rope_index(self.config, input_ids, image_grid_thw, video_grid_thw,
                                              attention_mask)  # (3, B, L), (B, 1)
        h = self.language(x, position_ids, attention_mask, cache, visual_mask, deepstack)  # (B, L, D)
        return h, deltas
