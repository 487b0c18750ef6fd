"""Qwen3-VL's video input: which frames, what size, and the time of each step, as the prompt writes it.

    video header (total_frames, video_fps, height, width)
      --sample_frame_indices--> frame indices: fps 2, 4..768 frames, spread evenly (np.linspace, rounded)
      --frame_size-->           one (h, w) for all frames, multiples of 32, the budget shared by all frames
      --step_timestamps-->      seconds per time step: the mean of its 2 frames' times (index / video_fps)
    frames --preprocess_video--> pixel_values_videos (T/2 * h/16 * w/16, 1536), video_grid_thw (1, 3), seconds

The rules are transformers 4.57.6's Qwen3VLVideoProcessor (sample_frames, smart_resize) and
Qwen3VLProcessor._calculate_timestamps, with the class defaults of video_processing_qwen3_vl.py:
patch 16, merge 2, mean and std 0.5, fps 2, 4..768 frames, size shortest_edge 128 * 32 * 32 and
longest_edge 768 * 32 * 32 pixels, counted over ALL the frames (t * h * w), not per frame.
Differences from Qwen2.5-VL's rule (qvl_minimal.preprocess): the frame count is int(duration * fps)
and may be odd (the last frame is repeated to fill the step, as in the reference); the pixel budget
is the whole clip's; and time is text: "<1.2 seconds>" before each step's <|vision_start|>.

Not checked against the reference's pixels: its video processor resizes with torchvision, which
is not installed here. The frames here are resized as images are (PIL bicubic, qvl_minimal.preprocess).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from ..preprocess import MAX_RATIO, TEMPORAL, _read_sampled, patchify
from .preprocess import FACTOR, MEAN, PATCH, STD

FPS, MIN_FRAMES, MAX_FRAMES = 2.0, 4, 768  # Qwen3VLVideoProcessor's defaults
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR  # 131072: size.shortest_edge, over all frames
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # 786432: size.longest_edge, over all frames


def sample_frame_indices(total_frames: int, video_fps: float, fps: float = FPS) -> list[int]:
    """The frames kept: int(total / video_fps * fps), clamped to [4, 768] and to the clip's length."""
    if not (video_fps > 0 and fps > 0):
        raise ValueError(f"video_fps={video_fps} and fps={fps} must both be positive")
    count = min(max(int(total_frames / video_fps * fps), MIN_FRAMES), MAX_FRAMES, total_frames)
    return np.linspace(0, total_frames - 1, count).round().astype(int).tolist()


def frame_size(num_frames: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) of every frame, multiples of 32, so that t * h * w lies in [VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS]
    (t = num_frames rounded to even; the reference's video smart_resize)."""
    if height < FACTOR or width < FACTOR:
        raise ValueError(f"frames of {width} x {height} px: both sides must be at least {FACTOR} px; scale it up")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"frames of {width} x {height} px: longest / shortest side must not exceed {MAX_RATIO}")
    h, w = round(height / FACTOR) * FACTOR, round(width / FACTOR) * FACTOR
    t = round(num_frames / TEMPORAL) * TEMPORAL
    if t * h * w > VIDEO_MAX_PIXELS:
        beta = math.sqrt(num_frames * height * width / VIDEO_MAX_PIXELS)
        h = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif t * h * w < VIDEO_MIN_PIXELS:
        beta = math.sqrt(VIDEO_MIN_PIXELS / (num_frames * height * width))
        h, w = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def step_timestamps(indices: list[int], video_fps: float) -> list[float]:
    """Seconds of each time step: the mean of its first and last frame's time (an odd count repeats the last)."""
    indices = list(indices) + [indices[-1]] * (len(indices) % TEMPORAL)
    seconds = [i / video_fps for i in indices]
    return [(seconds[i] + seconds[i + TEMPORAL - 1]) / 2 for i in range(0, len(seconds), TEMPORAL)]


def video_plan(total_frames: int, video_fps: float, height: int, width: int,
               fps: float = FPS) -> tuple[list[int], list[int], list[float]]:
    """From the header alone -> (frame indices, grid [T/2, h/16, w/16], seconds per time step)."""
    indices = sample_frame_indices(total_frames, video_fps, fps)
    h, w = frame_size(len(indices), height, width)
    return indices, [math.ceil(len(indices) / TEMPORAL), h // PATCH, w // PATCH], step_timestamps(indices, video_fps)


def preprocess_video(frames, total_frames: int, video_fps: float, height: int, width: int,
                     fps: float = FPS) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Frames (an iterable of PIL images / H x W x 3 uint8, read once) -> (pixel_values_videos (N, 1536),
    video_grid_thw (1, 3), seconds of each time step for the prompt)."""
    indices, (_, h, w), seconds = video_plan(total_frames, video_fps, height, width, fps)
    video = _read_sampled(frames, total_frames, Counter(indices), 0, 0, resize_to=(h * PATCH, w * PATCH),
                          mean=MEAN, std=STD)  # (T, 3, h*16, w*16)
    pixel_values, grid_thw = patchify(video, patch=PATCH)  # an odd T: the last frame repeated
    return pixel_values, grid_thw, seconds
