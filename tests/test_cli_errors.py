"""`describe` with every mistake a user can make: one `error:` line with the fix, exit code 2,
no traceback, and the model never loaded (load_pretrained is replaced by a function that fails)."""

import json
import os
import struct
import subprocess
import sys

import pytest
from PIL import Image

from qvl_minimal import sample_photo, weights
from qvl_minimal.__main__ import main
from qvl_minimal.standin import standin_checkpoint


@pytest.fixture(autouse=True)
def model_must_not_load(monkeypatch):
    def load_pretrained(*args, **kwargs):
        raise AssertionError("the model was loaded although an input is wrong")

    monkeypatch.setattr(weights, "load_pretrained", load_pretrained)


@pytest.fixture(scope="module")
def checkpoint():
    return standin_checkpoint("small")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    sample_photo().resize((128, 150)).save(path)
    return path


def broken_copy(checkpoint, folder, skip=()):
    """A copy of the checkpoint made of links to its files, without the files named in `skip`."""
    folder.mkdir()
    for file in checkpoint.iterdir():
        if file.name not in skip:
            (folder / file.name).symlink_to(file)
    return folder


def assert_user_error(capsys, argv, *needles):
    rc = main(["describe", *map(str, argv)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_missing_image(checkpoint, tmp_path, capsys):
    assert_user_error(capsys, [tmp_path / "nowhere.jpg", "--checkpoint", checkpoint], "no such file", "nowhere.jpg")


def test_unreadable_image(checkpoint, tmp_path, capsys):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    assert_user_error(capsys, [bad, "--checkpoint", checkpoint], "cannot read the image", "not_an_image.jpg")


@pytest.mark.parametrize("keep", [30, 600, 3000])  # cut inside the header (Pillow: "Truncated File Read"), the pixels
def test_truncated_image(checkpoint, photo, tmp_path, capsys, keep):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:keep])
    line = assert_user_error(capsys, [cut, "--checkpoint", checkpoint], "cannot read the image", "cut.jpg")
    assert line.count("cut.jpg") == 1  # named once


def test_aspect_ratio_over_the_limit(checkpoint, tmp_path, capsys):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (3000, 10)).save(wide)
    assert_user_error(capsys, [wide, "--checkpoint", checkpoint], "wide.png", "300.0:1", "200:1", "crop")


def test_second_image_checked_too(checkpoint, photo, tmp_path, capsys):
    assert_user_error(capsys, [photo, tmp_path / "b.jpg", "--checkpoint", checkpoint], "b.jpg")


@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question(checkpoint, photo, capsys, question):
    assert_user_error(capsys, [photo, "--checkpoint", checkpoint, "--question", question], "question is empty")


@pytest.mark.parametrize("option, value, needle", [
    ("--max-new-tokens", 0, "at least 1"), ("--temperature", -1, ">= 0"), ("--top-p", 0, "(0, 1]"),
    ("--top-p", 1.5, "(0, 1]"), ("--fps", 0, "positive")])
def test_generation_options_out_of_range(checkpoint, photo, capsys, option, value, needle):
    assert_user_error(capsys, [photo, "--checkpoint", checkpoint, option, value], option, needle)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(checkpoint, photo, capsys):
    assert_user_error(capsys, [photo, "--checkpoint", checkpoint, "--device", "cuda"], "--device cpu")


