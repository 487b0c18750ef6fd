"""`python -m qvl_minimal describe` on a Qwen3-VL checkpoint folder (a stand-in written here, no network).

The stand-in (qwen3vl/standin.py) is tiny and random: its answers are noise, so the checks are that
describe runs (exit 0, an answer printed) and that what it feeds the model equals the reference's:
    image: input_ids and image_grid_thw exact, pixel_values bit-identical (tolerance: max |diff| == 0,
           else rel < 1e-6) against transformers' Qwen3VLProcessor with the Qwen2-VL image processor at
           patch 16, merge 2, mean/std 0.5; greedy tokens exact against the reference model (float32).
    video: the reference's video processor needs torchvision (not installed; even importing the class
           fails), so its rules are checked one by one, the functions run from the reference's source
           file: the frames sampled (Qwen3VLVideoProcessor.sample_frames), the frame size
           (video_processing_qwen3_vl.smart_resize), the seconds per step (Qwen3VLProcessor.
           _calculate_timestamps), and the prompt: "<t seconds>" before each step's block, ids equal
           to the reference tokenizer's on that text. The pixels are not compared (torchvision resize).
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from qvl_minimal.__main__ import main
from qvl_minimal.cli_inputs import check_media
from qvl_minimal.describe import preprocess_media
from qvl_minimal.model_family import QWEN3
from qvl_minimal.qwen3vl.standin import write_qwen3_standin
from qvl_minimal.qwen3vl.video import (VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, frame_size, sample_frame_indices,
                                       step_timestamps)
from qvl_minimal.samples import sample_clip, sample_photo
from qvl_minimal.tokenizer import DEFAULT_SYSTEM, build_chat_prompt, load_tokenizer
from qvl_minimal.weights import load_pretrained

transformers = pytest.importorskip("transformers")
QUESTION = "What is in this picture?"
NEW = 6  # new tokens per run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The stand-in checkpoint, a photo, a folder of 10 frames (odd steps at 4 fps -> 5 steps), an mp4."""
    folder = tmp_path_factory.mktemp("qwen3vl_describe")
    write_qwen3_standin(folder / "ckpt")
    sample_photo().resize((200, 150)).save(folder / "photo.png")
    clip = sample_clip(2.5, 4, 140, 196)  # (10, 140, 196, 3) uint8
    (folder / "frames").mkdir()
    for i, frame in enumerate(clip):
        Image.fromarray(frame).save(folder / "frames" / f"{i:03d}.png")
    av = pytest.importorskip("av")
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 196, 140, "yuv420p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return folder


