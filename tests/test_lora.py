"""LoRA (qvl_minimal/lora.py): the layer's formula, the frozen base, merge/unmerge, and PEFT's format:
our adapter loads into peft on the reference model with the same logits, and peft's loads into ours."""

import json
import math
import os
import sys

import pytest
import torch

import qvl_minimal as qvl
from qvl_minimal.lora import (DECODER_TARGETS, LoRALinear, add_lora, load_peft_adapter, lora_modules,
                              lora_parameters, lora_state_dict, merge_lora, save_peft_adapter, unload_lora,
                              unmerge_lora)
from qvl_minimal.reference import compare
sys.path.insert(0, os.path.dirname(__file__))
from model_helpers import load_pair, sample  # noqa: E402

CFG = qvl.Qwen25VLConfig.preset("tiny")
MERGE_TOL = 1e-6  # merged vs unmerged logits: the same sums in another order, float32 rounding only
PEFT_TOL = 1e-5  # ours vs the reference under peft: the model parity tolerance of tests/test_model.py


def inputs():
    return sample(CFG, 5, ("image", (1, 4, 4)), 7, seed=1)  # text, a 4 x 4-patch image, text


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return qvl.Qwen25VL(CFG).eval()


@torch.no_grad()
def randomize_adapters(model, seed=1, scale=0.05):
    """Non-zero B (and a new A), so that no check can pass because the update is zero."""
    gen = torch.Generator().manual_seed(seed)
    for m in lora_modules(model).values():
        m.A.copy_(torch.randn(m.A.shape, generator=gen) * scale)
        m.B.copy_(torch.randn(m.B.shape, generator=gen) * scale)
    return model


def test_layer_formula_and_init():
    torch.manual_seed(0)
    base = torch.nn.Linear(48, 40)
    layer = LoRALinear(base, rank=4, alpha=12)
    A = layer.A.detach()
    assert A.shape == (4, 48) and layer.B.shape == (40, 4)
    assert torch.count_nonzero(layer.B) == 0  # B = 0: the layer starts as the base
    assert 0.5 / math.sqrt(48) < A.abs().max() <= 1 / math.sqrt(48)  # kaiming-uniform a=sqrt(5): U(+-1/sqrt(in))
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(3, 5, 48)
    by_hand = x @ base.weight.T + base.bias + (12 / 4) * (x @ layer.A.T) @ layer.B.T  # y = Wx + b + (alpha/r) BAx
    compare("LoRALinear = Wx + b + (alpha/r) B A x", layer(x), by_hand, tol=1e-6)


def test_default_targets_are_the_decoders_seven_projections_and_the_rest_is_frozen():
    model = add_lora(fresh_model(), rank=4, alpha=8)
    names = list(lora_modules(model))
    layers = CFG.text_config.num_hidden_layers
    assert len(names) == 7 * layers and all(n.startswith("model.layers.") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == set(DECODER_TARGETS)
    assert not any(isinstance(m, LoRALinear) for m in model.visual.modules())  # vision tower: no LoRA
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in model.state_dict()  # PEFT's layout
    assert "model.layers.0.mlp.down_proj.lora_B.default.weight" in model.state_dict()


def test_starts_unchanged_and_only_lora_gets_gradients():
    model = fresh_model()
    batch = inputs()
    with torch.no_grad():
        before = model(**batch)
    add_lora(model, rank=4, alpha=8)
    logits = model(**batch)
    assert torch.equal(logits, before)  # B = 0 adds exact zeros
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    # with B = 0, dL/dA = (alpha/r) B^T (...) = 0 exactly, while B's gradient is not: B moves first
    mods = lora_modules(model).values()
    assert all(torch.count_nonzero(m.A.grad) == 0 for m in mods)
    assert all(torch.count_nonzero(m.B.grad) > 0 for m in mods)


def test_merge_equals_unmerged_and_unmerge_restores_the_weights():
    model = randomize_adapters(add_lora(fresh_model(), rank=4, alpha=8))
    batch = inputs()
    originals = {n: m.base_layer.weight.detach().clone() for n, m in lora_modules(model).items()}
    with torch.no_grad():
        unmerged = model(**batch)
        merge_lora(model)
        assert all(m.merged for m in lora_modules(model).values())
        changed = max((m.base_layer.weight - originals[n]).abs().max().item() for n, m in lora_modules(model).items())
        assert changed > 1e-3  # the merge moved the weights
        merged = model(**batch)
        compare("merged vs unmerged logits", merged, unmerged, tol=MERGE_TOL)
        unmerge_lora(model)
        for n, m in lora_modules(model).items():
            # W + dW - dW: one rounding of W + dW, at most half an ulp of |W| + |dW| (2^-24 relative)
            compare(f"unmerged {n}", m.base_layer.weight, originals[n], tol=MERGE_TOL, show=False)
        compare("unmerged model vs before the merge", model(**batch), unmerged, tol=MERGE_TOL)


def test_unload_gives_a_plain_model_with_the_checkpoint_names():
    model = randomize_adapters(add_lora(fresh_model(), rank=4, alpha=8))
    plain_names = set(fresh_model().state_dict())
    batch = inputs()
    with torch.no_grad():
        with_lora = model(**batch)
        unload_lora(model)
        assert not lora_modules(model) and set(model.state_dict()) == plain_names
        compare("merged-and-unloaded vs LoRA logits", model(**batch), with_lora, tol=MERGE_TOL)


def test_bad_targets_and_double_add_are_errors():
    with pytest.raises(ValueError, match="'q_prj' matches no nn.Linear"):
        add_lora(fresh_model(), targets=("q_proj", "q_prj"))
    with pytest.raises(ValueError, match="rank"):
        add_lora(fresh_model(), rank=0)
    model = add_lora(fresh_model())
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)


