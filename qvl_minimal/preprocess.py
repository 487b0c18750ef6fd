"""Images and videos -> `pixel_values`: the rows of pixels the vision tower eats, and their grid.

Five steps, the same for a photo and for the frames of a video:

1. to RGB: any PIL mode becomes 3 channels with `image.convert("RGB")`, exactly as the reference
   processor does. An alpha channel is simply dropped (the colour under transparent pixels shows),
   and so is a palette or grey image's transparent colour ('P' with "transparency"): the same as
   RGBA. The official helper `qwen-vl-utils` instead pastes RGBA images onto white first: call
   `paste_on_white(image)` yourself to get that behaviour. 16-bit images ('I;16') are clipped to
   255 by PIL's conversion (the reference does the same): scale them to 8 bits first.
   A FILE is best opened with `image_files.load_image(path)`: it applies the EXIF orientation, pastes
   every kind of transparency on white, scales 16-bit grey to 8 bits and refuses decompression bombs.
2. `smart_resize`: pick a size whose sides are multiples of 28 (= one 2 x 2 merge unit of 14 px
   patches), close to the original aspect ratio, with a pixel count inside [min_pixels, max_pixels].
3. bicubic resize with PIL (the reference resizes with PIL too, so the numbers agree exactly).
4. scale to [0, 1] and normalise with the CLIP mean and std.
5. `patchify`: pad time to a multiple of 2 frames (a still image is repeated), cut into
   2 x 14 x 14 blocks and list them in merge-unit order: one row of 3 * 2 * 14 * 14 = 1176 numbers
   per patch.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from einops import rearrange
from PIL import Image

PATCH = 14  # a patch is 14 x 14 pixels
TEMPORAL = 2  # ... and 2 frames deep
MERGE = 2  # the merger joins 2 x 2 patches into one token
FACTOR = PATCH * MERGE  # 28: the sides of a resized image are multiples of this
MIN_PIXELS = 4 * 28 * 28  # 3136: the checkpoint's preprocessor_config.json (class default: 56 * 56)
MAX_PIXELS = 16384 * 28 * 28  # 12845056: the checkpoint's (class default: 28 * 28 * 1280)
MAX_RATIO = 200  # longest side / shortest side must not exceed this
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # per RGB channel, on the [0, 1] scale
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Video, as qwen-vl-utils samples it (vision_process.py)
FPS_MIN_FRAMES, FPS_MAX_FRAMES = 4, 768  # sampled frame count bounds
VIDEO_MIN_PIXELS = 128 * 28 * 28  # per frame: at least 64 tokens per 2 frames ...
VIDEO_MAX_PIXELS = 768 * 28 * 28  # ... at most 384
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # budget for all frames: about 115k visual tokens


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The size (h, w) an image is resized to: multiples of `factor`, pixel count within bounds.

    Round each side to the nearest multiple of 28 (Python's round: halves go to even, so 42 -> 56
    but 14 -> 0). If that is over `max_pixels`, shrink both sides by the same factor beta and round
    down; if under `min_pixels`, grow them and round up. Same code as transformers' smart_resize.
    """
    if min(height, width) <= 0:
        raise ValueError(f"image of size {height} x {width} px is empty: both sides must be at least 1 px")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"aspect ratio {ratio:.1f}:1 of a {height} x {width} px image is over the limit "
                         f"{MAX_RATIO}:1; crop it, or cut it into pieces, before preprocessing")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:  # too big: shrink, keeping the aspect ratio
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:  # too small: grow
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def paste_on_white(image: Image.Image) -> Image.Image:
    """What qwen-vl-utils does with RGBA: composite onto a white background (the reference does not)."""
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


