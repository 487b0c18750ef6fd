"""`describe --boxes OUT.png`: the answer's boxes and points, drawn on the user's own pictures.

    check_boxes_path(out, media)            before the model loads: images given, folder exists, a format PIL writes
    draw_answer(answer, media, out)         parse_objects -> to_original (per image) -> draw_objects -> OUT.png
                                            -> (objects as written, [{path, objects in the file's pixels}], files)

The model writes coordinates in pixels of the image as it saw it (after smart_resize); each image
is drawn with the objects mapped to its own file's pixels (grounding.py, chapter 15). With several
images the answer does not say which image a box belongs to, so every image gets every object,
one file each: OUT-1.png, OUT-2.png, ... in the order the images were given.
"""

from __future__ import annotations

from pathlib import Path

from .cli_inputs import UserError
from .grounding import draw_objects, parse_objects, resized_size_from_grid, to_original
from .preprocess import PATCH, smart_resize

WRITABLE = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT itself for one image; OUT-1, OUT-2, ... (same suffix) for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, count + 1)]


def check_boxes_path(out: str, media) -> Path:
    """The --boxes path, checked before anything expensive runs."""
    path = Path(out)
    if not media.images:
        raise UserError("--boxes draws on images, and no image was given (boxes on video frames are not drawn); "
                        "give an image, or leave out --boxes")
    if path.suffix.lower() not in WRITABLE:
        raise UserError(f"--boxes {out}: name the picture to write with an image suffix, e.g. boxes.png "
                        f"(one of {', '.join(sorted(WRITABLE))})")
    if not path.parent.is_dir():
        raise UserError(f"--boxes {out}: the folder {path.parent} does not exist; create it or choose another path")
    for target in output_paths(path, len(media.images)):
        if target.is_dir():
            raise UserError(f"--boxes: {target} is a folder; choose a file name such as {target / 'boxes.png'}")
    return path


def draw_answer(answer: str, media, out: Path, grids=None) -> tuple[list[dict], list[dict], list[Path]]:
    """Parse `answer`, map its objects to each image's pixels and draw them (see the module docstring).

    grids: each image's (t, h, w) patch grid as preprocessed (None: smart_resize of the image again).
    -> (objects as the model wrote them, one {"path", "objects"} per image in the file's pixels, files written)
    """
    objects = parse_objects(answer)
    per_image, written = [], []
    if not objects:
        return objects, per_image, written
    for i, ((path, image), target) in enumerate(zip(media.images, output_paths(out, len(media.images)))):
        if grids is not None:
            resized = resized_size_from_grid(grids[i], PATCH)
        else:
            h2, w2 = smart_resize(image.height, image.width)
            resized = (w2, h2)
        mapped = to_original(objects, image.size, resized)
        per_image.append({"path": str(path), "size": list(image.size), "resized_size": list(resized), "objects": mapped})
        try:
            draw_objects(image, mapped).save(target)
        except OSError as err:
            raise UserError(f"--boxes: cannot write {target}: {err.strerror or err}") from None
        written.append(target)
    return objects, per_image, written
