"""Chapter 13's exercises: find a hidden bug, write the profile yourself, build a small test input.

    13.1  the mystery model: {"seed": s, "stage": first diverging stage, "component": one of COMPONENTS}
    13.2  divergence_chapter(stages_a: dict, stages_b: dict, tol) -> (rels: dict, first: str | None)
    13.3  small_prompt: parts as in bugs.PROMPTS, at most 16 tokens, on which diverge catches all BUGS

13.2 and 13.3 are checked against the library: diverge / record_stages on the planted copies of
`tiny_model()`. 13.1's stage is the library's verdict too (diverge on the mystery model); its
component comes from _ANSWERS below, the one place that maps a mystery slip to its stage and
component (bugs.py names neither, so the notebook cannot ask for them). A student who reads this
file can read the answers: the checker keeps them out of the handout, not out of an installed package.
"""

from __future__ import annotations

import math
from functools import lru_cache

from ..bugs import BUGS, COMPONENTS, _mystery_slip, debug_inputs, mystery_model, plant, tiny_model
from ..stages import Divergence, diverge, record_stages, stage_rel
from .core import assert_answer, exercise


@lru_cache(maxsize=1)
def _library_model():
    """tiny_model(), built once per process (planting copies it; nothing changes it)."""
    return tiny_model()


_ANSWERS = {  # mystery slip (bugs.py's inject function) -> (first stage on the good prompt, component)
    "_patch_rows_misread": ("patch embedding", "patch embedding"),
    "_merger_strided": ("merger", "merger"),
    "_vision_causal": ("vision block 0", "vision attention"),
    "_gate_up_swapped": ("decoder layer 0", "text MLP"),
    "_rows_cols_swapped": ("position ids", "position ids"),
    "_head_tied": ("logits", "head"),
    "_final_norm_skipped": ("final norm", "norm"),
}


@exercise("13.1", "the mystery model's bug")
def _(answer) -> str:
    if not (isinstance(answer, dict) and {"seed", "stage", "component"} <= answer.keys()):
        raise AssertionError('answer with a dict {"seed": MYSTERY_SEED, "stage": ..., "component": ...}')
    seed, stage, component = answer["seed"], answer["stage"], answer["component"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AssertionError(f"seed must be the int you passed to mystery_model, got {seed!r}")
    if component not in COMPONENTS:
        raise AssertionError(f"component {component!r} is not one of {sorted(COMPONENTS)}")
    model = _library_model()
    found = diverge(mystery_model(seed), model, debug_inputs(model.config)).first  # the library's verdict
    right_stage, right_component = _ANSWERS[_mystery_slip(seed).__name__]
    assert found == right_stage, "the mystery slip no longer shows where _ANSWERS says (a library change?)"
    assert_answer(stage, found, f"stage of mystery model {seed}",
                  hint="the FIRST stage whose rel reaches the tolerance, spelled as diverge prints it")
    assert_answer(component, right_component, f"component of mystery model {seed}",
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


MAX_TOKENS = 16  # 13.3's budget; the good prompt has 95


def _prompt_tokens(parts) -> int:
    """Tokens of a prompt written as in bugs.PROMPTS; AssertionError naming what is malformed."""
    if not isinstance(parts, (tuple, list)) or not parts:
        raise AssertionError(f"answer with a tuple of parts, as in bugs.PROMPTS, got {parts!r}")
    tokens = 0
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool) and part > 0:
            tokens += part
            continue
        ok = (isinstance(part, (tuple, list)) and len(part) == 2 and part[0] in ("image", "video")
              and isinstance(part[1], (tuple, list)) and len(part[1]) == 3
              and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in part[1]))
        if not ok:
            raise AssertionError(f"part {part!r}: write n (n > 0 text tokens) or "
                                 "('image' | 'video', (t, h, w)) in patches")
        t, h, w = part[1]
        if h % 2 or w % 2 or (part[0] == "image" and t != 1):
            raise AssertionError(f"part {part!r}: h and w in patches must be even (2 x 2 patches make "
                                 "a token), and an image has t = 1")
        tokens += 2 + t * h * w // 4  # <|vision_start|>, the pads, <|vision_end|>
    return tokens


@exercise("13.3", "a small prompt that catches every bug")
def _(small_prompt) -> str:
    tokens = _prompt_tokens(small_prompt)
    if tokens > MAX_TOKENS:
        raise AssertionError(f"your prompt has {tokens} tokens; the budget is {MAX_TOKENS}")
    model = _library_model()
    inputs = debug_inputs(model.config, tuple(small_prompt))
    clean = record_stages(model, inputs)
    missed = [name for name in BUGS if diverge(plant(model, name), clean, inputs).first is None]
    if missed:
        raise AssertionError(f"your prompt ({tokens} tokens) misses {len(missed)} of {len(BUGS)} bugs: "
                             f"{', '.join(missed)}; what must an input contain for each to show?")
    return f"{tokens} tokens, all {len(BUGS)} bugs caught"