def to_rgb(image) -> Image.Image:
    """A PIL image (any mode) or an H x W x 3 uint8 numpy array -> a PIL image in mode RGB."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"numpy image has dtype {image.dtype}; expected uint8 in 0..255 "
                            "(from floats in [0, 1] use (a * 255).round().astype(np.uint8))")
        if image.ndim != 3 or image.shape[-1] != 3:
            hint = ("looks channels-first: use a.transpose(1, 2, 0)" if image.ndim == 3 and image.shape[0] == 3
                    else "drop alpha with a[..., :3] or pass Image.fromarray(a) (any mode is converted)")
            raise ValueError(f"numpy image has shape {image.shape}; expected (height, width, 3) RGB, {hint}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image or an H x W x 3 uint8 numpy array, got {type(image).__name__}"
                        " (a torch tensor (3, H, W): pass t.permute(1, 2, 0).numpy())")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image of size {image.height} x {image.width} px is empty")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert a PIL image in mode {image.mode!r} to RGB ({err}); "
                         "convert it yourself, e.g. image.convert('RGBA') first") from None


def resize_normalize(image: Image.Image, height: int, width: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """RGB PIL image -> bicubic resize to (height, width) -> /255 -> normalise (CLIP's mean and std by
    default; Qwen3-VL uses 0.5 and 0.5) -> (3, h, w) float32."""
    pixels = np.array(image.resize((width, height), resample=Image.BICUBIC))  # (h, w, 3) uint8
    x = torch.from_numpy(pixels).float() / 255  # (h, w, 3) in [0, 1]; same bits as the reference's float64 route
    x = (x - torch.tensor(mean)) / torch.tensor(std)  # (h, w, 3) float32, per channel
    return rearrange(x, "h w c -> c h w")  # (3, h, w)


def patchify(frames: torch.Tensor, patch: int = PATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 3, H, W) normalised frames -> (pixel_values (gt*gh*gw, 1176), grid_thw (1, 3)).

    T is padded to a multiple of 2 by repeating the last frame. Rows are listed time step, then
    merge-unit row, merge-unit column, then the 2 x 2 patches inside a unit (row-major), so that
    every 4 consecutive rows form one future token. Each row is a flattened (C, T, 14, 14) block
    (`patch` 16 for Qwen3-VL: rows of 3 * 2 * 16 * 16 = 1536).
    """
    factor = patch * MERGE
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] % factor or frames.shape[3] % factor:
        raise ValueError(f"frames of shape {tuple(frames.shape)}: expected (T, 3, H, W) with H and W multiples "
                         f"of {factor} (use smart_resize)")
    if frames.shape[0] % TEMPORAL:  # a still image: T = 1 -> 2 identical frames
        last = frames[-1:].expand(TEMPORAL - frames.shape[0] % TEMPORAL, -1, -1, -1)
        frames = torch.cat([frames, last])  # (T', 3, H, W), T' a multiple of 2
    grid_thw = torch.tensor([[frames.shape[0] // TEMPORAL, frames.shape[2] // patch, frames.shape[3] // patch]])
    pixel_values = rearrange(
        frames,  # (gt*2, 3, uh*2*14, uw*2*14): uh x uw merge units of 2 x 2 patches of 14 x 14 px
        "(gt t) c (uh mh ph) (uw mw pw) -> (gt uh uw mh mw) (c t ph pw)",
        t=TEMPORAL, mh=MERGE, mw=MERGE, ph=patch, pw=patch,
    )  # (gt*gh*gw, 1176)
    return pixel_values.contiguous(), grid_thw


def preprocess_image(image, min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """One image -> (pixel_values (N, 1176) float32, grid_thw (1, 3) int64 = [[1, h/14, w/14]]).

    `image`: a PIL image in any mode, or an H x W x 3 uint8 numpy array. The image needs
    N / 4 `<|image_pad|>` tokens in the prompt (one per 2 x 2 merge unit).
    """
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, min_pixels=min_pixels, max_pixels=max_pixels)
    frame = resize_normalize(rgb, height, width)  # (3, h, w)
    return patchify(frame[None])  # one frame, repeated to two inside


def sample_frame_indices(total_frames: int, video_fps: float, fps: float = 2.0) -> tuple[list[int], float]:
    """Which frames of a video decoded at `video_fps` to keep, and the rate they sample: qwen-vl-utils' rule.

    Target count = duration * fps = total_frames / video_fps * fps, clamped to [4, min(768, total)]
    (both bounds rounded to even), then rounded down to an even number (2 frames per time step).
    Indices are spread evenly over the whole clip (linspace from first to last frame, rounded).
    Returns (indices, sample_fps) with sample_fps = count / total_frames * video_fps: the effective
    rate, which equals `fps` when the clip is long enough and not clamped.
    """
    if total_frames < TEMPORAL:
        raise ValueError(f"a video needs at least {TEMPORAL} frames, got {total_frames}; "
                         "for a single picture use preprocess_image")
    if not (video_fps > 0 and fps > 0):
        raise ValueError(f"video_fps={video_fps} and fps={fps} must both be positive")
    min_frames = math.ceil(FPS_MIN_FRAMES / TEMPORAL) * TEMPORAL
    max_frames = math.floor(min(FPS_MAX_FRAMES, total_frames) / TEMPORAL) * TEMPORAL
    count = min(max(total_frames / video_fps * fps, min_frames), max_frames, total_frames)
    count = math.floor(count / TEMPORAL) * TEMPORAL
    indices = torch.linspace(0, total_frames - 1, count).round().long().tolist()  # halves to even
    return indices, count / total_frames * video_fps


def frame_pixel_budget(num_frames: int, min_pixels: int = VIDEO_MIN_PIXELS,
                       max_pixels: int = VIDEO_MAX_PIXELS) -> float:
    """The most pixels one frame may keep when `num_frames` frames share one budget (qwen-vl-utils).

    num_frames / 2 time steps of P / 784 tokens each must fit VIDEO_TOTAL_PIXELS / 784 tokens, so
    P = VIDEO_TOTAL_PIXELS * 2 / num_frames; that is under VIDEO_MAX_PIXELS only from 302 frames
    on. Never below 1.05 * min_pixels, and never above `max_pixels`.
    """
    shared = min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / num_frames * TEMPORAL)
    return min(max_pixels, max(shared, int(min_pixels * 1.05)))


def _frame_list(frames) -> list:
    """A (T, H, W, 3) uint8 array or a list of frames -> a list of frames all of one size."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"video array has shape {frames.shape}; expected (T, height, width, 3) uint8")
        return list(frames)
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise TypeError("frames must be a non-empty list of PIL images / H x W x 3 uint8 arrays, "
                        f"or a (T, H, W, 3) uint8 numpy array; got {type(frames).__name__}")
    sizes = {f.size if isinstance(f, Image.Image) else np.shape(f)[:2][::-1] for f in frames}  # (w, h)
    if len(sizes) > 1:
        raise ValueError(f"all frames of a video must have one size; got (width, height) sizes "
                         f"{sorted(map(str, sizes))}: resize or crop them to one size first")
    return list(frames)


def preprocess_video(frames, video_fps: float, fps: float = 2.0, *, min_pixels: int = VIDEO_MIN_PIXELS,
                     max_pixels: int = VIDEO_MAX_PIXELS,
                     total_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decoded video -> (pixel_values_videos (N, 1176), video_grid_thw (1, 3), second_per_grid_ts (1,)).

    `frames`: every frame of the clip, decoded at `video_fps` (list of PIL images / uint8 arrays,
    or a (T, H, W, 3) uint8 array), or any iterable that yields them one at a time (a decoder's
    generator) together with `total_frames`, the number it will yield. Frames are sampled at `fps`
    (`sample_frame_indices`, which needs the count before the first frame is read), then all
    resized to one size chosen by smart_resize with per-frame bounds [min_pixels, max_pixels],
    where max_pixels is lowered so that all frames fit VIDEO_TOTAL_PIXELS (qwen-vl-utils' rule).
    Frames are read once, in order, and each kept frame is resized as it arrives, so memory holds
    the resized frames kept, never the clip (an hour of 1080p at 30 fps would be about 650 GB).
    Each time step covers 2 sampled frames: second_per_grid_t = 2 / sample_fps seconds (1.0 at
    2 fps), returned as a float32 tensor like the reference processor's output.
    """
    if isinstance(frames, (list, tuple, np.ndarray)):
        frames = _frame_list(frames)
        if total_frames is not None and total_frames != len(frames):
            raise ValueError(f"total_frames={total_frames} but the list holds {len(frames)} frames; leave it out")
        total_frames = len(frames)
    elif not hasattr(frames, "__iter__"):
        raise TypeError("frames must be a non-empty list of PIL images / H x W x 3 uint8 arrays, "
                        f"a (T, H, W, 3) uint8 numpy array, or an iterable of frames; got {type(frames).__name__}")
    elif total_frames is None:
        raise TypeError(f"frames is a {type(frames).__name__}, read once: pass total_frames=N, the number of "
                        "frames it yields (the decoder's frame count), to choose which to keep before reading")
    indices, sample_fps = sample_frame_indices(total_frames, video_fps, fps)
    budget = frame_pixel_budget(len(indices), min_pixels, max_pixels)
    video = _read_sampled(frames, total_frames, Counter(indices), min_pixels, budget)  # (T, 3, h, w)
    pixel_values, grid_thw = patchify(video)  # (T/2 * h/14 * w/14, 1176), [[T/2, h/14, w/14]]
    return pixel_values, grid_thw, torch.tensor([TEMPORAL / sample_fps], dtype=torch.float32)


def _read_sampled(frames, total_frames: int, wanted: Counter, min_pixels: int, max_pixels: float, *,
                  resize_to: tuple[int, int] | None = None, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Read `frames` once; resize and keep the frames at the `wanted` positions -> (T, 3, h, w) float32.
    `resize_to` (h, w): resize to this instead of smart_resize's choice (Qwen3-VL's rule, qwen3vl/video.py)."""
    video, size, kept, count = None, None, 0, 0
    for position, frame in enumerate(frames):
        if position >= total_frames:
            raise ValueError(f"the frames go on past total_frames={total_frames}; pass the true frame count")
        frame_size = frame.size if isinstance(frame, Image.Image) else tuple(np.shape(frame)[:2][::-1])  # (w, h)
        size = size or frame_size
        if frame_size != size:
            raise ValueError(f"all frames of a video must have one size; frame {position} is {frame_size}, frame 0 "
                             f"is {size} (width, height): resize or crop them to one size first")
        for _ in range(wanted.get(position, 0)):
            rgb = to_rgb(frame)
            if video is None:  # the first kept frame fixes the size of all
                height, width = resize_to or smart_resize(rgb.height, rgb.width, min_pixels=min_pixels,
                                                          max_pixels=max_pixels)
                video = torch.empty(wanted.total(), 3, height, width)  # (T, 3, h, w)
            video[kept] = resize_normalize(rgb, height, width, mean, std)  # (3, h, w)
            kept += 1
        count = position + 1
    if count != total_frames:
        raise ValueError(f"the frames ended after {count}, but total_frames={total_frames}; pass the true count")
    return video
