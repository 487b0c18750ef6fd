"""What `describe` does differently for Qwen2.5-VL and Qwen3-VL, in one place: the family of a checkpoint.

    family_of(config) -> Family, chosen by the config's class (config.json's model_type):
        preprocess_image(image, max_pixels)  -> pixel_values (N, 1176 | 1536), image_grid_thw (1, 3)
        media_grids(media, fps)              -> image grids (I, 3), video grids (V, 3), seconds per step | None
                                                (from the sizes and headers alone, before the load)
        preprocess_video(source, fps)        -> pixel_values_videos (N, row), video_grid_thw (1, 3),
                                                the model's extra arguments {...}, seconds per step | None
        encode_chat(tokenizer, question, image_grid, video_grid, seconds, system) -> input_ids (1, L)

Qwen2.5-VL: patch 14, CLIP mean/std, the video's time in the position ids (second_per_grid_ts).
Qwen3-VL: patch 16, mean/std 0.5 (qwen3vl/preprocess.py), the video's time as text in the prompt
("<1.2 seconds>" before each step, from the frames' real times: qwen3vl/video.py, qwen3vl/prompt.py).
Everything else in describe (checks, load, generate, streaming, --json) is the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .preprocess import MAX_PIXELS as QWEN25_MAX_PIXELS  # 16,384 x 28 x 28 = 12,845,056
from .qwen3vl.preprocess import MAX_PIXELS as QWEN3_MAX_PIXELS  # 4096 x 4096 = 16,777,216


@dataclass(frozen=True)
class Family:
    name: str
    max_pixels: int  # the checkpoint's image limit: --max-pixels' default and ceiling
    preprocess_image: Callable
    media_grids: Callable
    preprocess_video: Callable
    encode_chat: Callable


def _qwen25_image(image, max_pixels):
    from .preprocess import preprocess_image

    return preprocess_image(image, max_pixels=max_pixels)


def _qwen25_grids(media, fps):
    from .prompt_limits import media_grids

    return (*media_grids(media, fps), None)


def _qwen25_video(source, fps):
    from .video_io import preprocess_source

    pixels, grid, seconds = preprocess_source(source, fps)
    return pixels, grid, {"second_per_grid_ts": seconds}, None


def _qwen25_chat(tokenizer, question, image_grid, video_grid, video_seconds, system):
    from .tokenizer import DEFAULT_SYSTEM, encode_chat

    system = DEFAULT_SYSTEM if system is None else system  # Qwen2.5-VL's template writes this one when none is given
    return encode_chat(tokenizer, question, image_grid_thw=image_grid, video_grid_thw=video_grid, system=system)


def _qwen3_image(image, max_pixels):
    from .qwen3vl.preprocess import preprocess_image

    return preprocess_image(image, max_pixels=max_pixels)


def _qwen3_grids(media, fps):
    import torch

    from .qwen3vl.preprocess import FACTOR, MIN_PIXELS, PATCH
    from .qwen3vl.video import video_plan
    from .preprocess import smart_resize

    images = [[1, h // PATCH, w // PATCH] for _, image in media.images
              for h, w in [smart_resize(image.height, image.width, FACTOR, MIN_PIXELS, media.max_pixels)]]
    plans = [video_plan(v.total_frames, v.video_fps, v.height, v.width, fps) for v in media.videos]
    return (torch.tensor(images) if images else None, torch.tensor([grid for _, grid, _ in plans]) if plans else None,
            [seconds for _, _, seconds in plans])


def _qwen3_video(source, fps):
    from .qwen3vl.video import preprocess_video
    from .video_io import VideoError

    try:
        pixels, grid, seconds = preprocess_video(source.frames(), source.total_frames, source.video_fps,
                                                 source.height, source.width, fps)
    except ValueError as err:  # fewer frames than the header says, a frame of another size
        raise VideoError(f"{source.path}: {err}; re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`, "
                         "or extract its frames into a folder") from None
    return pixels, grid, {}, seconds


def _qwen3_chat(tokenizer, question, image_grid, video_grid, video_seconds, system):
    from .qwen3vl.prompt import encode_chat_qwen3

    return encode_chat_qwen3(tokenizer, question, image_grid, video_grid, video_seconds, system)


QWEN25 = Family("Qwen2.5-VL", QWEN25_MAX_PIXELS, _qwen25_image, _qwen25_grids, _qwen25_video, _qwen25_chat)
QWEN3 = Family("Qwen3-VL", QWEN3_MAX_PIXELS, _qwen3_image, _qwen3_grids, _qwen3_video, _qwen3_chat)
LARGEST_LIMIT = max(QWEN25.max_pixels, QWEN3.max_pixels)  # what --max-pixels may ask of any family


def family_of(config) -> Family:
    """The family of a checked config (checkpoint_check reads Qwen2.5-VL's or Qwen3-VL's by model_type)."""
    from .qwen3vl.config import Qwen3VLConfig

    return QWEN3 if isinstance(config, Qwen3VLConfig) else QWEN25
