"""Video inputs for the command line: a video file (decoded with PyAV) or a folder of frames.

    open_video(path, fps) -> VideoFile | FrameFolder   (header only: size, frame count, frame rate)
    source.frames()       -> a generator of every frame, one at a time: (H, W, 3) uint8 / PIL images
    preprocess_source(source, fps) -> (pixel_values_videos (N, 1176), video_grid_thw (1, 3),
                                       second_per_grid_ts (1,))  via preprocess.preprocess_video

A video file is decoded from start to end once; preprocess_video keeps only the sampled frames
(resized) as they go by: at 2 frames per second of a 24 fps clip that is 1 frame in 12, so memory
grows with the frames kept, not with the length of the clip. PyAV (pip package `av`) carries its own
FFmpeg; it is optional (`pip install qvl-minimal[video]`). A folder of frames needs only Pillow:
its image files, in natural order (frame_2 before frame_10), are taken as frames filmed at
`fps` frames per second (default 2, what `ffmpeg -i clip.mp4 -vf fps=2 frame_%04d.jpg` writes),
so every frame is used (except one of an odd count, and any beyond the 768 a video may keep).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .image_files import DAMAGED, load_image
from .preprocess import preprocess_video

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
EXIF_ORIENTATION = 0x0112  # values 5..8 turn the picture by 90 degrees: width and height swap
INSTALL_HINT = "pip install qvl-minimal[video]  (PyAV, which brings its own FFmpeg)"


class VideoError(ValueError):
    """A video the user gave that cannot be read; the message names the file and the fix."""


def is_video_path(path: Path) -> bool:
    """A folder (of frames) or a file whose suffix is a video container's."""
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


def natural_key(path: Path) -> list:
    """frame_2.jpg before frame_10.jpg: digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as it will be shown (EXIF rotation applied), header only."""
    with Image.open(path) as image:
        turned = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
        return (image.height, image.width) if turned else image.size


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError(f"reading video files needs PyAV: {INSTALL_HINT}; or pass a folder of frames") from None
    return av


@dataclass
class VideoFile:
    """A video file's first video stream: its size, frame count and frame rate from the header."""

    path: Path
    width: int
    height: int
    total_frames: int
    video_fps: float

    @classmethod
    def open(cls, path: Path) -> "VideoFile":
        av = _import_av()
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{path}: no video stream in this file (audio only?); give a video")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
                width, height = stream.codec_context.width, stream.codec_context.height
        except av.FFmpegError as err:
            raise VideoError(f"cannot read {path} as a video ({err}); give an .mp4/.mkv/.webm file "
                             "or a folder of frames") from None
        if not rate:
            raise VideoError(f"{path}: the file does not say its frame rate; extract frames with "
                             "`ffmpeg -i FILE -vf fps=2 frames/%04d.jpg` and pass the folder")
        return cls(path, width, height, total, float(rate))

    def frames(self):
        """Every frame, in order, as (H, W, 3) uint8 arrays, decoded one at a time."""
        av = _import_av()
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # decode with several threads
            for frame in itertools.islice(container.decode(stream), self.total_frames):
                yield frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8


@dataclass
class FrameFolder:
    """A folder of image files taken as the frames of a video filmed at `video_fps`."""

    path: Path
    width: int
    height: int
    files: list[Path]
    video_fps: float

    @property
    def total_frames(self) -> int:
        return len(self.files)

    @classmethod
    def open(cls, path: Path, video_fps: float) -> "FrameFolder":
        suffixes = set(Image.registered_extensions())  # every suffix Pillow can read: .jpg, .png, ...
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes), key=natural_key)
        if len(files) < 2:
            raise VideoError(f"{path}: a folder of frames needs at least 2 image files, found {len(files)}; "
                             "for one picture pass the file itself")
        sizes = {}
        for file in files:
            try:
                sizes.setdefault(oriented_size(file), file)
            except (*DAMAGED, Image.DecompressionBombError) as err:  # what Pillow raises on bytes it cannot parse
                raise VideoError(f"cannot read the frame {file} ({err}); remove it or replace it") from None
        if len(sizes) > 1:
            (size_a, file_a), (size_b, file_b) = list(sizes.items())[:2]
            raise VideoError(f"{path}: frames differ in size ({file_a.name} is {size_a[0]} x {size_a[1]} px, "
                             f"{file_b.name} is {size_b[0]} x {size_b[1]}); resize them to one size")
        (width, height), = sizes
        return cls(path, width, height, files, video_fps)

    def frames(self):
        """Every frame, in order, as PIL images, one file at a time."""
        return map(load_image, self.files)


def open_video(path: Path, fps: float) -> VideoFile | FrameFolder:
    """A folder of frames (filmed at `fps`) or a video file, checked from its header only. Frames are
    bounded like images: more pixels per frame than Pillow's decompression-bomb limit is refused (each
    frame is decoded whole before it is shrunk, so a 16k x 16k stream costs 800 MB per frame)."""
    video = FrameFolder.open(path, fps) if path.is_dir() else VideoFile.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and video.width * video.height > limit:
        raise VideoError(f"{path}: frames of {video.width} x {video.height} = {video.width * video.height:,} pixels "
                         f"are over the limit of {limit:,} per frame (Pillow's decompression-bomb limit, as for "
                         "images); scale the video down first, e.g. `ffmpeg -i IN -vf scale=1280:-2 OUT.mp4`")
    return video


def preprocess_source(source: VideoFile | FrameFolder, fps: float = 2.0):
    """Sample `source` at `fps` frames per second with preprocess_video, reading it once, frame by frame."""
    try:
        return preprocess_video(source.frames(), source.video_fps, fps, total_frames=source.total_frames)
    except ValueError as err:  # fewer frames than the header says, a frame of another size
        raise VideoError(f"{source.path}: {err}; re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`, "
                         "or extract its frames into a folder") from None
