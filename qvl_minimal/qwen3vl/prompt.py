"""Qwen3-VL's chat prompt: Qwen2.5-VL's (qvl_minimal.tokenizer.chat_parts), each video laid out by time step.

    question, image grids, video grids (V, 3), seconds per time step of each video
      --chat_parts_qwen3--> (piece, is_control) pairs
      --tokenizer.encode_parts--> input_ids (1, L)

An image is one <|vision_start|><|image_pad|> x (h*w/4)<|vision_end|> block, as in Qwen2.5-VL. A video
of T time steps is T blocks, each after its time as text (transformers 4.57.6's Qwen3VLProcessor):

    <0.2 seconds><|vision_start|><|video_pad|> x (h*w/4)<|vision_end|><1.2 seconds><|vision_start|>...

The seconds are printed with one decimal ("{:.1f}"), as the reference does. With system=None there is
no system turn, as the released Qwen3-VL template writes none when the messages have none (Qwen2.5-VL's
writes "You are a helpful assistant."); describe's --system gives one.
"""

from __future__ import annotations

import torch

from ..tokenizer import IMAGE_PAD, VIDEO_PAD, chat_parts, encode_parts, vision_token_counts
from .positions import frame_grids

START, END = ("<|vision_start|>", True), ("<|vision_end|>", True)


def chat_parts_qwen3(question: str, num_images: int, video_seconds: list[list[float]],
                     system: str | None = None) -> list[tuple[str, bool]]:
    """chat_parts with each video's one block replaced by one "<t seconds>" + block per time step;
    without the system turn when system is None."""
    parts = chat_parts(question, num_images, len(video_seconds), "" if system is None else system)
    if system is None:
        parts = parts[5:]  # <|im_start|> "system\n" "" <|im_end|> "\n"
    block, videos, out, i = [START, (VIDEO_PAD, True), END], iter(video_seconds), [], 0
    while i < len(parts):
        if parts[i:i + 3] == block:  # one video: one block per time step, each after its time
            out += [part for t in next(videos) for part in [(f"<{t:.1f} seconds>", False), *block]]
            i += 3
        else:
            out.append(parts[i])
            i += 1
    return out


def encode_chat_qwen3(tokenizer, question: str, image_grid_thw=None, video_grid_thw=None,
                      video_seconds: list[list[float]] | None = None, system: str | None = None) -> torch.Tensor:
    """Qwen3-VL chat prompt -> input_ids (1, L); video_seconds[k]: the seconds of video k's time steps."""
    video_seconds = video_seconds or []
    steps = [] if video_grid_thw is None else [int(t) for t in video_grid_thw[:, 0]]
    if steps != [len(s) for s in video_seconds]:
        raise ValueError(f"video_grid_thw has {steps} time steps per video, video_seconds "
                         f"{[len(s) for s in video_seconds]}; give one time per step of each video "
                         "(qwen3vl.video.video_plan computes them)")
    counts = {IMAGE_PAD: vision_token_counts(image_grid_thw, 2, "image_grid_thw"),
              VIDEO_PAD: vision_token_counts(frame_grids(video_grid_thw), 2, "video_grid_thw")}  # one per step
    return encode_parts(tokenizer, chat_parts_qwen3(question, len(counts[IMAGE_PAD]), video_seconds, system), counts)
