"""Chapter 12's exercises: the solutions pass; plausible wrong answers are refused by name; the quiz's
answer is printed nowhere in the chapter's handout."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch
from einops import rearrange

from qvl_minimal.labs import check
from qvl_minimal.labs.core import EXERCISES, load_chapter
from qvl_minimal.labs.handouts import make_handout

CHAPTER = "12_speed_and_memory.ipynb"
CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


def quantize_groups_mine(w, group, *, per_row=False, divide_by=127, truncate=False):
    g = rearrange(w, "r (n k) -> r n k", k=w.shape[1] if per_row else group)  # (rows, groups, group)
    scale = g.abs().amax(dim=-1) / divide_by  # (rows, groups)
    x = g / scale.clamp(min=1e-30)[..., None]
    q = (torch.trunc(x) if truncate else torch.round(x)).clamp(-128, 127).to(torch.int8)
    return rearrange(q, "r n k -> r (n k)"), scale


def test_solutions_pass(capsys):
    check("12.1", 39)
    check("12.2", quantize_groups_mine)
    out = capsys.readouterr().out
    assert out.count("PASS 12.") == 2


@pytest.mark.parametrize("answer, words", [
    (35, ["shortest compute-bound prompt", "the head is read in full"]),  # intensity taken as exactly L
    (25, ["not right"]),
])
def test_quiz_wrong_answers(answer, words):
    with pytest.raises(AssertionError) as refused:
        check("12.1", answer)
    assert all(w in str(refused.value) for w in words) and "39" not in str(refused.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(per_row=True), ["groups of 32", "scale", "shape"]),
    (dict(divide_by=128), ["scale", "values differ"]),
    (dict(truncate=True), ["half a step", "do not truncate"]),
])
def test_quantiser_wrong_answers(kwargs, words):
    with pytest.raises(AssertionError) as refused:
        check("12.2", lambda w, group: quantize_groups_mine(w, group, **kwargs))
    message = str(refused.value)
    assert message.startswith("12.2 ") and all(w in message for w in words), message


def test_quiz_answer_is_not_in_the_handout():
    """The handout's text (prose and code) must not print 12.1's answer."""
    load_chapter("12")
    expected = EXERCISES["12.1"].expected()
    chapter = nbformat.read(CHAPTERS / CHAPTER, as_version=4)
    handout, _ = make_handout(chapter, CHAPTER)
    text = "\n".join(cell.source for cell in handout.cells)
    assert not re.search(rf"(?<![\d.,]){expected}(?![\d.,]\d)", text), f"{expected} appears in the handout"
