"""The command line: `python -m qvl_minimal figures` draws every figure of the book."""

from qvl_minimal.__main__ import main


def test_figures_command_writes_pngs(tmp_path):
    assert main(["figures", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) >= 10
