"""The command line: `python -m qvl_minimal describe` on a stand-in checkpoint, and its errors."""

import pytest

from qvl_minimal.__main__ import main
from qvl_minimal.standin import standin_checkpoint


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    from qvl_minimal import sample_photo

    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    sample_photo().resize((128, 150)).save(path)
    return path


def test_describe_streams_an_answer(photo_file, capsys):
    rc = main(["describe", str(photo_file), "--checkpoint", str(standin_checkpoint("small")),
               "--max-new-tokens", "4", "--question", "What is this?"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "loaded in" in err and out.endswith("\n") and len(out.strip()) > 0  # random weights: noise text


def test_missing_checkpoint_explains_the_download(photo_file, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("QVL_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["describe", str(photo_file)]) == 2
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in capsys.readouterr().err


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    assert main(["describe", str(bad), "--checkpoint", str(standin_checkpoint("small"))]) == 2
    assert "cannot read the image" in capsys.readouterr().err


def test_figures_command_writes_pngs(tmp_path):
    assert main(["figures", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) >= 10
