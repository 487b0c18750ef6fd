"""Grounding (grounding.py): every form of answer the model writes, junk that must not raise, and
the mapping between the file's pixels and the resized image's, against the reference's smart_resize."""

import math

import pytest
import torch
from PIL import Image

from qvl_minimal.grounding import (draw_objects, from_relative, parse_objects, resized_size_from_grid,
                                   to_original, to_resized)
from qvl_minimal.preprocess import smart_resize
from qvl_minimal.reference import _transformers, reference_image_processor

BOX = {"bbox_2d": [84, 120, 220, 318], "label": "red circle"}
POINT = {"point_2d": [40, 52], "label": "dot"}


@pytest.mark.parametrize("text, expected", [
    ('{"bbox_2d": [84, 120, 220, 318], "label": "red circle"}', [BOX]),                        # one object
    ('[{"bbox_2d": [84, 120, 220, 318], "label": "red circle"}, {"point_2d": [40, 52], "label": "dot"}]',
     [BOX, POINT]),                                                                            # a list
    ('```json\n[\n  {"bbox_2d": [84, 120, 220, 318], "label": "red circle"}\n]\n```', [BOX]),  # in a fence
    ('The circle is here: {"bbox_2d": [84, 120, 220, 318], "label": "red circle"}. Done.', [BOX]),  # after prose
    ('{"bbox_2d": [84.5, 120, 220, 318.25]}', [{"bbox_2d": [84.5, 120, 220, 318.25]}]),     # floats, no label
    ('[{"bbox_2d": [84, 120, 220, 318], "label": "red circle"}, {"bbox_2d": [5, 6',
     [BOX]),                                                                                    # cut off: keeps the whole one
    ('[{"bbox_2d": [84, 120, 220, 318], "label": "red circle"}, {"point_2d": [40, 52], "label": "dot"}, {"poi',
     [BOX, POINT]),
    ('first {"point_2d": [40, 52], "label": "dot"} then ```json\n{"bbox_2d": [84, 120, 220, 318], '
     '"label": "red circle"}\n```', [POINT, BOX]),                                            # two places, in order
])
def test_parse_forms(text, expected):
    assert parse_objects(text) == expected


@pytest.mark.parametrize("junk", [
    "", "no JSON at all", "{}", "[]", "[1, 2, 3, 4]", '{"bbox_2d": [1, 2, 3]}', '{"bbox_2d": [1, 2, 3, 4, 5]}',
    '{"point_2d": [1]}', '{"bbox_2d": ["1", "2", "3", "4"]}', '{"bbox_2d": [NaN, 2, 3, 4]}',
    '{"bbox_2d": [Infinity, 2, 3, 4]}', '{"bbox_2d": [1, 2, 3, -Infinity]}', '{"bbox_2d": [true, 2, 3, 4]}',
    '{"bbox_2d": {"x": 1}}', '{"bbox_2d": null}', '{"bbox_2d": [1e999, 2, 3, 4]}', "{" * 5000, "[" * 5000,
    "{" * 5000 + "}" * 5000, '{"a":' * 5000 + "1" + "}" * 5000, '[{"label": "no geometry"}]', None, 42,
])
def test_junk_gives_only_well_formed_objects(junk):
    assert parse_objects(junk) == []


def test_junk_beside_good_objects():
    text = '[{"bbox_2d": [1, 2, 3]}, {"bbox_2d": [84, 120, 220, 318], "label": "red circle"}, ' \
           '{"point_2d": [NaN, 1]}, {"point_2d": [40, 52], "label": "dot"}, {"bbox_2d": [1, 2, 3, 4], "label": 7}]'
    assert parse_objects(text) == [BOX, POINT, {"bbox_2d": [1, 2, 3, 4]}]  # a non-string label is dropped, not the box


# (height, width) of files that smart_resize changes: tall, wide, tiny (grown), over the budget (shrunk), odd
SIZES = [(1000, 300), (300, 1000), (20, 30), (5000, 4000), (431, 657), (600, 512)]


