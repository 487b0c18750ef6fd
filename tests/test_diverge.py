"""diverge names the stage where each planted bug first shows (chapter 13), and no stage on a clean copy."""

import copy

import pytest
import torch

from qvl_minimal.bugs import BUGS, COMPONENTS, HIDDEN, debug_inputs, mystery_bug, mystery_model, plant, tiny_model
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


@pytest.mark.parametrize("name", [*BUGS, *HIDDEN])
def test_each_planted_bug_is_found_at_its_stage(name, model, inputs, clean_stages):
    bug = {**BUGS, **HIDDEN}[name]
    assert bug.component in COMPONENTS
    broken = plant(model, bug)
    result = diverge(broken, clean_stages["good"], inputs["good"])
    assert result.first == bug.stage, str(result)
    assert result.rels[bug.stage] > 100 * result.tol  # orders of magnitude, not rounding
    assert all(result.rels[n] == 0 for n in list(result.rels)[: list(result.rels).index(bug.stage)])
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
    bugs = {mystery_bug(seed).name for seed in range(40)}
    assert bugs == set(HIDDEN) and not bugs & set(BUGS)
    broken = mystery_model(3)
    x = debug_inputs(broken.config)
    assert diverge(broken, tiny_model(), x).first == mystery_bug(3).stage


def test_stage_rel_is_infinite_when_shapes_differ():
    from qvl_minimal.stages import stage_rel

    assert stage_rel(torch.ones(3), torch.ones(4)) == float("inf") and stage_rel(None, torch.ones(1)) == float("inf")
