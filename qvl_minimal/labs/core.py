"""The lab checker: `check("04.1", answer)` grades one exercise against the library.

    check(exercise_id, answer)
        -> imports qvl_minimal.labs.chNN (the chapter's checkers register themselves)
        -> runs the checker on fresh seeded inputs
        -> prints one line `PASS 04.1 <title>: <summary>`,
           or raises AssertionError("04.1 <title>: <what is wrong>") without showing the answer.

A chapter's checkers live in `labs/chNN.py`:

    @exercise("04.1", "window_index with its padding")
    def _(window_index_mine) -> str:
        for grid in GRIDS:                   # several shapes, the edge cases included
            assert_tensor_matches(window_index_mine(grid), window_index(grid), f"grid {grid}")
        return f"{len(GRIDS)} grids, exact"  # the summary printed after PASS

NotImplementedError (a stub the student has not filled in) is not caught: it propagates, so a
grader can tell "not attempted" from "wrong".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Exercise:
    id: str                        # "04.1": chapter 04, exercise 1
    title: str                     # what the student builds, a few words
    checker: Callable[[Any], str]  # answer -> summary; raises AssertionError when wrong
    expected: Callable[[], Any] | None = None  # a quiz's right answer (predict-a-value exercises only):
    #                                            the handout test checks it appears nowhere in the handout


EXERCISES: dict[str, Exercise] = {}


def exercise(exercise_id: str, title: str, expected: Callable[[], Any] | None = None):
    """Register `checker(answer) -> summary` under `exercise_id` ("CC.N"). A quiz (the student predicts a
    value) also passes `expected`, a function that computes the right answer, so that a test can check
    the value is printed nowhere in the chapter's handout."""
    chapter, _, number = exercise_id.partition(".")
    if not (len(chapter) == 2 and chapter.isdigit() and number.isdigit()):
        raise ValueError(f"exercise id {exercise_id!r}: write it as 'CC.N', e.g. '04.1'")

    def register(checker):
        if exercise_id in EXERCISES and EXERCISES[exercise_id].checker is not checker:
            raise ValueError(f"exercise {exercise_id} is registered twice")
        EXERCISES[exercise_id] = Exercise(exercise_id, title, checker, expected)
        return checker

    return register


def load_chapter(chapter: str) -> None:
    """Import labs/chNN.py, whose @exercise decorators fill EXERCISES."""
    try:
        importlib.import_module(f"{__package__}.ch{chapter}")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.ch{chapter}":
            raise
        raise KeyError(f"chapter {chapter} has no exercises (no qvl_minimal/labs/ch{chapter}.py)") from None


def check(exercise_id: str, answer) -> None:
    """Grade `answer` for exercise `exercise_id`; print one PASS line or raise AssertionError."""
    if exercise_id not in EXERCISES:  # registered already (by a notebook, or an earlier check) or in labs/chNN.py
        load_chapter(exercise_id.partition(".")[0])
    if exercise_id not in EXERCISES:
        known = sorted(k for k in EXERCISES if k[:2] == exercise_id[:2])
        raise KeyError(f"no exercise {exercise_id!r}; this chapter has {known}")
    print(run_checker(EXERCISES[exercise_id], answer))


def run_checker(ex: Exercise, answer) -> str:
    """The line `PASS <id> <title>: <summary>`, or AssertionError("<id> <title>: <what is wrong>").
    The grader (labs/worker.py) calls this with its own copy of `ex` and an answer fetched from the kernel."""
    if answer is None or answer is Ellipsis:
        raise AssertionError(f"{ex.id} {ex.title}: no answer yet (the variable is {answer!r})")
    with torch.random.fork_rng(devices=[]):  # fresh, seeded inputs; the notebook's own RNG is untouched
        torch.manual_seed(int(ex.id.replace(".", "")))
        try:
            summary = ex.checker(answer)
        except AssertionError as e:
            raise AssertionError(f"{ex.id} {ex.title}: {e}") from None
    return f"PASS {ex.id} {ex.title}: {summary}"


def assert_tensor_matches(mine, expected: torch.Tensor, what: str, atol: float = 0.0, rtol: float = 0.0) -> None:
    """mine == expected within atol + rtol * |expected|; the message says where, never the values."""
    if not isinstance(mine, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(mine).__name__}")
    if tuple(mine.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: shape {tuple(mine.shape)}, expected {tuple(expected.shape)}")
    if mine.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {mine.dtype}, expected {expected.dtype}")
    if mine.is_floating_point():
        diff = (mine.double() - expected.double()).abs()
        bad = ~(diff <= atol + rtol * expected.double().abs())  # NaN counts as bad
    else:
        diff, bad = (mine != expected), (mine != expected)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        worst = f", max error {diff.nan_to_num(float('inf')).max().item():.3g}" if mine.is_floating_point() else ""
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} values differ, the first at index "
                             f"{first}{worst} (tolerance atol={atol:g}, rtol={rtol:g})")


def assert_answer(mine, expected, what: str, tol: float = 0.0, hint: str = "") -> None:
    """A quiz answer: a number (within tol) or an exact value; a wrong one gets the hint, not the answer."""
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        ok = isinstance(mine, (int, float)) and not isinstance(mine, bool) and abs(mine - expected) <= tol
    else:
        ok = mine == expected
    if not ok:
        raise AssertionError(f"{what}: {mine!r} is not right." + (f" Hint: {hint}" if hint else ""))
