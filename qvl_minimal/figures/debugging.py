"""Chapter 13's picture: the profile of every planted bug, before and after the fix.

`bug_panels` draws one small log-scale profile per bug (relative error per stage against the
reference on shared weights), the broken copy in red and the fixed model (the library's) in grey;
`planted_bugs` recomputes them on the tiny model with the chapter's good prompt.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

FLOOR = 1e-9  # exact zeros are drawn here, with a hollow marker


def bug_panels(profiles: dict[str, tuple[dict[str, float], dict[str, float]]], tol: float = 1e-5,
               columns: int = 2):
    """profiles: bug name -> (rels before the fix, rels after), each stage -> rel, in stage order.

    The first stage over the tolerance (the one diverge names) is marked by a vertical line.
    """
    rows = math.ceil(len(profiles) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 2.5 * rows), dpi=90, sharex=True, sharey=True,
                             squeeze=False)
    for ax, (name, (before, after)) in zip(axes.flat, profiles.items()):
        names = list(before)
        for rels, color, label in ((after, "#999999", "after the fix"), (before, "#c03030", "with the bug")):
            values = [max(rels.get(n, 0.0), FLOOR) for n in names]
            ax.plot(range(len(names)), values, color=color, lw=1, zorder=2)
            ax.scatter(range(len(names)), values, s=16, zorder=3, color=[color if v > FLOOR else "white" for v in values],
                       edgecolors=color, label=label)
        first = next((i for i, n in enumerate(names) if before[n] >= tol), None)
        if first is not None:
            ax.axvline(first, color="#3b75af", lw=1, ls=":")
            ax.text(first + 0.15, 1.5, names[first], color="#3b75af", fontsize=7, va="top")
        ax.axhline(tol, color="#c03030", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 3, 30)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", color="#eeeeee", lw=0.6)
    for ax in axes.flat[len(profiles):]:
        ax.axis("off")
    names = list(next(iter(profiles.values()))[0])
    for ax in axes[-1]:
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("rel (log)", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="center left", frameon=False)
    fig.suptitle(f"relative error per stage against the reference, tolerance {tol:.0e} (dashed)", fontsize=10)
    fig.tight_layout()
    return fig


def planted_bugs():
    """The figure of chapter 13, recomputed: every bug of BUGS on the good prompt (seconds on a CPU)."""
    from ..bugs import BUGS, debug_inputs, plant, tiny_model
    from ..reference import reference_sharing_weights
    from ..stages import diverge, record_stages

    model = tiny_model()
    inputs = debug_inputs(model.config)
    theirs = record_stages(reference_sharing_weights(model), inputs)
    after = diverge(model, theirs, inputs).rels
    return bug_panels({name: (diverge(plant(model, name), theirs, inputs).rels, after) for name in BUGS})


FIGURES = {"13_planted_bugs": planted_bugs}
