"""Image FILES -> PIL images in mode RGB, as the model should see them, with errors that name the file.

preprocess.py takes images already open (as the reference processor does: convert("RGB"), nothing
more); a file from a phone or the web needs more care, and `load_image` gives it: EXIF orientation,
transparency pasted on white, 16-bit grey scaled, decompression bombs and damaged files refused.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

from .preprocess import paste_on_white, to_rgb

class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file and the fix."""


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # grey, 0..65535 (PNG's 16-bit grey opens as I;16)
# What Pillow raises on bytes it cannot make sense of: OSError("Truncated File Read") for a JPEG cut inside
# its header, SyntaxError("broken PNG file") for a PNG chunk length that lies, TypeError or ValueError
# for a TIFF tag of the wrong type, struct.error, EOFError ... Each becomes an ImageFileError naming the file.
DAMAGED = (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, struct.error)


def load_image(path) -> Image.Image:
    """Open an image FILE as the model should see it -> a PIL image in mode RGB.

    1. The EXIF orientation is applied (ImageOps.exif_transpose), as transformers' and qwen-vl-utils'
       loading helpers do: a phone photo tagged "rotate 90" comes out upright, not sideways.
    2. Transparency of any kind (RGBA, LA, PA, a palette / grey / RGB image with a transparent
       colour) is pasted on white, as qwen-vl-utils does (`paste_on_white`).
    3. 16-bit grey (mode I;16, or I with values in 0..65535) is scaled to 8 bits, v * 255 / 65535
       rounded (PIL's own conversion would clip everything above 255 to white); other wide modes
       (F, I outside 0..65535) are an error. Everything else: convert("RGB").
    An image already open (preprocess_image(image)) is only converted, as the reference processor does.
    Errors: FileNotFoundError; ImageFileError (a ValueError, its message starts with the path) for a
    file that is not an image, is damaged or truncated anywhere (header or pixels), or has more pixels
    than Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS).
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, as an error
            image = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file {path}") from None
    except Image.DecompressionBombError as err:
        raise ImageFileError(f"{path}: {err} A small file that unpacks to a huge image; if you trust it, "
                             "raise PIL.Image.MAX_IMAGE_PIXELS or shrink the image first.") from None
    except DAMAGED as err:  # UnidentifiedImageError, a directory, a header cut short, a broken header field
        raise ImageFileError(f"{path}: not an image Pillow can read, or a damaged one ({err})") from None
    with image:
        width, height = image.size
        if limit and width * height > limit:
            raise ImageFileError(f"{path}: {width} x {height} = {width * height:,} pixels is over Pillow's "
                                 f"decompression-bomb limit of {limit:,} (a small file can unpack to a huge "
                                 "image); if you trust it, raise PIL.Image.MAX_IMAGE_PIXELS or shrink it first.")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)  # a new image, upright
        except DAMAGED as err:
            raise ImageFileError(f"{path}: the file is damaged or truncated ({err}); download it again") from None
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageFileError(f"{path}: mode {image.mode!r} with values {values.min()}..{values.max()}, outside "
                                 "16-bit 0..65535: scale it to 8 bits yourself")
        grey = (values.astype(np.float64) * (255 / 65535)).round().astype(np.uint8)  # (h, w)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise ImageFileError(f"{path}: mode 'F' (32-bit float pixels) has no agreed 8-bit scale; "
                             "convert it to 8 bits yourself")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return paste_on_white(image.convert("RGBA"))
    return to_rgb(image)
