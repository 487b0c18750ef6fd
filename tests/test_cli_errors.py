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
    ("--max-new-tokens", 0, "at least 1"), ("--temperature", -1, "0 (greedy) or a number from 0.01 to 100"),
    ("--temperature", "nan", "from 0.01 to 100"), ("--temperature", "inf", "from 0.01 to 100"),
    ("--temperature", "1e-45", "from 0.01 to 100"), ("--top-p", 0, "(0, 1]"), ("--top-p", 1.5, "(0, 1]"),
    ("--top-p", "nan", "(0, 1]"), ("--top-p", "inf", "(0, 1]"), ("--fps", 0, "positive"), ("--fps", "inf", "positive"),
    ("--fps", "nan", "positive"), ("--seed", -1, "0 to 2**64 - 1"), ("--seed", 2**64, "0 to 2**64 - 1"),
    ("--max-pixels", 10, "between 3,136"), ("--max-pixels", 10**9, "12,845,056")])
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


@pytest.mark.parametrize("name, value, needles", [
    ("QVL_DTYPE", "fp32", ("$QVL_DTYPE='fp32'", "float32, bfloat16")),
    ("QVL_STORAGE", "bf16", ("$QVL_STORAGE = 'bf16'", "'bfloat16'", "'float32'")),
    ("QVL_PACK", "yes", ("$QVL_PACK='yes'", "0 (keep F.linear everywhere)", "1 (pack where exact)")),
])
def test_environment_variables_with_a_wrong_value(checkpoint, photo, monkeypatch, capsys, name, value, needles):
    monkeypatch.setenv(name, value)
    assert_user_error(capsys, [photo, "--checkpoint", checkpoint], *needles)


def write_json(name, value):
    return lambda folder: (folder / name).write_text(json.dumps(value))


def edited_config(checkpoint, **changes):
    """The stand-in's config.json with fields changed (in its nested text_config too, which wins)."""
    config = {**json.loads((checkpoint / "config.json").read_text()), **changes}
    if "text_config" in config:
        config["text_config"] = {**config["text_config"], **changes}
    return config


