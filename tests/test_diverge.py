"""diverge names the stage where each planted bug first shows (chapter 13), and no stage on a clean copy;
the mystery model's answer is not readable from a public name of qvl_minimal.bugs; chapter 13's checkers."""

import copy
import dataclasses
import inspect

import pytest
import torch

from qvl_minimal import bugs
from qvl_minimal.bugs import (BUGS, COMPONENTS, _MYSTERY_SLIPS, _mystery_slip, debug_inputs, mystery_model, plant,
                              tiny_model)
from qvl_minimal.labs import check
from qvl_minimal.labs.ch13 import _ANSWERS
from qvl_minimal.reference import reference_sharing_weights
from qvl_minimal.stages import diverge, record_stages, stages_of


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def inputs(model):
    return {name: debug_inputs(model.config, name) for name in ("good", "square image", "text only", "one window")}


@pytest.fixture(scope="module")
def clean_stages(model, inputs):
    """One run of the library's model per input, reused by every bug."""
    return {name: record_stages(model, x) for name, x in inputs.items()}


def test_a_clean_copy_diverges_nowhere(model, inputs):
    result = diverge(copy.deepcopy(model), model, inputs["good"])
    assert result.first is None and all(rel == 0 for rel in result.rels.values())  # same code, same bits
    names = list(result.rels)
    assert names[:2] == ["patch embedding", "vision block 0"] and names[-2:] == ["final norm", "logits"]
    assert names.index("merger") < names.index("spliced embeddings") < names.index("position ids") < names.index("decoder layer 0")


def test_text_only_prompt_has_no_vision_stages(model, inputs):
    result = diverge(copy.deepcopy(model), model, inputs["text only"])
    assert list(result.rels)[:2] == ["spliced embeddings", "position ids"] and result.first is None


MYSTERY = {slip.__name__: slip for slip in _MYSTERY_SLIPS}


@pytest.mark.parametrize("name", [*BUGS, *MYSTERY])
def test_each_planted_bug_is_found_at_its_stage(name, model, inputs, clean_stages):
    if name in BUGS:
        bug, (stage, component) = BUGS[name], (BUGS[name].stage, BUGS[name].component)
    else:
        bug, (stage, component) = MYSTERY[name], _ANSWERS[name]  # the checker's answer for this slip
    assert component in COMPONENTS
    broken = plant(model, bug)
    result = diverge(broken, clean_stages["good"], inputs["good"])
    assert result.first == stage, str(result)
    assert result.rels[stage] > 100 * result.tol  # orders of magnitude, not rounding
    assert all(result.rels[n] == 0 for n in list(result.rels)[: list(result.rels).index(stage)])
    assert diverge(model, clean_stages["good"], inputs["good"]).first is None  # the original is untouched


def test_the_hiding_bug_passes_the_naive_inputs_and_fails_the_good_one(model, inputs, clean_stages):
    broken = plant(model, "edge windows assumed full")
    assert diverge(broken, clean_stages["square image"], inputs["square image"]).first is None
    assert diverge(broken, clean_stages["text only"], inputs["text only"]).first is None
    assert diverge(broken, clean_stages["good"], inputs["good"]).first == "vision block 0"


@pytest.mark.parametrize("name", ["merger order", "full attention ignored", "edge windows assumed full"])
def test_window_bugs_hide_from_an_image_of_one_window(name, model, inputs, clean_stages):
    broken = plant(model, name)  # one window: window order = raster order, and the window is the whole image
    assert diverge(broken, clean_stages["one window"], inputs["one window"]).first is None
    assert diverge(broken, clean_stages["good"], inputs["good"]).first == BUGS[name].stage


@pytest.mark.parametrize("name", ["mrope sections reversed", "no +1 after an image"])
def test_position_bugs_hide_from_text_only_prompts(name, model, inputs, clean_stages):
    broken = plant(model, name)
    assert diverge(broken, clean_stages["text only"], inputs["text only"]).first is None
    assert diverge(broken, clean_stages["square image"], inputs["square image"]).first == BUGS[name].stage


def test_bisecting_inside_a_stage_by_module_paths(model, inputs):
    paths = ["visual.blocks.0.norm1", "visual.blocks.0.attn.qkv", "visual.blocks.0.attn.proj:input",
             "visual.blocks.0.attn"]
    result = diverge(plant(model, "vision rotary sign"), model, inputs["good"], paths=paths)
    assert list(result.rels) == paths and result.first == "visual.blocks.0.attn.proj:input"


