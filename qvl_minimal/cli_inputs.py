"""Everything the user gives the command line, checked before the model is loaded.

A full checkpoint takes about 20 s and 7.5-15 GB to load, so a typo must not cost that. Each
check raises UserError with one sentence that says what is wrong and how to fix it; the command
prints it as `error: ...` and exits with code 2 (no traceback).

    check_options(args)            question, generation options, device, $QVL_DTYPE
    check_media(paths, fps, max_pixels) -> Media: the images (opened) and videos (headers read), in order
    check_checkpoint(path)         -> CheckedFolder: checkpoint_check.check_checkpoint_folder, the one
                                      definition of a valid folder (the loader runs the same), tokenizer included
    prompt_limits.check_fit(...)   the prompt's length and memory, counted from the sizes alone
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .image_files import ImageFileError, load_image
from .model_family import LARGEST_LIMIT
from .preprocess import MAX_PIXELS, MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, smart_resize
from .video_io import FrameFolder, VideoError, VideoFile, is_video_path, open_video

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0  # sampling temperatures accepted (0 = greedy)


class UserError(Exception):
    """A mistake the user can fix; the message says how. The command prints `error: <message>`, exit 2."""


@dataclass
class Media:
    """The pictures and videos of one prompt, each list in the order given on the command line."""

    images: list = field(default_factory=list)  # (path, PIL image)
    videos: list = field(default_factory=list)  # VideoFile | FrameFolder
    max_pixels: int = MAX_PIXELS  # each image is shrunk to at most this many pixels (--max-pixels)


def check_options(args) -> None:
    """The question and the generation options (argparse has checked their types already)."""
    if args.question is not None and not args.question.strip():
        raise UserError('the question is empty; ask something, e.g. --question "What is in this picture?"')
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not (args.temperature == 0 or MIN_TEMPERATURE <= args.temperature <= MAX_TEMPERATURE):
        raise UserError(f"--temperature must be 0 (greedy) or a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE} "
                        f"(sampling; below {MIN_TEMPERATURE} it is greedy in effect and logits / T overflow), "
                        f"got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must lie in (0, 1] (1 = no cut), got {args.top_p}")
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise UserError(f"--fps must be a positive number (frames per second of video to keep), got {args.fps}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UserError(f"--seed must be an integer from 0 to 2**64 - 1, got {args.seed}")
    max_pixels = getattr(args, "max_pixels", None)
    if max_pixels is not None and not MIN_PIXELS <= max_pixels <= LARGEST_LIMIT:
        raise UserError(f"--max-pixels must lie between {MIN_PIXELS:,} (4 visual tokens) and the checkpoint's limit "
                        f"({MAX_PIXELS:,} for Qwen2.5-VL, {LARGEST_LIMIT:,} for Qwen3-VL), got {max_pixels:,}")
    check_device(args.device)
    check_dtype(args.device, args.dtype)


def check_max_pixels(requested: int | None, family) -> int:
    """--max-pixels for this checkpoint's family: its own limit when not given, else at most that limit."""
    if requested is None:
        return family.max_pixels
    if requested > family.max_pixels:
        raise UserError(f"--max-pixels {requested:,} is above {family.name}'s limit of {family.max_pixels:,} pixels; "
                        f"give at most {family.max_pixels:,}, or leave it out")
    return requested


def check_dtype(device: str, dtype: str | None):
    """The compute dtype: --dtype, else $QVL_DTYPE, else the device's best -> (torch dtype, why)."""
    from .dtypes import ENV, NAMES, choose_dtype

    if dtype is None and os.environ.get(ENV) and os.environ[ENV] not in NAMES:
        raise UserError(f"${ENV}={os.environ[ENV]!r}: choose one of {', '.join(NAMES)}, or unset it "
                        "(then the device's best dtype is chosen)")
    return choose_dtype(device, dtype)


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); "
                        "use --device cpu, or install a CUDA build of PyTorch")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps, but this PyTorch sees no Apple GPU; use --device cpu")


def check_image(path: Path, max_pixels: int = MAX_PIXELS):
    """Open the picture and check that the preprocessor accepts its size. -> PIL image"""
    try:
        image = load_image(path)  # EXIF orientation applied, transparency on white, 16 bits scaled
    except ImageFileError as err:  # not an image, damaged, decompression bomb, odd mode: the message names the file
        raise UserError(f"cannot read the image {err}") from None
    try:
        smart_resize(image.height, image.width, min_pixels=MIN_PIXELS, max_pixels=max_pixels)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    return image


def check_video(path: Path, fps: float) -> VideoFile | FrameFolder:
    """Read a video's header (or a frame folder's file headers) and check its frame size and count."""
    try:
        video = open_video(path, fps)
    except VideoError as err:
        raise UserError(str(err)) from None
    if video.total_frames < 2:
        raise UserError(f"{path}: a video needs at least 2 frames, this one has {video.total_frames}; "
                        "for a single picture give an image file")
    try:
        smart_resize(video.height, video.width, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    except ValueError as err:
        raise UserError(f"{path}: frames of {video.width} x {video.height} px: {err}") from None
    return video


def check_media(paths: list[str], fps: float, max_pixels: int = MAX_PIXELS) -> Media:
    """Every path exists and opens; images come before videos (the prompt lists them so)."""
    media = Media(max_pixels=max_pixels)
    for name in paths:
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"no such file or folder: {name} (check the path)")
        if is_video_path(path):
            media.videos.append(check_video(path, fps))
        elif media.videos:
            raise UserError(f"the image {name} comes after a video; give the images first "
                            "(the prompt shows every image before every video)")
        else:
            media.images.append((path, check_image(path, max_pixels)))
    return media


def check_checkpoint(path: str | None):
    """The checkpoint folder, every file of it checked as the loader checks it, the tokenizer loaded
    -> checkpoint_check.CheckedFolder (its .folder, .config, .tokenizer, ...)."""
    from .checkpoint_check import CheckpointError, check_checkpoint_folder

    try:
        return check_checkpoint_folder(path, tokenizer=True)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    except CheckpointError as err:
        raise UserError(f"cannot use the checkpoint: {err}") from None
