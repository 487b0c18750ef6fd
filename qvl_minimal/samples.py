"""Sample inputs that ship with installed packages (no network, no files of our own)."""

import numpy as np
from PIL import Image


def sample_photo() -> Image.Image:
    """Grace Hopper, 512 x 600 px RGB: the photo matplotlib ships as `grace_hopper.jpg`."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")  # converting loads the pixels before f closes


# (left, top, width) of the crop box at the first and the last frame, in photo pixels (photo: 512 x 600)
FIRST_BOX, LAST_BOX = (0.0, 234.0, 512.0), (134.0, 128.0, 256.0)


def sample_clip(seconds: float = 4.0, video_fps: float = 24.0, height: int = 280, width: int = 392) -> np.ndarray:
    """A clip "filmed" over the sample photo: (frames, height, width, 3) uint8, frames = seconds * video_fps.

    The crop box (aspect height:width) glides linearly from FIRST_BOX (the whole width, over the
    medals) to LAST_BOX (the face, half the width): a tilt up plus a 2x zoom. Each crop is resized
    to height x width with PIL's bilinear filter. Deterministic: no randomness, no files.
    """
    photo = sample_photo()
    n = round(seconds * video_fps)
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    for i, a in enumerate(np.linspace(0.0, 1.0, n)):
        left, top, box_w = ((1 - a) * p + a * q for p, q in zip(FIRST_BOX, LAST_BOX))
        box = (left, top, left + box_w, top + box_w * height / width)
        frames[i] = np.asarray(photo.resize((width, height), Image.BILINEAR, box=box))
    return frames
