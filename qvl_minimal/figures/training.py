"""The training chapter's pictures: examples of the shapes task, and a learning curve
(chapter 14).

`shape_examples` draws held-out examples with their question and answer; `learning_curve` draws a
training history (the list `training.train` returns, or the "history" of a checkpoint's
training.json): the mean training loss between evaluations and the three held-out accuracies, with
the accuracy a guess would reach. `figures/14_learning_curve.png` is the default `train` run recorded
in `figures/14_learning_curve.json` (the run's training.json, machine named there).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt

from ..shapes import QUESTION_KINDS, held_out

RECORD = Path(__file__).resolve().parents[2] / "figures" / "14_learning_curve.json"
CHANCE = {"colour": 1 / 3, "count": 1 / 3, "box": 0.0}  # a uniform guess among 3 colours / 3 counts
COLOURS = {"colour": "#c03030", "count": "#2f8f4f", "box": "#3b75af"}


def shape_examples(n: int = 6, columns: int = 3):
    """n held-out examples (question kinds in turn), each with its question and the expected answer."""
    examples = [ex for i in range(n) for ex in held_out(1, kinds=(QUESTION_KINDS[i % 3],), start=i)]
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.5 * rows), dpi=90, squeeze=False)
    for ax, ex in zip(axes.flat, examples):
        ax.imshow(ex.image, interpolation="nearest")
        ax.set_xticks([0, 56, 111])
        ax.set_yticks([0, 56, 111])
        ax.tick_params(labelsize=7)
        ax.set_title(ex.question, fontsize=8)
        ax.set_xlabel("\n".join(textwrap.wrap(ex.answer, 34)), fontsize=7, family="monospace")
    for ax in axes.flat[len(examples):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def learning_curve(history: list[dict], title: str = ""):
    """Loss (log scale) and held-out accuracy per question kind against the step."""
    steps = [h["step"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    left.plot(steps, [h["loss"] for h in history], "o-", color="#555555", ms=3)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("training loss (mean since the last point)")
    for kind in (k for k in QUESTION_KINDS if k in history[0]):
        right.plot(steps, [100 * h[kind] for h in history], "o-", ms=3, color=COLOURS[kind], label=kind)
        right.axhline(100 * CHANCE[kind], color=COLOURS[kind], ls=":", lw=1)
    right.set_ylim(-3, 103)
    right.set_xlabel("step")
    right.set_ylabel("held-out accuracy (%)")
    right.legend(loc="lower right", fontsize=8)
    right.text(steps[0], 100 / 3 + 2, "guess (colour, count)", fontsize=7, color="#777777")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def recorded_learning_curve():
    """The learning curve of the default `train` run recorded in figures/14_learning_curve.json."""
    record = json.loads(RECORD.read_text(encoding="utf-8"))
    minutes = record["seconds"] / 60
    return learning_curve(record["history"], f"python -m qvl_minimal train (default: {record['settings']['steps']} "
                                             f"steps, {minutes:.0f} min on {record.get('machine', 'this machine')})")


FIGURES = {"14_shapes_examples": shape_examples}
if RECORD.is_file():
    FIGURES["14_learning_curve"] = recorded_learning_curve
