"""What `describe` counts before the load (prompt_limits) and how it ends the streamed answer."""

import pytest
import torch
from PIL import Image

import qvl_minimal as qvl
from qvl_minimal.cli_inputs import check_media
from qvl_minimal.config import Qwen25VLConfig
from qvl_minimal.describe import Streamer, preprocess_media
from qvl_minimal.prompt_limits import activation_bytes, media_grids


def test_the_streamer_prints_a_cut_off_character_at_the_end(capsys):
    """The issue's case: the answer ends inside a 4-byte character (max_new_tokens cut it), 'ok \ufffd'."""
    tokenizer = qvl.load_tokenizer()
    cut = tokenizer.encode("ok 𝄞")[:2]  # 'ok', then ' ' with the character's first byte
    assert tokenizer.decode(cut) == "ok \ufffd"
    streamer = Streamer(tokenizer)
    for token in cut:
        streamer(torch.tensor([token]))
    assert capsys.readouterr().out == "ok"  # held back while the character may still complete
    streamer.finish()
    assert capsys.readouterr().out == " \ufffd"  # ... and printed at the end, not dropped


@pytest.mark.parametrize("max_pixels", [12845056, 200 * 784])
def test_counted_grids_equal_the_preprocessed_ones(tmp_path, max_pixels):
    """media_grids (sizes and headers only) predicts exactly what preprocessing produces."""
    paths = []
    for i, size in enumerate([(640, 480), (1000, 37), (3000, 2000), (60, 40)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size).save(paths[-1])
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(9):
        Image.new("RGB", (900, 500), (20 * i, 0, 0)).save(frames / f"{i}.png")
    media = check_media([*map(str, paths), str(frames)], fps=2.0, max_pixels=max_pixels)
    image_grid, video_grid = media_grids(media, fps=2.0)
    visual, _ = preprocess_media(media, fps=2.0)
    assert torch.equal(image_grid, visual["image_grid_thw"]) and torch.equal(video_grid, visual["video_grid_thw"])
    assert (image_grid.prod(-1) <= max_pixels // 196).all()


def test_activation_estimate_grows_with_the_inputs():
    config = Qwen25VLConfig.preset("3b")
    one = activation_bytes(config, patches=4 * 1000, prompt_tokens=1100, new_tokens=128, bytes_per=4)
    assert activation_bytes(config, 8 * 1000, 2100, 128, 4) > one > activation_bytes(config, 4000, 1100, 128, 2)
    per_patch = (14 * 1280 + 3 * 3420) * 4 + 1176 * 4  # the vision peak of the docstring, per patch
    cache = (1100 + 128) * 36 * 2 * 2 * 128 * 4
    assert one == 4000 * per_patch + cache
