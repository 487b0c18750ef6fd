"""`python -m qvl_minimal bench --quick`: the table's structure (rows, columns, no NaN), never a speed."""

import math

import pytest
import torch

from qvl_minimal.__main__ import main
from qvl_minimal.bench import bench, ceilings, format_table
from qvl_minimal.config import Qwen25VLConfig
from qvl_minimal.costs import decode_weight_bytes, prefill_flops
from qvl_minimal.params import count_parameters

COLUMNS = {"row", "dtype", "unit", "ours", "reference", "ratio", "ours_of_ceiling", "reference_of_ceiling"}


def test_quick_bench_table_structure():
    rows, roofs, note = bench(quick=True, repeats=1, dtypes=[torch.float32])
    assert set(roofs) == {"gflops_float32", "copy_gbs", "read_gbs"} and all(v > 0 for v in roofs.values())
    names = [r["row"] for r in rows]
    assert [n.split(",")[0].split(" (")[0] for n in names] == ["load", "vision tower", "vision tower", "prefill", "decode"]
    for r in rows:
        assert COLUMNS <= r.keys() and r["dtype"] == "float32"
        numbers = [v for v in r.values() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) and v >= 0 for v in numbers), r
    assert rows[0]["ours_peak_gb"] >= 0 and rows[0]["reference_of_ceiling"] is None  # load: no roof
    assert all(r["ours_of_ceiling"] is not None for r in rows[1:])
    assert "reduced depth" in note
    table = format_table(rows, roofs, note)
    note_lines = len(note.splitlines())  # what the rows measure, depth, how load is counted, packing
    assert note_lines == 4 and "ours, float32: weights not packed" in note and len(table.splitlines()) == note_lines + 3 + len(rows) + 1  # + ceilings, header, rule; peak memory
    assert "nan" not in table.lower()


def test_ceilings_per_dtype():
    roofs = ceilings([torch.float32, torch.bfloat16], quick=True)
    assert set(roofs) == {"gflops_float32", "gflops_bfloat16", "copy_gbs", "read_gbs"}


def test_costs_of_3b():
    config = Qwen25VLConfig.preset("3b")
    counts = count_parameters(config)
    total, parts = prefill_flops(config, 1)
    # one token: 2 FLOPs per weight of every decoder layer (norms aside) + the head, + 1 attention pair per layer
    norms = 2 * config.text_config.hidden_size * config.text_config.num_hidden_layers
    biases = (2048 + 2 * 256) * config.text_config.num_hidden_layers
    assert parts["linear"] == 2 * (counts["decoder_layers"] - norms - biases)
    assert parts["head"] == 2 * counts["embed_tokens"]
    assert decode_weight_bytes(config, "bfloat16") == 2 * (counts["decoder_layers"] + counts["norm"] + counts["embed_tokens"])


def test_bench_is_a_command(capsys):
    try:
        main(["bench", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "--quick" in capsys.readouterr().out


def test_full_run_keeps_the_median_run_and_the_highest_peak():
    """bench --full --repeats N: each side's run with the median wall time, and the highest peak of all."""
    from qvl_minimal.bench_full import median_run

    runs = [{"wall_s": 30.0, "load_s": 1.0, "peak_gb": 7.0}, {"wall_s": 20.0, "load_s": 2.0, "peak_gb": 7.5},
            {"wall_s": 25.0, "load_s": 3.0, "peak_gb": 7.2}]
    assert median_run(runs) == {"wall_s": 25.0, "load_s": 3.0, "peak_gb": 7.5}
    assert median_run(runs[:2])["wall_s"] == 20.0  # an even count: the faster of the two middle runs


@pytest.mark.parametrize("argv", [["--full", "--repeats", "0"], ["--full", "--repeats", "-1"], ["--quick", "--repeats", "0"]])
def test_repeats_below_one_is_one_error_line(capsys, argv):
    assert main(["bench", *argv]) == 2  # refused before any stand-in is written or timed
    err = capsys.readouterr().err
    assert err.startswith("error: --repeats must be at least 1") and len(err.strip().splitlines()) == 1


def test_two_full_runs_write_into_separate_partial_folders(tmp_path):
    """The stand-in is written into a folder unique to the run, then renamed; a run that finishes second
    keeps the first one's folder and removes its own."""
    from qvl_minimal.bench_full import partial_folder, publish

    folder = tmp_path / "standin-3b-full-depth"
    a, b = partial_folder(folder), partial_folder(folder)
    assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(folder.name + ".partial-")
    for tmp, mark in ((a, "a"), (b, "b")):
        (tmp / "model.safetensors.index.json").write_text(mark)
    assert publish(a, folder) == folder and publish(b, folder) == folder
    assert (folder / "model.safetensors.index.json").read_text() == "a" and not b.exists()


def test_full_bench_imports_without_resource_and_reports_peak_in_bytes(monkeypatch):
    """`import resource` fails on Windows: bench_full imports anyway; its peak comes from cli_stats'
    helper, which knows that macOS reports ru_maxrss in bytes and Linux in kilobytes."""
    import importlib
    import sys

    resource = pytest.importorskip("resource")  # the real module, where there is one (not on Windows)

    from qvl_minimal import bench_full, cli_stats

    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    monkeypatch.setattr(sys, "platform", "linux")
    assert abs(bench_full.peak_gb() - kilobytes * 1024 / 1e9) < 0.5
    monkeypatch.setattr(sys, "platform", "darwin")
    assert abs(bench_full.peak_gb() - kilobytes / 1e9) < 0.5 / 1024 + 1e-3
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows
    importlib.reload(bench_full)
    assert cli_stats.peak_memory_bytes() is None or cli_stats.peak_memory_bytes() > 0


def test_a_nan_in_the_table_stops_the_bench_even_under_python_O():
    import subprocess
    import sys

    code = ("from qvl_minimal.bench import check_finite\n"
            "check_finite([{'row': 'vision', 'ours': 1.0}])\n"
            "try:\n    check_finite([{'row': 'vision', 'ours': float('nan')}])\nexcept RuntimeError as e:\n"
            "    print('refused:', e)\n")
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused: the bench measured NaN for [('vision', 'ours')]" in done.stdout, done.stderr
