"""The training task: seeded pictures of coloured shapes, and three questions about each
(chapter 14).

    draw_scene(rng)           -> Scene: 1 to 3 shapes on a white 112 x 112 RGB image
    make_example(split, seed, index) -> Example(image (112, 112, 3) uint8, question, answer, kind)

The rules (anyone can draw more examples from them without this code):
- a white RGB image of 112 x 112 px with 1 to 3 shapes, each kind at most once; kinds square,
  circle, triangle (apex up at the middle of its box's top, base along its box's bottom);
- colours red (220, 30, 30), green (30, 160, 60), blue (40, 70, 220); colours may repeat;
- each shape fills a square box of side 20 to 36 px; boxes at least 3 px apart, inside the image;
- questions and answers (each answer then ends the assistant's turn with <|im_end|>):
    "What colour is the circle?"  -> "red"
    "How many shapes are there?"  -> "2"
    "Where is the red circle?"    -> '{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}'
  the box in pixels of the image as the model sees it (112 x 112 is not resized), x2 and y2 exclusive.

A pixel belongs to a shape when its centre (x + 0.5, y + 0.5) lies inside it: the whole box for a
square, the inscribed disc for a circle, the triangle (x1 + s/2, y1), (x1, y2), (x2, y2) for a
triangle. Every example comes from its own `random.Random(f"{split}:{seed}:{index}")`, so the
training split ("train", seed S) and the held-out split ("heldout") never share a generator.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np

SIZE = 112  # image side in px: a multiple of 28, so smart_resize keeps it (8 x 8 patches, 16 tokens)
KINDS = ("square", "circle", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220)}
SIDE = (20, 36)  # box side in px, both ends allowed
GAP = 3  # px between any two boxes
QUESTION_KINDS = ("colour", "count", "box")


@dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS
    colour: str  # a key of the colour table
    box: tuple[int, int, int, int]  # (x1, y1, x2, y2) in px, x2 and y2 exclusive


@dataclass(frozen=True)
class Example:
    image: np.ndarray  # (112, 112, 3) uint8
    shapes: tuple[Shape, ...]
    question: str
    answer: str  # without <|im_end|>
    kind: str  # "colour", "count" or "box"


def _apart(a, b, gap: int = GAP) -> bool:
    """Are two boxes at least `gap` px apart (along x or along y)?"""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def shape_mask(kind: str, box, size: int = SIZE) -> np.ndarray:
    """(size, size) bool: the pixels whose centre lies inside the shape."""
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, (size, size) each
    inside_box = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    if kind == "square":
        return inside_box
    side = x2 - x1
    if kind == "circle":
        return (xs - (x1 + side / 2)) ** 2 + (ys - (y1 + side / 2)) ** 2 <= (side / 2) ** 2
    if kind == "triangle":  # apex (x1 + s/2, y1); at height y the width grows linearly to s at y2
        half_width = (ys - y1) / side * side / 2  # (size, size)
        return inside_box & (np.abs(xs - (x1 + side / 2)) <= half_width)
    raise ValueError(f"unknown shape kind {kind!r}; choose one of {KINDS}")


def draw_scene(rng: random.Random, colours: dict = COLOURS) -> tuple[np.ndarray, tuple[Shape, ...]]:
    """1 to 3 shapes of distinct kinds on white -> (image (112, 112, 3) uint8, shapes in drawing order)."""
    kinds = rng.sample(KINDS, rng.randint(1, 3))
    shapes, boxes = [], []
    for kind in kinds:
        colour = rng.choice(sorted(colours))
        while True:  # rejection sampling: 3 boxes of at most 36 px always fit in 112 px
            side = rng.randint(*SIDE)
            x1, y1 = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
            box = (x1, y1, x1 + side, y1 + side)
            if all(_apart(box, other) for other in boxes):
                break
        boxes.append(box)
        shapes.append(Shape(kind, colour, box))
    image = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)  # (112, 112, 3) white
    for shape in shapes:
        image[shape_mask(shape.kind, shape.box)] = colours[shape.colour]
    return image, tuple(shapes)


def box_answer(shape: Shape) -> str:
    """Qwen2.5-VL's grounding answer: {"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}."""
    return json.dumps({"bbox_2d": list(shape.box), "label": f"{shape.colour} {shape.kind}"})


def ask(shapes, kind: str, rng: random.Random) -> tuple[str, str]:
    """One question of `kind` about these shapes -> (question, answer)."""
    if kind == "count":
        return "How many shapes are there?", str(len(shapes))
    shape = rng.choice(shapes)
    if kind == "colour":
        return f"What colour is the {shape.kind}?", shape.colour
    if kind == "box":
        return f"Where is the {shape.colour} {shape.kind}?", box_answer(shape)
    raise ValueError(f"unknown question kind {kind!r}; choose one of {QUESTION_KINDS}")


def make_example(split: str, seed: int, index: int, kinds=QUESTION_KINDS, colours: dict = COLOURS) -> Example:
    """Example number `index` of a split ("train" with the run's seed, "heldout" for evaluation)."""
    rng = random.Random(f"{split}:{seed}:{index}")
    image, shapes = draw_scene(rng, colours)
    kind = rng.choice(kinds)
    question, answer = ask(shapes, kind, rng)
    return Example(image, shapes, question, answer, kind)


def held_out(n: int, kinds=QUESTION_KINDS, colours: dict = COLOURS, start: int = 0) -> list[Example]:
    """The held-out set: examples start .. start + n - 1 of the "heldout" split, which no training run draws from."""
    return [make_example("heldout", 0, i, kinds, colours) for i in range(start, start + n)]