def test_missing_checkpoint(photo, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("QVL_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert_user_error(capsys, [photo], "hf download Qwen/Qwen2.5-VL-3B-Instruct")
    assert_user_error(capsys, [photo, "--checkpoint", tmp_path / "nothing"], "nothing", "hf download")


def test_missing_shard(checkpoint, photo, tmp_path, capsys):
    folder = broken_copy(checkpoint, tmp_path / "ckpt", skip={"model.safetensors"})
    (folder / "model-00001-of-00002.safetensors").symlink_to(checkpoint / "model.safetensors")
    names = weights.read_header(checkpoint / "model.safetensors")[0]
    weight_map = {name: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, name in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_user_error(capsys, [photo, "--checkpoint", folder], "model-00002-of-00002.safetensors", "missing")


def test_no_weights_at_all(checkpoint, photo, tmp_path, capsys):
    folder = broken_copy(checkpoint, tmp_path / "ckpt", skip={"model.safetensors"})
    assert_user_error(capsys, [photo, "--checkpoint", folder], "model.safetensors", "hf download")


@pytest.mark.parametrize("content", [b"\x01\x02", struct.pack("<Q", 10**6) + b'{"a": 1}'])
def test_truncated_shard_header(checkpoint, photo, tmp_path, capsys, content):
    folder = broken_copy(checkpoint, tmp_path / "ckpt", skip={"model.safetensors"})
    (folder / "model.safetensors").write_bytes(content)
    assert_user_error(capsys, [photo, "--checkpoint", folder], "model.safetensors", "truncated")


@pytest.mark.parametrize("name, content, words", [
    ("config.json", '{"model_type": "qwen2_5_vl", ', ("damaged", "download it again")),
    ("config.json", json.dumps({"model_type": "qwen2_vl"}), ("qwen2_vl",)),
    ("generation_config.json", '{"eos_token_id": [151645,', ("generation_config.json", "delete it")),
    ("tokenizer.json", None, ("tokenizer.json",)),  # None: the file is missing
], ids=["damaged config", "config of another model", "damaged generation config", "missing tokenizer"])
def test_broken_checkpoint_file(checkpoint, photo, tmp_path, capsys, name, content, words):
    folder = broken_copy(checkpoint, tmp_path / "ckpt", skip={name})
    if content is not None:
        (folder / name).write_text(content)
    assert_user_error(capsys, [photo, "--checkpoint", folder], *words)


def test_video_without_pyav(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 100)
    assert_user_error(capsys, [clip, "--checkpoint", checkpoint], "pip install qvl-minimal[video]")


def test_unreadable_video(checkpoint, tmp_path, capsys):
    pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    clip.write_text("not a video")
    assert_user_error(capsys, [clip, "--checkpoint", checkpoint], "cannot read", "clip.mp4")


def test_frame_folders(checkpoint, photo, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (60, 40)).save(frames / "0.png")
    assert_user_error(capsys, [frames, "--checkpoint", checkpoint], "at least 2")
    Image.new("RGB", (40, 60)).save(frames / "1.png")
    assert_user_error(capsys, [frames, "--checkpoint", checkpoint], "differ in size", "0.png", "1.png")
    (frames / "1.png").write_text("broken")
    assert_user_error(capsys, [frames, "--checkpoint", checkpoint], "1.png")
    Image.new("RGB", (3000, 10)).save(frames / "0.png")
    Image.new("RGB", (3000, 10)).save(frames / "1.png")
    assert_user_error(capsys, [frames, "--checkpoint", checkpoint], "3000 x 10", "200:1")
    Image.new("RGB", (60, 40)).save(frames / "0.png")
    Image.new("RGB", (60, 40)).save(frames / "1.png")
    assert_user_error(capsys, [frames, photo, "--checkpoint", checkpoint], "images first")


@pytest.mark.parametrize("argv", [[], ["a.jpg", "--max-new-tokens", "x"], ["a.jpg", "--dtype", "float16"]])
def test_argument_errors_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(["describe", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "--help" in err


def test_command_line_process_says_one_line(tmp_path):
    """The issue's case as a user meets it: a 3000 x 10 image, a fresh process, no model loaded."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (3000, 10)).save(wide)
    env = dict(os.environ, QVL_CHECKPOINT=str(standin_checkpoint("small")))
    done = subprocess.run([sys.executable, "-m", "qvl_minimal", "describe", str(wide)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: ")
    assert "loading" not in done.stderr
