"""Chapters 04-07's lab checkers: every solution passes, plausible wrong answers are rejected by name.

The solutions are the chapters' own (the code between the markers of each exercise cell), read from
the notebooks, so a test fails if a chapter's solution and its checker drift apart.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from qvl_minimal.config import VisionConfig
from qvl_minimal.labs import EXERCISES, check
from qvl_minimal.labs.core import load_chapter
from qvl_minimal.vision import full_cu_seqlens, vision_rotary_angles, window_index

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
NOTEBOOKS = {"04": "04_window_attention", "05": "05_vision_tower", "06": "06_tokens_and_splicing", "07": "07_mrope"}
CHECK_CALL = re.compile(r'check\("(\d\d\.\d+)",\s*(\w+)\)')


KEEP_NAMES = {"config"}  # besides UPPER_CASE constants, the one assignment the exercises read


def _constant_name(target: ast.expr) -> bool:
    """NAME or (NAME1, NAME2): upper-case constants (and KEEP_NAMES) that exercises read."""
    if isinstance(target, ast.Tuple):
        return all(_constant_name(t) for t in target.elts)
    return isinstance(target, ast.Name) and (target.id.isupper() or target.id in KEEP_NAMES)


def _definitions(source: str) -> list[ast.Module]:
    """The imports, functions and constants of a cell, one statement each, without what computes or prints."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.startswith("%")))
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            keep.append(node)
        elif isinstance(node, ast.Assign) and all(_constant_name(t) for t in node.targets):
            keep.append(node)
    return [ast.Module(body=[node], type_ignores=[]) for node in keep]


def _run_definitions(source: str, namespace: dict, chapter: str) -> None:
    for statement in _definitions(source):
        try:
            exec(compile(statement, f"<chapter {chapter}>", "exec"), namespace)
        except NameError:  # a constant computed from the chapter's state (W = ref_tower.state_dict())
            if not isinstance(statement.body[0], ast.Assign):
                raise


def solutions(chapter: str) -> dict[str, object]:
    """Each check's answer, from the chapter's own solution code (fast: nothing heavy is computed).

    Exercise cells run whole (the solution region included); the other cells contribute only their
    imports, functions and constants, which the solutions call at check time. A quiz whose solution
    reads the chapter's computed state (a tower run on the photo) cannot run this way: its answer is
    STORED, and the test reads the check cell's stored output instead (nbval re-executes the notebook
    and compares that output, so it still holds).
    """
    cells = json.loads((CHAPTERS / f"{NOTEBOOKS[chapter]}.ipynb").read_text())["cells"]
    answers: dict[str, object] = {}
    namespace: dict[str, object] = {}
    needs_chapter_state = False
    for cell in cells:
        tags = cell.get("metadata", {}).get("tags", [])
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "solution" in tags:
            continue
        if "check" in tags:
            exercise_id, name = CHECK_CALL.search(source).groups()
            if needs_chapter_state:
                stored = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
                answers[exercise_id] = STORED if stored.startswith(f"PASS {exercise_id} ") else stored
            else:
                answers[exercise_id] = namespace[name]
            needs_chapter_state = False
            continue
        if "exercise" in tags:
            try:
                exec(compile(source, f"<chapter {chapter}>", "exec"), namespace)
            except NameError:
                needs_chapter_state = True
            continue
        _run_definitions(source, namespace, chapter)
    return answers


STORED = object()  # the answer was checked in the notebook's own run (its check cell printed PASS)


@pytest.fixture(scope="module")
def chapter_answers():
    return {}


def _answers(cache: dict, chapter: str) -> dict[str, object]:
    if chapter not in cache:
        cache[chapter] = solutions(chapter)
    return cache[chapter]


def _ids(chapter: str) -> list[str]:
    load_chapter(chapter)
    return sorted(k for k in EXERCISES if k.startswith(chapter + "."))


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))  # each has a labs/chNN.py
def test_every_exercise_has_a_check_cell_and_its_solution_passes(chapter, chapter_answers, capsys):
    answers = _answers(chapter_answers, chapter)
    assert sorted(answers) == _ids(chapter), "every registered exercise has exactly one check cell"
    for exercise_id, answer in answers.items():
        if answer is STORED:
            continue
        assert not isinstance(answer, str), f"{exercise_id}: the stored check output is {answer!r}"
        check(exercise_id, answer)
        assert capsys.readouterr().out.startswith(f"PASS {exercise_id} ")


