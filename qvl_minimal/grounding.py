"""Grounding (视觉定位): boxes and points in an answer, from the model's pixels to the file's.

Qwen2.5-VL answers "where is ...?" with JSON such as

    ```json
    [{"bbox_2d": [84, 120, 220, 318], "label": "red circle"}, {"point_2d": [40, 52], "label": "dot"}]
    ```

in ABSOLUTE PIXELS OF THE IMAGE AS THE MODEL SAW IT: after `smart_resize` (chapter 01) changed its
sides to multiples of 28 within the pixel budget, not of the file on disk. (Qwen2-VL wrote relative
coordinates on a 0-1000 grid; Qwen3-VL went back to 0-1000; `from_relative` reads those.)

    answer text --parse_objects--> [{"label", "bbox_2d" | "point_2d"}, ...]    resized pixels (W2, H2)
                --to_original----> the same objects in the file's pixels (W, H), ordered and clamped
    file pixels --to_resized-----> resized pixels (prompts and training data: the inverse)

x runs along the width, y down the height, both from the top-left corner; a box is [x1, y1, x2, y2]
with x2, y2 exclusive. The scale is per axis: x * W / W2, y * H / H2 (smart_resize changes the two
sides by different factors, so one factor for both would be wrong).

`parse_objects` never raises on junk: text without JSON, objects with the wrong number of numbers,
strings, NaN or infinity, nesting thousands deep all give only the well-formed objects (maybe none).
A list cut off by `max_new_tokens` keeps its complete objects.
"""

from __future__ import annotations

import json
import math
import re

KINDS = {"bbox_2d": 4, "point_2d": 2}  # the geometry keys Qwen2.5-VL writes, and how many numbers each holds
OPENING, BRACKET_RUN = re.compile(r"[\[{]"), re.compile(r"[\s\[{]*")
MAX_TEXT = 32_768  # characters of an answer searched for JSON (hundreds of boxes; a real answer is shorter)


def parse_objects(text: str) -> list[dict]:
    """The objects in `text`: each {"bbox_2d": [x1, y1, x2, y2]} and/or {"point_2d": [x, y]}, with "label" if given."""
    if not isinstance(text, str):
        return []
    objects = []
    for value in _json_values(text[:MAX_TEXT]):
        for candidate in (value if isinstance(value, list) else [value]):
            obj = _well_formed(candidate)
            if obj is not None:
                objects.append(obj)
    return objects


def _json_values(text: str):
    """Every JSON object or list in `text`, left to right, each tried at every '{' or '[' not inside an
    earlier match: prose, ```json fences and a cut-off tail are skipped over."""
    decoder, start = json.JSONDecoder(), 0
    while (bracket := OPENING.search(text, start)) is not None:
        i = bracket.start()
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:  # not JSON from here: try the next bracket
            start = i + 1
            continue
        except RecursionError:  # nested too deep for any answer: skip the whole run of brackets
            start = BRACKET_RUN.match(text, i).end()
            continue
        yield value
        start = end


def _finite_numbers(value, count: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != count:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return list(value)


def _well_formed(candidate) -> dict | None:
    """`candidate` reduced to its label and geometry, or None when it has no well-formed geometry."""
    if not isinstance(candidate, dict):
        return None
    obj = {}
    label = candidate.get("label")
    if isinstance(label, str):
        obj["label"] = label
    for key, count in KINDS.items():
        numbers = _finite_numbers(candidate.get(key), count)
        if numbers is not None:
            obj[key] = numbers
    return obj if any(key in obj for key in KINDS) else None


def _check_size(name: str, size) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"{name}={size!r}: give (width, height) in pixels, two positive integers")
    return size[0], size[1]


def _map(objects: list[dict], source, target, rounding=None) -> list[dict]:
    """Objects scaled per axis from a `source` (W, H) to a `target` (W, H) image, boxes ordered
    (x1 <= x2, y1 <= y2), everything clamped to the target."""
    finish = rounding or (lambda v: v)
    (sw, sh), (tw, th) = source, target

    def x(v):
        return finish(min(max(v * tw / sw, 0), tw))  # multiply first: 322 * 657 / 644 is exactly 328.5

    def y(v):
        return finish(min(max(v * th / sh, 0), th))

    mapped = []
    for obj in objects:
        out = {k: v for k, v in obj.items() if k not in KINDS}
        if "bbox_2d" in obj:
            x1, y1, x2, y2 = obj["bbox_2d"]
            out["bbox_2d"] = [x(min(x1, x2)), y(min(y1, y2)), x(max(x1, x2)), y(max(y1, y2))]
        if "point_2d" in obj:
            px, py = obj["point_2d"]
            out["point_2d"] = [x(px), y(py)]
        mapped.append(out)
    return mapped


def to_original(objects: list[dict], image_size, resized_size) -> list[dict]:
    """Objects in the resized image's pixels (what the model writes) -> pixels of the original image.

    image_size = (W, H) of the file; resized_size = (W2, H2) from smart_resize (or image_grid_thw's
    (w, h) x 14, `resized_size_from_grid`). Boxes come back ordered and clamped to [0, W] x [0, H].
    """
    return _map(objects, _check_size("resized_size", resized_size), _check_size("image_size", image_size))


def to_resized(objects: list[dict], image_size, resized_size) -> list[dict]:
    """The inverse of `to_original`: the file's pixels -> the pixels the model sees, rounded to whole pixels
    (what a prompt or a training answer should say)."""
    return _map(objects, _check_size("image_size", image_size), _check_size("resized_size", resized_size), round)


def from_relative(objects: list[dict], image_size, scale: int = 1000) -> list[dict]:
    """Qwen2-VL's and Qwen3-VL's convention: coordinates on a 0-`scale` grid -> pixels of the image."""
    return _map(objects, (scale, scale), _check_size("image_size", image_size))


def resized_size_from_grid(grid_thw, patch_size: int = 14) -> tuple[int, int]:
    """(W2, H2) of the image the model saw, from its row of image_grid_thw: (t, h, w) in patches."""
    _, gh, gw = (int(v) for v in grid_thw)
    return gw * patch_size, gh * patch_size


def draw_objects(image, objects: list[dict], colour=(230, 20, 20)):
    """A copy of the PIL `image` with each box drawn as a rectangle and each point as a dot, labelled."""
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    pen = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 200))  # lines stay visible on large photos
    for obj in objects:
        anchor = None
        if "bbox_2d" in obj:
            x1, y1, x2, y2 = obj["bbox_2d"]
            pen.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)  # x2, y2 exclusive
            anchor = (x1, y1)
        if "point_2d" in obj:
            px, py = obj["point_2d"]
            r = 2 * width
            pen.ellipse([px - r, py - r, px + r, py + r], fill=colour)
            anchor = anchor or (px + r, py - r)
        if obj.get("label"):
            tx, ty = anchor[0], max(0, anchor[1] - 12)
            box = pen.textbbox((tx, ty), obj["label"])
            pen.rectangle(box, fill=colour)
            pen.text((tx, ty), obj["label"], fill=(255, 255, 255))
    return canvas
