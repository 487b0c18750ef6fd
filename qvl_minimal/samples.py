"""Sample inputs that ship with installed packages (no network, no files of our own)."""

from PIL import Image


def sample_photo() -> Image.Image:
    """Grace Hopper, 512 x 600 px RGB: the photo matplotlib ships as `grace_hopper.jpg`."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")  # converting loads the pixels before f closes