def test_vision_scope_adapts_the_tower():
    model = add_lora(fresh_model(), targets=("qkv", "attn.proj"), scope="visual.")
    assert len(lora_modules(model)) == 2 * CFG.vision_config.depth


# ----------------------------------------------------------------------------- PEFT's format
def peft_state(peft_model) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model, save_embedding_layers=False)  # no look-up of a base config


def test_our_adapter_loads_into_peft_on_the_reference(tmp_path):
    import peft  # the dev extra pins it

    ours, ref = load_pair(CFG)  # the same random weights
    randomize_adapters(add_lora(ours, rank=4, alpha=8))
    folder = save_peft_adapter(ours, tmp_path / "adapter", base_model_name_or_path="tiny-random")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    batch = inputs()
    with torch.no_grad():
        base = ref(**batch).logits  # before peft adds the adapters to ref in place
    wrapped = peft.PeftModel.from_pretrained(ref, folder).eval()
    theirs = peft_state(wrapped)
    ours_state = lora_state_dict(ours)
    assert sorted(theirs) == sorted(ours_state)  # peft made exactly our modules, no more (no vision)
    assert all(torch.equal(theirs[k], ours_state[k]) for k in theirs)  # and loaded every tensor
    with torch.no_grad():
        got = wrapped(**batch).logits
        mine = ours(**batch)
    assert (got - base).abs().max() > 1e-3  # the adapter changes the answer: the check below is not trivial
    compare("ours + LoRA vs peft(reference) logits", mine, got, tol=PEFT_TOL)


def test_peft_saved_adapter_loads_into_ours_and_keys_agree(tmp_path):
    ours, ref = load_pair(CFG)
    mine = add_lora(fresh_model(), rank=4, alpha=8)  # only to ask which modules and keys we would write
    from peft import LoraConfig, get_peft_model
    from qvl_minimal.lora import target_modules

    torch.manual_seed(2)
    wrapped = get_peft_model(ref, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules(mine)))
    randomize_adapters_peft(wrapped, seed=3)
    wrapped.save_pretrained(tmp_path / "peft", save_embedding_layers=False)
    from safetensors.torch import load_file

    written = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(written) == sorted(lora_state_dict(mine))  # peft's own key names are the ones we write
    load_peft_adapter(ours, tmp_path / "peft")
    batch = inputs()
    with torch.no_grad():
        compare("peft adapter in ours vs peft(reference) logits", ours(**batch), wrapped.eval()(**batch).logits,
                tol=PEFT_TOL)


@torch.no_grad()
def randomize_adapters_peft(peft_model, seed):
    gen = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if ".lora_" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_load_refuses_what_it_cannot_read(tmp_path):
    model = randomize_adapters(add_lora(fresh_model(), rank=4, alpha=8))
    folder = save_peft_adapter(model, tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        load_peft_adapter(fresh_model(), folder)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft_adapter(fresh_model(), tmp_path / "missing")
    other = add_lora(fresh_model(), rank=2)
    save_peft_adapter(model, tmp_path / "b")
    with pytest.raises(ValueError, match="differ"):
        load_peft_adapter(other, tmp_path / "b")


def test_an_irregular_choice_round_trips_through_peft_as_a_list_of_names(tmp_path):
    import peft

    ours, ref = load_pair(CFG)
    chosen = ("model.layers.0.self_attn.q_proj", "visual.blocks.1.attn.qkv", "visual.merger.mlp.2")
    randomize_adapters(add_lora(ours, targets=chosen, rank=2, alpha=4, scope=""))
    folder = save_peft_adapter(ours, tmp_path / "mixed")
    listed = json.loads((folder / "adapter_config.json").read_text())["target_modules"]
    # no regex over layer numbers picks exactly these, so the names are listed (4.52+'s tree)
    assert sorted(listed) == ["model.language_model.layers.0.self_attn.q_proj", "model.visual.blocks.1.attn.qkv",
                              "model.visual.merger.mlp.2"]
    batch = inputs()
    wrapped = peft.PeftModel.from_pretrained(ref, folder).eval()
    assert sorted(peft_state(wrapped)) == sorted(lora_state_dict(ours))
    with torch.no_grad():
        compare("irregular LoRA: ours vs peft(reference) logits", ours(**batch), wrapped(**batch).logits, tol=PEFT_TOL)
    back = load_peft_adapter(fresh_model(), folder)  # and into ours again, from the names alone
    assert list(lora_modules(back)) == list(lora_modules(ours))


def test_lora_on_bfloat16_storage_runs_but_refuses_to_merge():
    from qvl_minimal.storage import store_in_bfloat16

    model = randomize_adapters(add_lora(store_in_bfloat16(fresh_model()), rank=4, alpha=8))
    batch = inputs()
    with torch.no_grad():
        stored = model(**batch)
    reference = randomize_adapters(add_lora(fresh_model(), rank=4, alpha=8))
    with torch.no_grad():  # the same model with its matrices rounded to bfloat16, computed in float32
        for name, p in reference.named_parameters():
            if p.ndim >= 2 and ".lora_" not in name and not name.startswith("visual.patch_embed."):
                p.copy_(p.bfloat16().float())
        compare("LoRA on bfloat16 storage vs float32 on rounded weights", stored, reference(**batch), tol=1e-5)
    with pytest.raises(ValueError, match="storage=None"):
        merge_lora(model)
