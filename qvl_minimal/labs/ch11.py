"""Chapter 11's exercises: a safetensors header reader, the checkpoint's key names, raster order.

    11.1  read_header_mine(path) -> ({name: (dtype, shape, begin, end)}, offset of the data)
    11.2  to_checkpoint_keys_mine(state_dict, tied) -> the same tensors under the checkpoint's names
    11.3  to_raster_mine(merged (N/4, D) in window order, grid_thw, vision_config) -> raster order

11.1 is compared with the library's `read_header` on files written by the `safetensors` package
(several dtypes, an empty tensor, metadata, one tensor alone); 11.2 with `to_checkpoint_keys` on the
reference's real key list (a tied and an untied model), 11.3 with the inverse of `window_index`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..config import Qwen25VLConfig
from ..model import Qwen25VL
from ..reference import from_checkpoint_keys, to_checkpoint_keys
from ..vision import window_index
from ..weights import read_header
from .core import assert_answer, assert_tensor_matches, exercise


def _safetensors_files(folder: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    files = {
        "several dtypes and an empty tensor": {
            "model.embed_tokens.weight": torch.randn(7, 4).bfloat16(), "empty": torch.zeros(0, 3),
            "model.norm.weight": torch.randn(4), "ids": torch.arange(5), "half": torch.randn(2, 3, 2).half()},
        "one scalar-like tensor": {"only": torch.tensor([1.5])},
        "with metadata": {"b.weight": torch.randn(3, 3), "a.bias": torch.randn(3).bfloat16()},
    }
    paths = {}
    for i, (what, tensors) in enumerate(files.items()):
        path = folder / f"file{i}.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"} if "metadata" in what else None)
        paths[what] = path
    return paths


@exercise("11.1", "a safetensors header reader")
def _(read_header_mine) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        for what, path in _safetensors_files(Path(tmp)).items():
            want_entries, want_offset = read_header(path)
            got = read_header_mine(path)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise AssertionError("return a pair: ({name: (dtype, shape, begin, end)}, offset of the data)")
            entries, offset = got
            assert_answer(offset, want_offset, f"offset of the data in a file with {what}",
                          hint="8 bytes of length, then the JSON header: the data starts right after both")
            if not isinstance(entries, dict):
                raise AssertionError(f"entries must be a dict, got {type(entries).__name__}")
            if extra := sorted(set(entries) - set(want_entries)):
                raise AssertionError(f"file with {what}: entries {extra} are not tensors (the header's "
                                     "'__metadata__' is not a tensor)" if "__metadata__" in extra else
                                     f"file with {what}: entries {extra} are not tensors of the file")
            if missing := sorted(set(want_entries) - set(entries)):
                raise AssertionError(f"file with {what}: tensors {missing} are missing")
            for name, want in want_entries.items():
                mine = entries[name]
                mine = tuple(mine) if isinstance(mine, (tuple, list)) else mine
                if isinstance(mine, tuple) and len(mine) == 4:
                    mine = (mine[0], tuple(mine[1]) if isinstance(mine[1], (list, tuple)) else mine[1], mine[2], mine[3])
                assert_answer(mine, want, f"file with {what}: entry {name!r} as (dtype, shape tuple, begin, end)",
                              hint="dtype as stored ('BF16', ...), the shape as a tuple, and data_offsets "
                                   "relative to the start of the data")
    return "3 files: 4 dtypes, an empty tensor, metadata; equal to read_header"


def _reference_keys(config: Qwen25VLConfig) -> list[str]:
    """The reference's (4.52+) parameter names for `config`: ours mapped by the library's inverse."""
    with torch.device("meta"):
        ours = Qwen25VL(config).state_dict()
    keys = list(from_checkpoint_keys(dict.fromkeys(ours)))
    if config.text_config.tie_word_embeddings:
        keys.append("lm_head.weight")  # the reference lists its tied head; the checkpoint does not store it
    return keys


@exercise("11.2", "the checkpoint's key names")
def _(to_checkpoint_keys_mine) -> str:
    tied = Qwen25VLConfig.preset("tiny").replace(text_config={"tie_word_embeddings": True})
    untied = Qwen25VLConfig.preset("tiny").replace(text_config={"tie_word_embeddings": False})
    for config, what in ((tied, "a tied model (3B)"), (untied, "an untied model (7B, 72B)")):
        ref = _reference_keys(config)
        is_tied = config.text_config.tie_word_embeddings
        tensors = {k: torch.full((1,), float(i)) for i, k in enumerate(ref)}  # each key its own value
        want = to_checkpoint_keys(tensors, tied=is_tied)
        got = to_checkpoint_keys_mine(dict(tensors), is_tied)
        if extra := sorted(set(got) - set(want)):
            raise AssertionError(f"{what}: {len(extra)} names the checkpoint does not have, e.g. {extra[:3]}")
        if missing := sorted(set(want) - set(got)):
            raise AssertionError(f"{what}: {len(missing)} checkpoint names missing, e.g. {missing[:3]}")
        for name in want:
            assert_tensor_matches(got[name], want[name], f"{what}: the tensor under {name!r}")
    return "the reference's keys of a tied and an untied model, every name and tensor"


@exercise("11.3", "merged tokens back to raster order")
def _(to_raster_mine) -> str:
    vc = Qwen25VLConfig.preset("3b").vision_config
    grids = [[1, 42, 36], [1, 8, 8], [1, 10, 22], [2, 16, 12], [1, 2, 2]]
    for grid in grids:
        grid_thw = torch.tensor([grid])
        index, _ = window_index(grid_thw, vc)  # (N/4,): merge unit at each window-order position
        raster = torch.randn(len(index), 6)  # (N/4, 6): one row per merge unit, raster order
        merged = raster[index]  # what the tower returns: window order
        assert_tensor_matches(to_raster_mine(merged.clone(), grid_thw, vc), raster, f"grid {grid} (rows in raster order)")
    return f"{len(grids)} grids incl. partial windows and 2 time steps, exact"