def describe_json(capsys, files, *argv) -> dict:
    rc = main(["describe", *map(str, argv), "--checkpoint", str(files / "ckpt"), "--dtype", "float32",
               "--max-new-tokens", str(NEW), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_describe_photo_runs(files, capsys):
    result = describe_json(capsys, files, files / "photo.png")
    assert isinstance(result["answer"], str) and 1 <= result["tokens"]["new"] <= NEW
    assert result["inputs"][0]["grid_thw"] == [1, 14, 20]  # 150 x 200 px, under 65,536: up to 224 x 320, patch 16


def test_describe_streams_an_answer(files, capsys):
    rc = main(["describe", str(files / "photo.png"), "--checkpoint", str(files / "ckpt"), "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.endswith("\n") and "stats: " in err and "Qwen3-VL" in err


@pytest.mark.parametrize("source", ["frames", "clip.mp4"])
def test_describe_video_runs_with_real_frame_times(files, capsys, source):
    result = describe_json(capsys, files, files / source, "--fps", 4)
    (video,) = result["inputs"]
    assert video["source_frames"] == 10 and video["grid_thw"][0] == 5  # 10 frames kept, 2 per step
    assert video["timestamps"] == pytest.approx([0.125, 0.625, 1.125, 1.625, 2.125])  # frames 2k, 2k+1 at 4 fps
    assert result["tokens"]["visual"] == np.prod(video["grid_thw"]) // 4


def reference_video_rules():
    """smart_resize, sample_frames and the class defaults of transformers' video_processing_qwen3_vl.py, run from
    its source: importing the module's class needs torchvision (not installed), these three pieces do not."""
    import ast
    import inspect
    import math

    from transformers.models.qwen3_vl import processing_qwen3_vl

    path = inspect.getfile(processing_qwen3_vl).replace("processing_qwen3_vl", "video_processing_qwen3_vl")
    tree = ast.parse(open(path, encoding="utf-8").read())
    import typing

    names = {"math": math, "np": np, "logger": SimpleNamespace(warning_once=print), "Optional": typing.Optional,
             "Union": typing.Union, "VideoMetadata": object}
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen3VLVideoProcessor")
    pieces = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize"]
    pieces += [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "sample_frames"]
    defaults = {t.id: eval(compile(ast.Expression(n.value), path, "eval"))  # constants: 2, 4, 768, {...: 128 * 32 * 32}
                for n in cls.body if isinstance(n, ast.Assign)
                for t in n.targets if t.id in ("fps", "min_frames", "max_frames", "size")}
    exec(compile(ast.Module(body=pieces, type_ignores=[]), path, "exec"), names)
    return names["smart_resize"], names["sample_frames"], SimpleNamespace(**defaults)


def test_video_rules_equal_the_reference():
    """Frames sampled, frame size and seconds per step: the reference's functions on the same numbers."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    smart_resize, sample_frames, defaults = reference_video_rules()
    assert (defaults.fps, defaults.min_frames, defaults.max_frames) == (2, 4, 768)  # as qwen3vl/video.py has them
    assert defaults.size == {"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS}
    for total, video_fps, fps in [(10, 4, 4), (24, 12, 2), (7, 30, 2), (300, 29.97, 2), (5000, 25, 2), (9, 3, 1)]:
        ours = sample_frame_indices(total, video_fps, fps)
        meta = SimpleNamespace(total_num_frames=total, fps=video_fps)
        assert ours == sample_frames(defaults, meta, fps=fps).tolist(), (total, video_fps, fps)
        assert step_timestamps(ours, video_fps) == pytest.approx(
            Qwen3VLProcessor._calculate_timestamps(None, ours, video_fps, 2), rel=0, abs=1e-12)
        for height, width in [(140, 196), (1080, 1920), (64, 640), (33, 40)]:
            expected = smart_resize(len(ours), height, width, 2, 32, defaults.size["shortest_edge"],
                                    defaults.size["longest_edge"])
            assert frame_size(len(ours), height, width) == expected, (len(ours), height, width)


def test_video_prompt_layout(files):
    """Each step: "<t seconds>" (one decimal), then <|vision_start|>, h*w/4 pads, <|vision_end|>; the ids equal
    the reference tokenizer's on that text."""
    tokenizer = load_tokenizer(files / "ckpt")
    media = check_media([str(files / "frames")], fps=4.0)
    visual, summaries = preprocess_media(media, 4.0, QWEN3)
    seconds = [summaries[0]["timestamps"]]
    ids = QWEN3.encode_chat(tokenizer, "Describe this video.", None, visual["video_grid_thw"], seconds, DEFAULT_SYSTEM)
    t, h, w = visual["video_grid_thw"][0].tolist()
    steps = "".join(f"<{s:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (h * w // 4) + "<|vision_end|>"
                    for s in seconds[0])
    text = build_chat_prompt("Describe this video.", num_videos=1).replace(
        "<|vision_start|><|video_pad|><|vision_end|>", steps)
    assert tokenizer.decode(ids[0]) == text and "<0.1 seconds><|vision_start|>" in text  # 0.125 -> "0.1"
    reference = transformers.AutoTokenizer.from_pretrained(str(files / "ckpt"), local_files_only=True)
    assert ids[0].tolist() == reference(text)["input_ids"]  # exact
    assert visual["pixel_values_videos"].shape == (t * h * w, 1536)


def test_image_inputs_and_greedy_tokens_equal_the_reference(files, capsys):
    from qvl_minimal.qwen3vl.reference import reference_image_processor

    folder = files / "ckpt"
    media = check_media([str(files / "photo.png")], fps=2.0)
    visual, _ = preprocess_media(media, 2.0, QWEN3)  # what describe builds
    ids = QWEN3.encode_chat(load_tokenizer(folder), QUESTION, visual["image_grid_thw"], None, None, DEFAULT_SYSTEM)

    tf = transformers
    processor = tf.Qwen3VLProcessor(image_processor=reference_image_processor(),
                                    tokenizer=tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True),
                                    video_processor=object.__new__(tf.BaseVideoProcessor))  # never called
    image = media.images[0][1]
    ref = processor(text=[build_chat_prompt(QUESTION, num_images=1)], images=[image], return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"])  # exact
    assert torch.equal(visual["image_grid_thw"], ref["image_grid_thw"])  # exact
    diff = (visual["pixel_values"] - ref["pixel_values"]).abs().max()
    assert diff == 0 or diff / ref["pixel_values"].abs().max() < 1e-6  # measured: max abs diff 0.0

    reference = tf.Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        ref_new = reference.generate(**ref, max_new_tokens=NEW, do_sample=False)[0, ids.shape[1]:]
    ours = load_pretrained(folder, dtype="float32", progress=False)
    ours_new = ours.generate(ids, max_new_tokens=NEW, **visual)[0]
    assert ours_new.tolist() == ref_new.tolist()  # exact
    result = describe_json(capsys, files, files / "photo.png", "--question", QUESTION, "--system", DEFAULT_SYSTEM)
    assert result["answer"] == load_tokenizer(folder).decode(ours_new, skip_special_tokens=True)


def test_no_system_turn_unless_asked(files):
    """Qwen3-VL's template writes no system turn when the messages have none; Qwen2.5-VL's writes its default."""
    from qvl_minimal.model_family import QWEN25

    tokenizer = load_tokenizer(files / "ckpt")
    grid = torch.tensor([[1, 4, 4]])
    plain = tokenizer.decode(QWEN3.encode_chat(tokenizer, QUESTION, grid, None, None, None)[0])
    assert plain.startswith("<|im_start|>user\n<|vision_start|>") and "system" not in plain
    given = tokenizer.decode(QWEN3.encode_chat(tokenizer, QUESTION, grid, None, None, "Be brief.")[0])
    assert given == "<|im_start|>system\nBe brief.<|im_end|>\n" + plain
    qwen25 = tokenizer.decode(QWEN25.encode_chat(tokenizer, QUESTION, grid, None, None, None)[0])
    assert qwen25.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")


def test_max_pixels_default_is_the_checkpoint_families_own_limit():
    """--max-pixels left out: Qwen2.5-VL's 12,845,056, Qwen3-VL's 16,777,216 (its preprocessor's longest_edge);
    a 4000 x 4000 picture keeps all its 16,000,000 pixels for Qwen3-VL and is shrunk for Qwen2.5-VL."""
    from types import SimpleNamespace

    from PIL import Image as PILImage

    from qvl_minimal.cli_inputs import UserError, check_max_pixels
    from qvl_minimal.model_family import QWEN25
    from qvl_minimal.preprocess import MAX_PIXELS
    from qvl_minimal.qwen3vl import preprocess as qwen3_preprocess

    assert check_max_pixels(None, QWEN25) == MAX_PIXELS == 12845056
    assert check_max_pixels(None, QWEN3) == qwen3_preprocess.MAX_PIXELS == 16777216
    assert check_max_pixels(14_000_000, QWEN3) == 14_000_000
    with pytest.raises(UserError, match="above Qwen2.5-VL's limit of 12,845,056"):
        check_max_pixels(14_000_000, QWEN25)
    big = SimpleNamespace(images=[("big.png", PILImage.new("RGB", (4000, 4000)))], videos=[])
    grids = {}
    for family in (QWEN25, QWEN3):
        big.max_pixels = check_max_pixels(None, family)
        grids[family.name] = family.media_grids(big, 2.0)[0][0].tolist()
    patch = {"Qwen2.5-VL": 14, "Qwen3-VL": 16}
    assert grids["Qwen3-VL"] == [1, 250, 250]  # 4000 = 125 x 32: not shrunk
    h, w = (n * patch["Qwen2.5-VL"] for n in grids["Qwen2.5-VL"][1:])
    assert h * w <= 12845056 < 4000 * 4000