def rejected(exercise_id: str, answer) -> str:
    """The AssertionError message for a wrong answer (the test fails if the answer passes)."""
    with pytest.raises(AssertionError) as caught:
        check(exercise_id, answer)
    return str(caught.value)


# ----------------------------------------------------------------------------- chapter 04
def window_index_reference_padding(grid_thw, side=4, merge=2):
    """The reference's padding rule (side - n % side) without removing the empty windows."""
    index, lengths, offset = [], [], 0
    for t, h, w in torch.as_tensor(grid_thw).tolist():
        gh, gw = h // merge, w // merge
        ids = F.pad(torch.arange(t * gh * gw).reshape(t, gh, gw), (0, side - gw % side, 0, side - gh % side), value=-1)
        tiles = rearrange(ids, "t (nh a) (nw b) -> (t nh nw) (a b)", a=side, b=side)
        index.append(tiles[tiles >= 0] + offset)
        lengths.append((tiles >= 0).sum(1) * merge * merge)
        offset += t * gh * gw
    return torch.cat(index), F.pad(torch.cat(lengths).cumsum(0), (1, 0))


def test_04_reference_padding_without_unique_is_rejected():
    message = rejected("04.1", window_index_reference_padding)
    assert "cu_window_seqlens of grid [[1, 32, 32]]" in message and "padding trap" in message and "shape" in message


def test_04_missing_offset_between_grids_is_rejected(chapter_answers):
    mine = _answers(chapter_answers, "04")["04.1"]

    def no_offset(grid_thw):
        parts = [mine(g[None]) for g in torch.as_tensor(grid_thw)]  # each grid numbered from 0
        index = torch.cat([p[0] for p in parts])
        cu = F.pad(torch.cat([p[1].diff() for p in parts]).cumsum(0), (1, 0))
        return index, cu

    message = rejected("04.1", no_offset)
    assert "index of grid [[1, 42, 36], [2, 22, 36], [1, 32, 32]]" in message and "batch" in message


def test_04_attention_ignoring_segments_is_rejected():
    def whole_sequence(q, k, v, cu):
        out = F.scaled_dot_product_attention(*(rearrange(x, "n h d -> h n d") for x in (q, k, v)))
        return rearrange(out, "h n d -> n h d")

    message = rejected("04.2", whole_sequence)
    assert "output for segments" in message and "values differ" in message


def test_04_window_order_mask_is_rejected_with_its_reason():
    def window_order_mask(grid_thw):  # right for the permuted rows, wrong for pixel_values' rows
        cu = window_index(grid_thw, VisionConfig())[1]
        segment = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())
        return segment[:, None] == segment[None, :]

    message = rejected("04.3", window_order_mask)
    assert "block-diagonal mask of the window order" in message and "grid [[1, 12, 20]]" in message


def test_04_mask_of_merge_units_not_patches_is_rejected(chapter_answers):
    mine = _answers(chapter_answers, "04")["04.3"]

    def per_unit(grid_thw):  # one row per merge unit instead of per patch
        return mine(grid_thw)[::4, ::4]

    message = rejected("04.3", per_unit)
    assert "mask of grid [[1, 12, 20]]" in message and "shape (60, 60), expected (240, 240)" in message


def test_04_video_windows_predicted_for_one_time_step_are_rejected():
    per_step = [4 * a * b for a in (4, 1) for b in (4, 4, 4, 1)]
    one_step = F.pad(torch.tensor(per_step).cumsum(0), (1, 0)).tolist()
    message = rejected("04.4", one_step)
    assert "both time steps" in message and str(one_step) not in message.split(": ", 1)[1]


def test_04_video_windows_cut_from_the_wrong_side_are_rejected():
    per_step = [4 * a * b for a in (1, 4) for b in (1, 4, 4, 4)]  # the small windows first
    wrong = F.pad(torch.tensor(per_step * 2).cumsum(0), (1, 0)).tolist()
    message = rejected("04.4", wrong)
    assert "cu_window_seqlens" in message and "Hint" in message
    expected = EXERCISES["04.4"].expected()
    assert str(expected) not in message and expected != wrong