def test_against_the_reference_on_shared_weights(model, inputs):
    ref = reference_sharing_weights(model)
    healthy = diverge(model, ref, inputs["good"])
    assert healthy.first is None and len(healthy.rels) == len(stages_of(model)) + 3  # + ids, final norm, logits
    broken = diverge(plant(model, "full attention ignored"), ref, inputs["good"])
    assert broken.first == "vision block 1"
    # a checkpoint path resolves in the reference's tree too
    assert diverge(model, ref, inputs["good"], paths=["model.layers.1.mlp"]).first is None


def test_mystery_model_draws_from_the_hidden_set():
    drawn = {_mystery_slip(seed).__name__ for seed in range(40)}
    assert drawn == set(_ANSWERS) == set(MYSTERY)  # every slip drawn, and the checker knows each
    assert not {bug.inject for bug in BUGS.values()} & set(_MYSTERY_SLIPS)  # none of the chapter's bugs
    broken = mystery_model(3)
    x = debug_inputs(broken.config)
    assert diverge(broken, tiny_model(), x).first == _ANSWERS[_mystery_slip(3).__name__][0]


def _names_the_answer(value, stage: str, component: str) -> bool:
    """Does a value say which bug it is: a Bug-like object, a string, or a container holding them?"""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, str):
        return value in (stage, component)
    if isinstance(value, dict):
        return any(_names_the_answer(v, stage, component) for v in value.values())
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_names_the_answer(v, stage, component) for v in value)
    return any(getattr(value, attr, None) in (stage, component) for attr in ("stage", "component"))


def test_no_public_name_of_bugs_returns_the_mysterys_stage_or_component():
    public = {name: getattr(bugs, name) for name in dir(bugs) if not name.startswith("_")}
    assert "HIDDEN" not in public and "mystery_bug" not in public
    # no public table holds a mystery slip (BUGS and COMPONENTS name the chapter's bugs and every component)
    for name, value in public.items():
        if isinstance(value, dict):
            held = [v for v in value.values() if getattr(v, "inject", v) in _MYSTERY_SLIPS]
            assert not held, f"bugs.{name} holds a mystery slip"
    # no public function of one int, called with a seed, answers with the seed's stage or component
    takes_a_seed = {name: f for name, f in public.items() if inspect.isfunction(f)
                    and getattr(f, "__module__", "") == bugs.__name__
                    and len([p for p in inspect.signature(f).parameters.values()
                             if p.default is inspect.Parameter.empty]) == 1}
    assert "mystery_model" in takes_a_seed
    for seed in (3, 7):
        stage, component = _ANSWERS[_mystery_slip(seed).__name__]
        for name, f in takes_a_seed.items():
            try:
                value = f(seed)
            except Exception:  # not a function of a seed (plant, debug_inputs need more)
                continue
            assert not _names_the_answer(value, stage, component), f"bugs.{name}({seed}) names the mystery bug"


# ----------------------------------------------------------------------------- chapter 13's checkers
def test_13_1_right_and_wrong(capsys):
    stage, component = _ANSWERS[_mystery_slip(7).__name__]
    check("13.1", {"seed": 7, "stage": stage, "component": component})
    assert capsys.readouterr().out.startswith("PASS 13.1 ")
    wrong = next(c for c in COMPONENTS if c != component)
    with pytest.raises(AssertionError, match="component of mystery model 7") as refused:
        check("13.1", {"seed": 7, "stage": stage, "component": wrong})
    assert component not in str(refused.value).split("Hint")[0].replace(wrong, "")
    with pytest.raises(AssertionError, match="stage of mystery model 7"):
        check("13.1", {"seed": 7, "stage": "decoder layer 1", "component": component})


def test_13_3_a_small_prompt_that_catches_every_bug(capsys):
    check("13.3", (("image", (1, 4, 10)), 1))  # two rows of merge units, two windows, the second cut short
    assert capsys.readouterr().out.startswith("PASS 13.3 ")


@pytest.mark.parametrize("prompt, says", [
    ((("image", (1, 2, 10)), 1), "misses 1 of 7 bugs: merger order"),  # one row of units: window order = raster
    ((("image", (1, 4, 8)),), "merger order, full attention ignored, edge windows assumed full"),  # one window
    ((5, ("image", (1, 16, 16)), 7), "78 tokens; the budget is 16"),  # the chapter's square image
    ((("image", (1, 3, 10)),), "must be even"),
    ("image", "tuple of parts"),
])
def test_13_3_wrong_prompts_are_refused_by_name(prompt, says):
    with pytest.raises(AssertionError, match="^13.3 ") as refused:
        check("13.3", prompt)
    assert says in str(refused.value)


def test_stage_rel_is_infinite_when_shapes_differ():
    from qvl_minimal.stages import stage_rel

    assert stage_rel(torch.ones(3), torch.ones(4)) == float("inf") and stage_rel(None, torch.ones(1)) == float("inf")