def shard_with(header_changes, checkpoint):
    """The stand-in's model.safetensors with its header edited (data section kept)."""
    raw = (checkpoint / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header_changes(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


@pytest.fixture
def tokenizer_read_once(monkeypatch):
    """tokenizer.json parsed once per real file (1-2 s each): the folders below link to the same one."""
    from tokenizers import Tokenizer

    from qvl_minimal import tokenizer_files

    cache = {}

    class Cached:
        @staticmethod
        def from_file(name):
            key = (os.path.realpath(name), os.stat(name).st_mtime_ns)
            if key not in cache:
                cache[key] = Tokenizer.from_file(name)
            return cache[key]

    monkeypatch.setattr(tokenizer_files, "Tokenizer", Cached)


BROKEN_FOLDERS = {  # name: (file replaced, how, words the one line must hold)
    "config a list": ("config.json", write_json("config.json", [1]), ("config.json", "JSON list")),
    "config field of the wrong type": ("config.json", lambda f, c: (f / "config.json").write_text(
        json.dumps(edited_config(c, vocab_size="151936"))), ("config.json", "vocab_size", "integer")),
    "config sizes that disagree": ("config.json", lambda f, c: (f / "config.json").write_text(
        json.dumps(edited_config(c, num_key_value_heads=3))), ("num_key_value_heads 3",)),
    "another model's weights": ("config.json", lambda f, c: (f / "config.json").write_text(
        json.dumps(edited_config(c, intermediate_size=256))), ("has shape", "different models")),
    "generation config a list": ("generation_config.json", write_json("generation_config.json", [151645]),
                                 ("generation_config.json", "JSON list", "delete it")),
    "pad_token_id a string": ("generation_config.json", write_json("generation_config.json", {"pad_token_id": "x"}),
                              ("generation_config.json", "pad_token_id", "integer")),
    "tokenizer.json {}": ("tokenizer.json", write_json("tokenizer.json", {}), ("tokenizer.json", "not a tokenizer file")),
    "chat_template.json []": ("chat_template.json", write_json("chat_template.json", []),
                              ("chat_template.json", "JSON list")),
    "index a list": ("model.safetensors.index.json", write_json("model.safetensors.index.json", []),
                     ("model.safetensors.index.json", "not an index file")),
    "dtype a list": ("model.safetensors", lambda f, c: (f / "model.safetensors").write_bytes(shard_with(
        lambda h: h[first_tensor(h)].update(dtype=["BF16"]), c)), ("model.safetensors", "unknown dtype")),
    "metadata a list": ("model.safetensors", lambda f, c: (f / "model.safetensors").write_bytes(shard_with(
        lambda h: h.update(__metadata__=["pt"]), c)), ("model.safetensors", "__metadata__")),
    "integer weights": ("model.safetensors", lambda f, c: (f / "model.safetensors").write_bytes(shard_with(
        lambda h: h[first_tensor(h)].update(dtype="I16"), c)), ("stored as I16", "floating-point")),
    "config.json a folder": ("config.json", lambda f: (f / "config.json").mkdir(), ("config.json",)),
}


@pytest.mark.parametrize("case", list(BROKEN_FOLDERS))
def test_every_broken_file_of_the_folder_is_one_line_before_the_load(checkpoint, photo, tmp_path, capsys, case,
                                                                     tokenizer_read_once):
    name, write, words = BROKEN_FOLDERS[case]
    folder = broken_copy(checkpoint, tmp_path / "ckpt", skip={name})
    write(folder) if write.__code__.co_argcount == 1 else write(folder, checkpoint)
    assert_user_error(capsys, [photo, "--checkpoint", folder], *words)


@pytest.mark.parametrize("content", [b"", b"null", b"[]", b"{}", b'{"a": [1, {"b": 2}]}', b"\xff\xfe\x00",
                                     b"[" * 100_000, b"9" * 5000])
def test_no_file_of_the_folder_can_make_a_traceback(checkpoint, photo, tmp_path, capsys, content, tokenizer_read_once):
    """Every file of the checkpoint replaced in turn by junk: describe says one `error:` line, or (for a
    file it does not need, such as vocab.json) goes on to the load; never a traceback."""
    for file in sorted(checkpoint.iterdir()):
        folder = broken_copy(checkpoint, tmp_path / file.name, skip={file.name})
        (folder / file.name).write_bytes(content)
        try:
            rc = main(["describe", str(photo), "--checkpoint", str(folder)])
        except AssertionError as err:  # model_must_not_load: everything checked passed
            assert "the model was loaded" in str(err)
            optional = ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json")  # {}: defaults
            assert file.name in optional and (file.name != "generation_config.json" or content.startswith(b"{")), \
                (file.name, content[:20])
            capsys.readouterr()
            continue
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (file.name, err)


def test_hub_cache_ref_that_leaves_the_snapshots_is_refused(checkpoint, photo, tmp_path, capsys):
    repo = tmp_path / "models--Qwen--Qwen2.5-VL-3B-Instruct"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    broken_copy(checkpoint, tmp_path / "elsewhere")
    (repo / "refs" / "main").write_text("../../elsewhere")
    assert_user_error(capsys, [photo, "--checkpoint", repo], "refs/main", "../../elsewhere", "not a folder name")


def test_too_many_visual_tokens_for_the_context(checkpoint, tmp_path, capsys, tokenizer_read_once):
    """Counted before the load: a checkpoint whose context is 2,000 tokens, two images of 1,296 tokens each."""
    folder = broken_copy(checkpoint, tmp_path / "ckpt", skip={"config.json"})
    (folder / "config.json").write_text(json.dumps(edited_config(checkpoint, max_position_embeddings=2000)))
    big = tmp_path / "big.png"
    Image.new("RGB", (1008, 1008)).save(big)  # 36 x 36 merge units: 1,296 visual tokens
    line = assert_user_error(capsys, [big, big, "--checkpoint", folder], "2,592 visual: 1,296, 1,296 per input",
                             "context of 2,000", "--max-pixels", "fewer images")
    assert "the prompt is 2,6" in line
    with pytest.raises(AssertionError, match="the model was loaded"):  # the fix it names works
        main(["describe", str(big), str(big), "--checkpoint", str(folder), "--max-pixels", str(500 * 784)])


def test_more_than_the_memory_can_hold(checkpoint, photo, tmp_path, monkeypatch, capsys, tokenizer_read_once):
    from qvl_minimal import storage

    monkeypatch.setattr(storage, "free_memory", lambda device="cpu": 10_000_000)  # 10 MB free
    big = tmp_path / "big.png"
    Image.new("RGB", (1008, 1008)).save(big)
    assert_user_error(capsys, [big, "--checkpoint", checkpoint], "1,296 of them visual", "GB of activations, estimated",
                      "0.0 GB of memory is free",
                      "--max-pixels")
    monkeypatch.setattr(storage, "free_memory", lambda device="cpu": 1 << 40)
    with pytest.raises(AssertionError, match="the model was loaded"):  # the same image fits in 1 TB
        main(["describe", str(big), "--checkpoint", str(checkpoint)])


@pytest.mark.parametrize("kind", ["frames", "file"])
def test_video_frames_bounded_like_images(checkpoint, tmp_path, monkeypatch, capsys, kind):
    from PIL import Image as PILImage

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 48), (60 * i, 0, 0)).save(frames / f"{i}.png")
    target = frames
    if kind == "file":
        av = pytest.importorskip("av")
        target = tmp_path / "clip.mp4"
        with av.open(str(target), "w") as container:
            stream = container.add_stream("mpeg4", rate=4)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for i in range(4):
                frame = av.VideoFrame.from_image(PILImage.open(frames / f"{i}.png"))
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 2000)  # 64 x 48 = 3,072 pixels per frame
    assert_user_error(capsys, [target, "--checkpoint", checkpoint], "64 x 48 = 3,072 pixels", "limit of 2,000",
                      "scale the video down")
