"""packed.py: oneDNN's packed weights change the speed, never the numbers; where they cannot be exact
(float32, a CPU without a bfloat16 packed kernel, bfloat16 storage, $QVL_PACK=0) nothing is packed."""

import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import qvl_minimal as qvl
import qvl_minimal.packed as packed
from qvl_minimal.packed import PackedLinear, pack_linears
from qvl_minimal.standin import standin_checkpoint
from qvl_minimal.storage import store_in_bfloat16
from qvl_minimal.weights import load_pretrained

sys.path.insert(0, os.path.dirname(__file__))
from model_helpers import sample  # noqa: E402


def tiny(dtype=torch.bfloat16, tied=True):
    cfg = qvl.Qwen25VLConfig.preset("tiny").replace(text_config={"tie_word_embeddings": tied})
    torch.manual_seed(0)
    return qvl.Qwen25VL(cfg).to(dtype).eval()  # PyTorch's default random initialisation


def count_packed(model):
    return sum(isinstance(m, PackedLinear) for m in model.modules())


def outputs(model, cfg):
    """Logits of a prompt with an image (every Linear of both towers and the head) and 6 greedy tokens."""
    prompt = sample(cfg, 5, ("image", (1, 8, 8)), 7, seed=3)
    prompt["pixel_values"] = prompt["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**prompt)  # (1, L, vocab)
        tokens = model.generate(prompt["input_ids"], 6, pixel_values=prompt["pixel_values"],
                                image_grid_thw=prompt["image_grid_thw"], eos_token_id=-1)
    return logits, tokens


@pytest.mark.parametrize("tied", [True, False])
def test_packed_model_is_bit_identical_or_not_packed(tied):
    """Packed or not, the logits and tokens are the plain model's, bit for bit. Which one happens
    depends on the CPU (oneDNN packs bfloat16 only with AVX-512 or AVX-NE-CONVERT): the line says."""
    plain = tiny(tied=tied)
    fast = copy.deepcopy(plain)
    said = pack_linears(fast)
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    if said.startswith("weights packed"):
        assert count_packed(fast) == linears + tied and (getattr(fast, "packed_head", None) is not None) == tied, said
        assert not any(isinstance(m, torch.nn.Linear) for m in fast.modules())
    else:
        assert said.startswith("weights not packed: oneDNN says") and count_packed(fast) == 0, said
    (logits, tokens), (fast_logits, fast_tokens) = outputs(plain, plain.config), outputs(fast, fast.config)
    assert torch.equal(fast_logits, logits) and torch.equal(fast_tokens, tokens)  # bit for bit


def test_float32_storage_and_the_switch_keep_f_linear(monkeypatch):
    said = pack_linears(tiny(torch.float32))
    assert said == ("weights not packed: float32 weights; only bfloat16 is packed, since float32's packed kernel "
                    "adds in another order and its results would not equal F.linear's; F.linear everywhere")
    stored = store_in_bfloat16(tiny(torch.float32))
    assert "bfloat16 storage" in pack_linears(stored) and count_packed(stored) == 0
    monkeypatch.setenv(packed.ENV, "0")
    model = tiny()
    assert pack_linears(model) == "weights not packed: $QVL_PACK=0; F.linear everywhere" and count_packed(model) == 0


def test_training_mode_is_refused():
    model = tiny().train()
    assert "training mode" in pack_linears(model) and count_packed(model) == 0


def test_one_shape_that_differs_packs_nothing(monkeypatch):
    """The probe compares every shape before anything is replaced: one mismatch leaves the whole model plain.
    A stand-in for PackedLinear (F.linear on the plain weight) lets this run on any CPU."""
    class StandIn(torch.nn.Module):
        def __init__(self, weight, bias):
            super().__init__()
            self.weight, self.bias = weight, bias

        def forward(self, x):
            return F.linear(x, self.weight, self.bias)

    calls = []

    def second_differs(probe, weight, bias):
        calls.append(weight.shape)
        return len(calls) != 2

    monkeypatch.setattr(packed, "PackedLinear", StandIn)
    monkeypatch.setattr(packed, "packing_available", lambda: (True, "stand-in"))
    monkeypatch.setattr(packed, "equals_f_linear", second_differs)
    model = tiny()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    said = pack_linears(model)
    assert said.startswith("weights not packed: oneDNN's packed result differs from F.linear's for ")
    assert len(calls) == 2 and sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == linears
    assert not any(isinstance(m, StandIn) for m in model.modules()) and getattr(model, "packed_head", None) is None
    monkeypatch.setattr(packed, "equals_f_linear", lambda probe, weight, bias: True)
    assert pack_linears(model).startswith("weights packed for oneDNN")  # every shape passes: all replaced
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules()) and isinstance(model.packed_head, StandIn)


def test_a_packed_weight_cannot_be_used_as_a_plain_one():
    """The packed copy is opaque: F.linear, arithmetic and reading its values raise instead of computing
    with scrambled numbers. float32 here: oneDNN packs it on every x86 CPU (bfloat16 needs AVX-512)."""
    weight = torch.randn(32, 16)
    layer = PackedLinear(weight, None)
    x = torch.randn(3, 16)
    assert torch.allclose(layer(x), F.linear(x, weight), rtol=1e-5, atol=1e-6)  # the same sums, in another order
    for misuse in (lambda: F.linear(x, layer.packed), lambda: layer.packed.sum(), lambda: layer.packed.tolist()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            misuse()


def test_load_pretrained_packs_what_describe_runs(capsys):
    """load_pretrained(pack=True): the line says what was done, and the answer is the plain load's."""
    folder = standin_checkpoint("small")
    plain = load_pretrained(folder, dtype="bfloat16", progress=False)
    fast = load_pretrained(folder, dtype="bfloat16", progress=True, pack=True)
    said = capsys.readouterr().err
    assert "weights packed for oneDNN" in said or "weights not packed: oneDNN says" in said
    (logits, tokens), (fast_logits, fast_tokens) = outputs(plain, plain.config), outputs(fast, fast.config)
    assert torch.equal(fast_logits, logits) and torch.equal(fast_tokens, tokens)


def test_the_memory_estimate_counts_the_packed_head_where_it_will_be_made(monkeypatch):
    """describe refuses a prompt that does not fit before the load: the packed head's copy of the table
    (vocab x D bfloat16) is counted exactly where pack_linears will make it."""
    from qvl_minimal.packed import head_copy_bytes, packing_available

    cfg = qvl.Qwen25VLConfig.preset("3b")
    table = cfg.text_config.vocab_size * cfg.text_config.hidden_size * 2  # 622 MB
    expected = table if packing_available()[0] else 0
    assert head_copy_bytes(cfg, torch.bfloat16) == expected
    assert head_copy_bytes(cfg, torch.float32) == 0 and head_copy_bytes(cfg, torch.bfloat16, storage="bfloat16") == 0
    assert head_copy_bytes(cfg, torch.bfloat16, device="cuda") == 0
    untied = cfg.replace(text_config={"tie_word_embeddings": False})
    assert head_copy_bytes(untied, torch.bfloat16) == 0  # an untied lm_head is packed in place, no copy
    monkeypatch.setenv(packed.ENV, "0")
    assert head_copy_bytes(cfg, torch.bfloat16) == 0
    monkeypatch.setenv(packed.ENV, "no")
    with pytest.raises(ValueError, match=r"\$QVL_PACK='no': set it to 0"):
        head_copy_bytes(cfg, torch.bfloat16)
