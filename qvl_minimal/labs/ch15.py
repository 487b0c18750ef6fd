"""Chapter 15's exercises: coordinates between the file and the image the model sees.

    15.1  model_box(box [x1, y1, x2, y2] in the file's pixels, file_size (W, H), max_pixels)
          -> the box the model should write: whole pixels of the resized image, ordered and clamped
    15.2  quiz: where the model's box [644, 336, 1288, 672] lands in a 1920 x 1080 screenshot
          (default pixel budget), as four whole pixels

Checked against the library (`grounding.to_resized` / `to_original` with `preprocess.smart_resize`)
on files that smart_resize changes in every way: tall, wide, tiny (grown), over the budget (shrunk).
"""

from __future__ import annotations

from ..grounding import to_original, to_resized
from ..preprocess import smart_resize
from .core import assert_answer, exercise

CASES = [  # (box in the file, (W, H) of the file, max_pixels, what)
    ([160, 125, 365, 330], (512, 600), 12845056, "the sample photo, default budget"),
    ([640, 500, 1460, 1320], (2048, 2400), 1003520, "the photo enlarged 4x, --max-pixels 1003520 (shrunk)"),
    ([3, 2, 17, 9], (30, 20), 12845056, "a 30 x 20 icon (grown to the minimum)"),
    ([10, 900, 290, 1000], (300, 1000), 12845056, "a tall strip"),
    ([400, 10, 1000, 290], (1000, 300), 200704, "a wide strip, a small budget"),
    ([120, 80, 20, 10], (431, 657), 12845056, "corners given in the wrong order"),
    ([-40, 30, 700, 900], (657, 431), 12845056, "a box that sticks out of the image"),
]


def _expected(box, size, max_pixels):
    h2, w2 = smart_resize(size[1], size[0], max_pixels=max_pixels)
    return to_resized([{"bbox_2d": box}], size, (w2, h2))[0]["bbox_2d"]


@exercise("15.1", "a box from the file to what the model sees")
def _(model_box) -> str:
    for box, size, max_pixels, what in CASES:
        mine = model_box(list(box), size, max_pixels)
        expected = _expected(box, size, max_pixels)
        if not isinstance(mine, (list, tuple)) or len(mine) != 4:
            raise AssertionError(f"{what}: return four numbers [x1, y1, x2, y2], got {mine!r}")
        if [round(v) for v in mine] != expected or any(v != round(v) for v in mine):
            hint = ("whole pixels, each axis scaled by its own factor (resized / file), the corners ordered and "
                    "clamped to the resized image; smart_resize takes (height, width)")
            raise AssertionError(f"{what}: not the box the model sees ({hint})")
    return f"{len(CASES)} files, exact"


SCREENSHOT, SCREEN_ANSWER = (1920, 1080), [644, 336, 1288, 672]


def _screenshot_box() -> list[int]:
    h2, w2 = smart_resize(SCREENSHOT[1], SCREENSHOT[0])
    box = to_original([{"bbox_2d": SCREEN_ANSWER}], SCREENSHOT, (w2, h2))[0]["bbox_2d"]
    return [round(v) for v in box]


@exercise("15.2", "where the screenshot's box lands", expected=_screenshot_box)
def _(answer) -> str:
    assert_answer(list(answer) if isinstance(answer, (list, tuple)) else answer, _screenshot_box(),
                  "the box in the screenshot's pixels, four whole numbers",
                  hint="find the size the model saw first (round each side to a multiple of 28), then scale each axis")
    return "right"