# ----------------------------------------------------------------------------- chapter 05
def test_05_post_norm_block_is_rejected(chapter_answers):
    namespace = _answers(chapter_answers, "05")["05.1"].__globals__  # the chapter's rms_norm, attention, mlp

    def post_norm(x, W, i, cu_seqlens, cos, sin):
        p = f"blocks.{i}."
        attention, mlp, rms_norm = namespace["attention"], namespace["mlp"], namespace["rms_norm"]
        x = rms_norm(x + attention(x, W, p + "attn.", cu_seqlens, cos, sin), W[p + "norm1.weight"])
        return rms_norm(x + mlp(x, W, p + "mlp."), W[p + "norm2.weight"])

    message = rejected("05.1", post_norm)
    assert "output of block" in message and "values differ" in message and "real width" in message


@pytest.mark.parametrize("wrong", ["(k u) d -> u (k d)", "(u k) d -> u (d k)", "tanh"])
def test_05_wrong_merge_order_or_gelu_is_rejected(chapter_answers, wrong):
    namespace = _answers(chapter_answers, "05")["05.2"].__globals__
    rms_norm, linear = namespace["rms_norm"], namespace["linear"]

    def merge(hidden, W):
        y = rms_norm(hidden, W["merger.ln_q.weight"])
        y = rearrange(y, "(u k) d -> u (k d)" if wrong == "tanh" else wrong, k=4)
        y = F.gelu(linear(y, W, "merger.mlp.0"), approximate="tanh" if wrong == "tanh" else "none")
        return linear(y, W, "merger.mlp.2")

    message = rejected("05.2", merge)
    assert "merged tokens of 96 rows [real width" in message and "values differ" in message


def _chapter_tower(namespace, window_order=False, full_blocks=None):
    """The chapter's tower (05.3) with one mistake: tokens left in window order, or the wrong full blocks."""
    block, merge = namespace["block"], namespace["merge"]

    def tower(pixel_values, grid_thw, W, vc):
        index, cu_window = window_index(grid_thw, vc)
        cu_full = full_cu_seqlens(grid_thw)

        def windows(y):
            return rearrange(rearrange(y, "(u k) d -> u k d", k=4)[index], "u k d -> (u k) d")

        angles = windows(vision_rotary_angles(grid_thw, vc.head_dim))
        emb = torch.cat([angles, angles], dim=-1)[:, None, :]
        x = windows(F.linear(pixel_values, W["patch_embed.proj.weight"].flatten(1)))
        full = vc.fullatt_block_indexes if full_blocks is None else full_blocks
        for i in range(vc.depth):
            x = block(x, W, i, cu_full if i in full else cu_window, emb.cos(), emb.sin())
        tokens = merge(x, W)
        return tokens if window_order else tokens[torch.argsort(index)]

    return tower


def test_05_tower_left_in_window_order_is_rejected(chapter_answers):
    namespace = _answers(chapter_answers, "05")["05.3"].__globals__
    message = rejected("05.3", _chapter_tower(namespace, window_order=True))
    assert "visual tokens of grids [[1, 8, 12]]" in message and "raster order" in message
    assert "values differ" in message


def test_05_tower_with_only_window_blocks_is_rejected(chapter_answers):
    namespace = _answers(chapter_answers, "05")["05.3"].__globals__
    message = rejected("05.3", _chapter_tower(namespace, full_blocks=()))
    assert "blocks (1, 3) full" in message and "values differ" in message


def test_05_rows_changed_by_one_patch_are_checked():
    right = EXERCISES["05.4"].expected()
    assert "do the windows move" in rejected("05.4", (right[0], 4 * right[0], right[2]))
    assert "bottom edge" in rejected("05.4", (64, 64, right[2]))  # the window of an interior patch
    assert "full block" in rejected("05.4", (right[0], right[1], right[0]))
    assert "three counts" in rejected("05.4", right[0])


def test_05_patch_and_channel_quiz_is_checked():
    message = rejected("05.5", (3, 4000 - 3 * 1280 + 1))
    assert "channel" in message and "160" not in message


# ----------------------------------------------------------------------------- chapter 06
def test_06_expansion_without_the_merge_is_rejected():
    def expand_per_patch(text, grids, pad="<|image_pad|>", merge=2):
        parts = text.split(pad)
        if len(parts) - 1 != len(grids):
            raise ValueError("counts differ")
        return parts[0] + "".join(pad * (t * h * w) + rest for (t, h, w), rest in zip(grids, parts[1:]))

    message = rejected("06.2", expand_per_patch)
    assert "your text has 1512 <|image_pad|>, the right one 378" in message