@pytest.mark.parametrize("height, width", SIZES)
def test_resized_size_is_the_references(height, width):
    """The resized size our mapping uses equals the reference's smart_resize and its image_grid_thw x 14."""
    ref_resize = _transformers().models.qwen2_vl.image_processing_qwen2_vl.smart_resize
    h2, w2 = smart_resize(height, width)
    assert (h2, w2) == ref_resize(height, width, factor=28, min_pixels=3136, max_pixels=12845056)
    if height * width <= 1000 * 1000:  # the reference processor on a real image (the big one is slow)
        image = Image.new("RGB", (width, height), (200, 100, 50))
        grid = reference_image_processor()(images=[image], return_tensors="pt")["image_grid_thw"][0]
        assert resized_size_from_grid(grid) == (w2, h2)
    assert (h2, w2) != (height, width)  # every case really is resized


@pytest.mark.parametrize("height, width", SIZES)
def test_mapping_scales_each_axis(height, width):
    h2, w2 = smart_resize(height, width)
    box = {"bbox_2d": [w2 / 4, h2 / 5, w2 / 2, h2 * 0.75], "label": "thing"}
    (back,) = to_original([box], image_size=(width, height), resized_size=(w2, h2))
    expected = [width / 4, height / 5, width / 2, height * 0.75]
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(back["bbox_2d"], expected)), (back, expected)
    assert back["label"] == "thing"
    (again,) = to_resized([back], image_size=(width, height), resized_size=(w2, h2))
    assert again["bbox_2d"] == [round(v) for v in box["bbox_2d"]]  # the inverse, to whole pixels


def test_worked_example_changes_both_sides():
    """A 657 x 431 photo is seen as 644 x 420: a box at x = 322 in the answer is x = 328.5 in the file."""
    assert smart_resize(431, 657) == (420, 644)
    (obj,) = to_original([{"bbox_2d": [322, 210, 644, 420]}], image_size=(657, 431), resized_size=(644, 420))
    assert obj["bbox_2d"] == [322 * 657 / 644, 210 * 431 / 420, 657, 431]


def test_clamping_and_ordering():
    objects = [{"bbox_2d": [300, 250, -20, 10]}, {"point_2d": [-5, 900]}, {"bbox_2d": [10, 10, 5000, 5000]}]
    boxes = to_original(objects, image_size=(200, 100), resized_size=(200, 100))
    assert boxes == [{"bbox_2d": [0, 10, 200, 100]}, {"point_2d": [0, 100]}, {"bbox_2d": [10, 10, 200, 100]}]
    assert to_resized(objects, image_size=(400, 200), resized_size=(200, 100))[0]["bbox_2d"] == [0, 5, 150, 100]


def test_relative_grids_of_qwen2_and_qwen3():
    (obj,) = from_relative([{"bbox_2d": [0, 500, 250, 1000], "point_2d": [1000, 0]}], image_size=(640, 480))
    assert obj == {"bbox_2d": [0, 240, 160, 480], "point_2d": [640, 0]}


@pytest.mark.parametrize("bad", [(0, 10), (10,), "640x480", (10.0, 20), (True, 5), None])
def test_sizes_are_checked(bad):
    with pytest.raises(ValueError, match="width, height"):
        to_original([BOX], image_size=bad, resized_size=(10, 10))


def test_draw_marks_the_box_and_keeps_the_original():
    image = Image.new("RGB", (120, 80), (255, 255, 255))
    drawn = draw_objects(image, [{"bbox_2d": [20, 30, 60, 70], "label": "a"}, {"point_2d": [100, 20]}])
    pixels = torch.tensor(list(drawn.getdata())).view(80, 120, 3)
    assert drawn.size == image.size and image.getpixel((20, 50)) == (255, 255, 255)  # a copy
    assert pixels[50, 20].tolist() != [255, 255, 255] and pixels[50, 59].tolist() != [255, 255, 255]  # left, right edges
    assert pixels[50, 40].tolist() == [255, 255, 255]  # inside the box: untouched
    assert pixels[20, 100].tolist() != [255, 255, 255]  # the point
