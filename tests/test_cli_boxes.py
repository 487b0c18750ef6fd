"""`describe --boxes`: a forced answer on the small stand-in, drawn on the user's own pictures.

The stand-in's random weights answer noise, so `generate` is replaced by one that "answers" a fixed
text (its tokens, streamed as the real one streams them). Everything else is the real path:
checks, preprocessing, the load, parsing, mapping per image and drawing.
"""

import json

import pytest
import torch
from PIL import Image

from qvl_minimal.__main__ import main
from qvl_minimal.grounding import to_original
from qvl_minimal.model import Qwen25VL
from qvl_minimal.preprocess import smart_resize
from qvl_minimal.standin import standin_checkpoint
from qvl_minimal.tokenizer_files import load_tokenizer

ANSWER = '```json\n[{"bbox_2d": [28, 28, 140, 112], "label": "block"}, {"point_2d": [190, 40], "label": "dot"}]\n```'


@pytest.fixture(scope="module")
def checkpoint():
    return str(standin_checkpoint("small"))


@pytest.fixture()
def answer(monkeypatch, checkpoint):
    """Make the model answer `text` (set answer.text before running)."""
    tokenizer = load_tokenizer(checkpoint)

    class Forced:
        text = ANSWER

    def generate(self, input_ids, on_token=None, **kwargs):
        ids = torch.tensor([tokenizer.encode(Forced.text) + [151645]])  # (1, n): the answer, then <|im_end|>
        for step in range(ids.shape[1]):
            if on_token is not None:
                on_token(ids[:, step])
        return ids

    monkeypatch.setattr(Qwen25VL, "generate", generate)
    return Forced


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two white pictures whose sizes smart_resize changes on both sides (one wide, one tall)."""
    folder = tmp_path_factory.mktemp("boxes")
    Image.new("RGB", (250, 150), (255, 255, 255)).save(folder / "wide.png")
    Image.new("RGB", (130, 290), (255, 255, 255)).save(folder / "tall.png")
    return folder


def run(capsys, *argv):
    rc = main(["describe", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_one_image_drawn_where_the_file_has_the_box(photos, checkpoint, answer, capsys, tmp_path):
    out = tmp_path / "drawn.png"
    rc, stdout, err = run(capsys, photos / "wide.png", "--checkpoint", checkpoint, "--boxes", out, "--json")
    assert rc == 0, err
    result = json.loads(stdout)
    h2, w2 = smart_resize(150, 250)
    assert (w2, h2) == (252, 140)  # both sides changed: 250 -> 252, 150 -> 140
    expected = to_original([{"bbox_2d": [28, 28, 140, 112], "label": "block"},
                            {"point_2d": [190, 40], "label": "dot"}], (250, 150), (w2, h2))
    assert result["objects"] == [{"label": "block", "bbox_2d": [28, 28, 140, 112]},
                                 {"label": "dot", "point_2d": [190, 40]}]  # as the model wrote them
    (image,) = result["objects_original"]
    assert image["objects"] == expected and image["resized_size"] == [252, 140] and image["size"] == [250, 150]
    assert result["boxes_files"] == [str(out)] and f"drew 2 object(s) on {out}" in err
    drawn = Image.open(out).convert("RGB")
    x1, y1, x2, y2 = (round(v) for v in expected[0]["bbox_2d"])
    assert drawn.size == (250, 150)
    assert drawn.getpixel((x1, (y1 + y2) // 2)) != (255, 255, 255)  # the box's left edge, in the file's pixels
    assert drawn.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == (255, 255, 255)  # its inside, untouched
    px, py = (round(v) for v in expected[1]["point_2d"])
    assert drawn.getpixel((px, py)) != (255, 255, 255)


def test_several_images_one_file_each(photos, checkpoint, answer, capsys, tmp_path):
    out = tmp_path / "both.png"
    rc, stdout, err = run(capsys, photos / "wide.png", photos / "tall.png", "--checkpoint", checkpoint,
                          "--boxes", out)
    assert rc == 0, err
    first, second = tmp_path / "both-1.png", tmp_path / "both-2.png"
    assert not out.exists() and first.exists() and second.exists()
    assert Image.open(first).size == (250, 150) and Image.open(second).size == (130, 290)
    assert "drew 2 object(s)" in err.strip().splitlines()[-1]


def test_an_answer_without_objects_writes_nothing(photos, checkpoint, answer, capsys, tmp_path):
    answer.text = "I see a white picture."
    out = tmp_path / "none.png"
    rc, stdout, err = run(capsys, photos / "wide.png", "--checkpoint", checkpoint, "--boxes", out)
    assert rc == 0 and not out.exists()
    assert err.strip().splitlines()[-1] == "no boxes or points in the answer: nothing drawn"


@pytest.mark.parametrize("target, message", [
    ("boxes.txt", "image suffix"),
    ("missing/boxes.png", "does not exist"),
])
def test_bad_boxes_paths_are_refused_before_loading(photos, checkpoint, capsys, tmp_path, monkeypatch, target, message):
    from qvl_minimal import weights

    monkeypatch.setattr(weights, "load_pretrained", lambda *a, **k: pytest.fail("loaded before the check"))
    rc, _, err = run(capsys, photos / "wide.png", "--checkpoint", checkpoint, "--boxes", tmp_path / target)
    assert rc == 2 and err.startswith("error: --boxes") and message in err and "Traceback" not in err


def test_boxes_need_an_image(checkpoint, capsys, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        Image.new("RGB", (56, 56), (i * 60, 0, 0)).save(frames / f"{i}.png")
    rc, _, err = run(capsys, frames, "--checkpoint", checkpoint, "--boxes", tmp_path / "b.png")
    assert rc == 2 and "no image was given" in err