def test_06_splice_that_restarts_every_row_is_rejected():
    def splice_per_row(embeds, input_ids, features, token_id):
        out = embeds.clone()
        for row in range(input_ids.shape[0]):
            mask = input_ids[row] == token_id
            out[row, mask] = features[: int(mask.sum())]  # every row starts again at feature 0
        return out

    message = rejected("06.3", splice_per_row)
    assert "pads per row [5, 9]" in message and "row-major" in message and "values differ" in message


def test_06_prompt_without_the_trailing_newline_is_rejected(chapter_answers):
    mine = _answers(chapter_answers, "06")["06.1"]
    message = rejected("06.1", lambda *args, **kwargs: mine(*args, **kwargs).rstrip("\n"))
    assert "differs from character" in message and "the chapter's prompt" in message


def test_06_two_image_count_without_the_second_images_markers_is_rejected():
    right = EXERCISES["06.4"].expected()
    message = rejected("06.4", right - 2)
    assert "tokens" in message and "markers" in message and str(right) not in message


def test_06_second_turn_with_an_open_first_answer_is_rejected(chapter_answers):
    mine = _answers(chapter_answers, "06")["06.6"]

    def unclosed_answer(q1, a1, q2, images_1=1, images_2=0, system="You are a helpful assistant."):
        return mine(q1, a1, q2, images_1, images_2, system).replace(
            a1 + "<|im_end|>\n", a1 + "\n", 1)

    message = rejected("06.6", unclosed_answer)
    assert "differs from character" in message and "an image in the first turn" in message
    assert "earlier answer" in message


def test_06_images_of_the_second_turn_moved_to_the_first_are_rejected(chapter_answers):
    mine = _answers(chapter_answers, "06")["06.6"]

    def images_up_front(q1, a1, q2, images_1=1, images_2=0, system="You are a helpful assistant."):
        return mine(q1, a1, q2, images_1 + images_2, 0, system)

    message = rejected("06.6", images_up_front)
    assert "conversation [an image in each turn]" in message and "images of each turn" in message


# ----------------------------------------------------------------------------- chapter 07
def test_07_seconds_truncated_first_is_rejected():
    def truncating(grid, start, second_per_grid=0.0):  # transformers 4.57.6's int(second_per_grid)
        t, h, w = (int(x) for x in grid)
        time = torch.arange(t) * int(second_per_grid) * 2
        tt, hh, ww = torch.meshgrid(time, torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        return rearrange(torch.stack([tt, hh, ww]), "axes t h w -> axes (t h w)") + start

    message = rejected("07.1", truncating)
    assert "second_per_grid 0.5" in message and "4 fps" in message


def test_07_repeat_instead_of_repeat_interleave_is_rejected():
    def wrong_order(grid, start, second_per_grid=0.0):
        t, h, w = (int(x) for x in grid)
        rows, cols = torch.arange(h // 2).repeat(w // 2), torch.arange(w // 2).repeat_interleave(h // 2)  # swapped
        time = (torch.arange(t, dtype=torch.float64) * second_per_grid * 2).floor().long()
        ids = torch.stack([time.repeat_interleave(h * w // 4), rows.repeat(t), cols.repeat(t)])
        return ids + start

    message = rejected("07.1", wrong_order)
    assert "ids (t, h, w) of grid (1, 6, 8)" in message and "values differ" in message


def test_07_missing_plus_one_after_a_block_is_rejected(chapter_answers):
    namespace = _answers(chapter_answers, "07")["07.2"].__globals__

    def missing_plus_one(ids, images, videos):
        chunks, start, i = [], 0, 0
        while i < len(ids):
            if ids[i] in (namespace["IMAGE"], namespace["VIDEO"]):
                grid, seconds = (next(images), 0.0) if ids[i] == namespace["IMAGE"] else next(videos)
                block = namespace["vision_positions"](grid, start, 2, seconds, 2)
                start = int(block.max())  # should be + 1
            else:
                block = namespace["my_text_positions"](1, start)
                start += 1
            chunks.append(block)
            i += block.shape[1]
        return torch.cat(chunks, dim=1)

    message = rejected("07.2", missing_plus_one)
    assert "position ids of [3 + image (1, 6, 8) + 3]" in message and "values differ" in message


def test_07_quiz_answers_are_checked():
    assert "delta" in rejected("07.3", (395, 37, -358))
    assert "1 fps" in rejected("07.4", (18, [0, 2, 4, 6, 8]))
    assert "next position ids" in rejected("07.5", [13, 25])
