"""Qwen3-VL's image preprocessing: `qvl_minimal.preprocess`'s five steps with three numbers changed.

    patch 16 (was 14), so smart_resize rounds the sides to multiples of 32 (= 2 x 2 patches of
    16 px) and a pixel_values row is 3 x 2 x 16 x 16 = 1536 wide;
    mean and std 0.5 per channel (was CLIP's), so pixels land in [-1, 1];
    min_pixels 65536 (256 x 256) and max_pixels 16777216 (4096 x 4096).

Where the numbers come from: the reference preprocesses Qwen3-VL images with the Qwen2-VL image
processor, configured by the checkpoint's preprocessor_config.json (patch_size 16, merge_size 2,
temporal_patch_size 2, image_mean and image_std [0.5, 0.5, 0.5], size {shortest_edge: 65536,
longest_edge: 16777216} in the released Qwen3-VL-*-Instruct files). That file cannot be read
offline here; its patch, merge and mean/std equal the defaults of transformers 4.57.6's
Qwen3VLVideoProcessor (video_processing_qwen3_vl.py), which tests/test_qwen3vl.py checks.
"""

from __future__ import annotations

import torch

from ..preprocess import MERGE, patchify, resize_normalize, smart_resize, to_rgb

PATCH = 16  # a patch is 16 x 16 pixels
FACTOR = PATCH * MERGE  # 32: resized sides are multiples of this
MEAN = STD = (0.5, 0.5, 0.5)  # per RGB channel, on the [0, 1] scale: x -> 2x - 1
MIN_PIXELS = 65536  # preprocessor_config.json size.shortest_edge (a pixel count, despite the name)
MAX_PIXELS = 16777216  # size.longest_edge


def preprocess_image(image, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (PIL, any mode, or H x W x 3 uint8) -> (pixel_values (N, 1536), grid_thw [[1, h/16, w/16]])."""
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    frame = resize_normalize(rgb, height, width, mean=MEAN, std=STD)  # (3, h, w)
    return patchify(frame[None], patch=PATCH)  # one frame, repeated to two inside
