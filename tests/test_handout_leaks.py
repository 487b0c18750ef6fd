"""A quiz's answer appears nowhere in its chapter's handout (issue 19).

Every exercise registered with `expected=` (a quiz: the student predicts a value) has its right answer
computed by `expected()`, rendered the ways a reader would meet it, and searched for in the chapter's
handout as `python -m qvl_minimal handouts` writes it: the markdown and code of every cell, and the
outputs the student sees when running the cells the handout keeps (the chapter's stored outputs of
every cell that is neither an exercise nor a check, since those run the library's code).

Renderings: str and repr; an int also with thousands separators (1,703 and 1_703); a float in a few
roundings (2 to 6 significant digits, 1 to 4 decimals, scientific); a tuple, list or set in round,
square and curly brackets, with and without spaces after the commas, bare (`66, 18`), and as
`66 x 18`; a container inside it on its own; a dict whole and each of its values alone if it has
three characters or more (the keys are the question, and two digits alone occur by chance in a
chapter's outputs: `first pixel [29, 29, 29]`). A rendering must stand alone: `546` does not match inside `1546` or `5.46`.

Ignored, because they are too short to mean anything when found: a rendering of fewer than two
characters other than signs, brackets and separators (a single digit such as `5`), True, False, None.
"""

from __future__ import annotations

import functools
import re

import nbformat
import pytest
import torch

from labs_helpers import CHAPTERS
from qvl_minimal.labs.core import EXERCISES, load_chapter
from qvl_minimal.labs.handouts import CHECK, EXERCISE, chapter_notebooks, make_handout, tags

NOTEBOOKS = {path.name[:2]: path for path in chapter_notebooks(CHAPTERS) if path.name[:2].isdigit()}
for _chapter in NOTEBOOKS:
    try:
        load_chapter(_chapter)
    except KeyError:
        pass  # a chapter without exercises
QUIZZES = sorted(i for i, ex in EXERCISES.items() if ex.expected is not None and i[:2] in NOTEBOOKS)


def meaningful(form: str) -> bool:
    return len(form.strip("-+()[]{}., x")) >= 2 and form not in ("True", "False", "None")


def renderings(value) -> set[str]:
    """The ways a reader would see `value` printed or written (see the module docstring)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if value is None or isinstance(value, bool):
        forms = set()
    elif isinstance(value, int):
        forms = {str(value), f"{value:,}", f"{value:_}"}
    elif isinstance(value, float):
        forms = {repr(value), str(value)} | {f"{value:.{k}g}" for k in range(2, 7)}
        forms |= {f"{value:.{k}f}" for k in range(1, 5)} | {f"{value:.{k}e}" for k in range(1, 4)}
        forms = {f for f in forms if any(c in "123456789" for c in f.split("e")[0])}  # not a rounding to 0.0
        if value.is_integer():
            forms |= renderings(int(value))
    elif isinstance(value, str):
        forms = {value, repr(value)}
    elif isinstance(value, dict):
        parts = set().union(*(renderings(v) for v in value.values()))
        forms = {str(value), repr(value)} | {f for f in parts if len(f) >= 3}  # 2 digits alone: by chance
    elif isinstance(value, (tuple, list, set, frozenset)):
        items = [repr(v) for v in value]
        forms = set()
        for sep in (", ", ","):
            body = sep.join(items)
            forms |= {f"({body})", f"[{body}]", f"{{{body}}}"} | ({body} if len(items) > 1 else set())
        if len(items) == 1:
            forms.add(f"({items[0]},)")
        if 1 < len(items) <= 4 and all(isinstance(v, int) for v in value):
            forms |= {" x ".join(items), " × ".join(items), "x".join(items)}
        for v in value:  # a list inside a tuple is a value of its own
            if isinstance(v, (tuple, list, set, frozenset, dict)):
                forms |= renderings(v)
    else:
        forms = {str(value), repr(value)}
    return {f for f in forms if meaningful(f)}


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") if isinstance(out.get("text", ""), str) else "".join(out["text"]))
        for kind in ("text/plain", "text/markdown", "text/html"):
            data = out.get("data", {}).get(kind, "")
            parts.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(parts)


@functools.lru_cache(maxsize=None)
def handout_text(chapter: str) -> str:
    """What the student reads in the handout of `chapter`, and sees when running the cells it keeps."""
    path = NOTEBOOKS[chapter]
    nb = nbformat.read(path, as_version=4)
    handout, _ = make_handout(nb, path.name)
    stored = {cell.get("id"): cell for cell in nb.cells}
    parts = []
    for cell in handout.cells:
        parts.append(cell.source)
        if cell.cell_type == "code" and not ({EXERCISE, CHECK} & set(tags(cell))) and cell.get("id") in stored:
            parts.append(_output_text(stored[cell.get("id")]))
    return "\n".join(parts)


def found(form: str, text: str) -> list[str]:
    """Each place `form` stands alone in `text`, with a little context."""
    pattern = re.compile(r"(?<![\w.])" + re.escape(form) + r"(?!\w|\.\d)")
    return [text[max(0, m.start() - 40) : m.end() + 40].replace("\n", " ") for m in pattern.finditer(text)]


def test_some_quizzes_declare_their_answer():
    """Without this the test below could pass by having nothing to look at."""
    assert QUIZZES, "no exercise registered with expected=...: quizzes must declare their answer"


def test_renderings():
    assert {"546", "(66, 18)", "(66,18)", "66, 18", "66 x 18", "[19, 25]", "1,703", "1_703"} <= (
        renderings(546) | renderings((66, 18)) | renderings([19, 25]) | renderings(1703))
    assert renderings(5) == set() and renderings(True) == set() and "16224" in renderings({(14, 2800): 16224})
    assert {"0.25", "2.5e-01"} <= renderings(0.25) and not {"0.0"} & renderings(0.0001)
    assert found("546", "x = 546\ny = 1546, 5.46, 546.2") == ["x = 546 y = 1546, 5.46, 546.2"]


@pytest.mark.parametrize("exercise_id", QUIZZES)
def test_quiz_answer_is_not_in_the_handout(exercise_id):
    value = EXERCISES[exercise_id].expected()
    text = handout_text(exercise_id[:2])
    leaks = {form: found(form, text)[:2] for form in sorted(renderings(value)) if found(form, text)}
    assert not leaks, f"{exercise_id}: its answer is in {NOTEBOOKS[exercise_id[:2]].name}'s handout: {leaks}"


@pytest.mark.parametrize("exercise_id", QUIZZES[:1] + QUIZZES[-1:])
def test_a_planted_answer_is_found(exercise_id):
    """The search finds the answer when a handout prints it (so the test above can fail)."""
    value = EXERCISES[exercise_id].expected()
    planted = handout_text(exercise_id[:2]) + f"\nprint({value!r})  # the answer\n"
    assert any(found(form, planted) for form in renderings(value))
