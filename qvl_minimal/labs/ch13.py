"""Chapter 13's exercises: find a hidden bug, write the profile yourself, a quiz on naive inputs.

    13.1  the mystery model: {"seed": s, "stage": first diverging stage, "component": one of COMPONENTS}
    13.2  divergence_chapter(stages_a: dict, stages_b: dict, tol) -> (rels: dict, first: str | None)
    13.3  quiz: the set of the chapter's BUGS that a text-only prompt catches

Every answer is checked against the library: diverge / record_stages on the planted copies of
`tiny_model()`, never against a stored value.
"""

from __future__ import annotations

import math
from functools import lru_cache

from ..bugs import BUGS, COMPONENTS, debug_inputs, mystery_bug, mystery_model, plant, tiny_model
from ..stages import Divergence, diverge, record_stages, stage_rel
from .core import assert_answer, exercise


@lru_cache(maxsize=1)
def _library_model():
    """tiny_model(), built once per process (planting copies it; nothing changes it)."""
    return tiny_model()


@exercise("13.1", "the mystery model's bug")
def _(answer) -> str:
    if not (isinstance(answer, dict) and {"seed", "stage", "component"} <= answer.keys()):
        raise AssertionError('answer with a dict {"seed": MYSTERY_SEED, "stage": ..., "component": ...}')
    seed, stage, component = answer["seed"], answer["stage"], answer["component"]
    if not isinstance(seed, int):
        raise AssertionError(f"seed must be the int you passed to mystery_model, got {seed!r}")
    if component not in COMPONENTS:
        raise AssertionError(f"component {component!r} is not one of {sorted(COMPONENTS)}")
    model = _library_model()
    found = diverge(mystery_model(seed), model, debug_inputs(model.config)).first  # the library's verdict
    bug = mystery_bug(seed)
    assert found == bug.stage, "the planted bug no longer shows where bugs.py says (a library change?)"
    assert_answer(stage, found, f"stage of mystery model {seed}",
                  hint="the FIRST stage whose rel reaches the tolerance, spelled as diverge prints it")
    assert_answer(component, bug.component, f"component of mystery model {seed}",
                  hint="bisect inside the stage: record its submodules with diverge(..., paths=[...])")
    return f"mystery model {seed}: stage and component right"


def _cases():
    """(stages of a broken copy, stages of the library's model) on the good and the text-only prompt."""
    model = _library_model()
    for prompt, bug in (("good", "no +1 after an image"), ("text only", "kv heads tiled")):
        inputs = debug_inputs(model.config, prompt)
        clean = record_stages(model, inputs)
        yield f"no bug on the {prompt} prompt", clean, clean
        yield f"{bug!r} on the {prompt} prompt", record_stages(plant(model, bug), inputs), clean


@exercise("13.2", "relative error per stage and the first divergence")
def _(divergence_mine) -> str:
    cases = list(_cases())
    cases.append(("a stage missing on one side", {"x": cases[0][1]["merger"]}, {"x": cases[0][2]["merger"],
                                                                               "y": cases[0][2]["merger"]}))
    for what, a, b in cases:
        a, b = ({k: v for k, v in x.items() if k != "logits"} for x in (a, b))  # (1, L, 151936): slow to compare
        rels_b = {name: stage_rel(a.get(name), b.get(name)) for name in b}
        for tol in (1e-5, 0.5):
            answer = divergence_mine(dict(a), dict(b), tol)
            if not (isinstance(answer, (tuple, list)) and len(answer) == 2 and isinstance(answer[0], dict)):
                raise AssertionError(f"{what}: return (rels: dict, first: str or None)")
            expected = Divergence(rels_b, tol)
            rels, first = answer
            if list(rels) != list(expected.rels):
                raise AssertionError(f"{what}: stages {list(rels)[:4]}..., expected model_b's stages in its order")
            for name, rel in expected.rels.items():
                if not math.isclose(float(rels[name]), rel, rel_tol=1e-6, abs_tol=1e-12):
                    raise AssertionError(f"{what}, stage {name!r}: rel differs from max|a - b| / max|b|")
            assert_answer(first, expected.first, f"{what}, tol {tol:g}: first stage",
                          hint="the first stage, in order, whose rel is >= tol; None when there is none")
    return f"{len(cases)} cases x 2 tolerances incl. integer position ids, a clean pair and a missing stage"


@exercise("13.3", "what a text-only prompt catches")
def _(caught) -> str:
    if not isinstance(caught, (set, frozenset)):
        raise AssertionError(f"answer with a set of names from BUGS, got {type(caught).__name__}")
    unknown = caught - BUGS.keys()
    if unknown:
        raise AssertionError(f"not names of the chapter's bugs: {sorted(unknown)}")
    model = _library_model()
    inputs = debug_inputs(model.config, "text only")
    clean = record_stages(model, inputs)
    expected = {name for name in BUGS if diverge(plant(model, name), clean, inputs).first is not None}
    assert_answer(caught, expected, "bugs a text-only prompt catches",
                  hint="a bug in the vision tower or in the ids of visual tokens has nothing to act on")
    return f"{len(BUGS)} bugs, exact"
