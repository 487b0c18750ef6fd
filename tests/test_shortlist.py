"""The shortlist (shortlist.py): K + 1 columns give the reference's full-vocabulary loss and gradients."""

import os
import sys

import pytest
import torch

import qvl_minimal as qvl
from qvl_minimal.reference import build_reference, compare, reference_state_dict
from qvl_minimal.shortlist import IGNORE, Shortlist
from qvl_minimal.training import causal_lm_loss

sys.path.insert(0, os.path.dirname(__file__))
from model_helpers import left_padded, sample  # noqa: E402


def _batch(cfg):
    """Image + video + text-only rows, left padded, labels on each row's last tokens."""
    batch = left_padded(sample(cfg, 5, ("image", (1, 4, 4)), 9, seed=1),
                        sample(cfg, 3, ("video", (2, 4, 4), 1.0), 6, seed=2),
                        sample(cfg, 12, seed=3))
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for row, n_scored in enumerate((4, 2, 7)):
        labels[row, -n_scored:] = batch["input_ids"][row, -n_scored:]
    return {**batch, "labels": labels}


def _zero_outside(state: dict, ids: torch.Tensor) -> dict:
    table = state["model.embed_tokens.weight"]
    keep = torch.zeros(len(table), dtype=torch.bool)
    keep[ids] = True
    table[~keep] = 0.0
    return state


@pytest.fixture()
def pair(tiny_config):
    """Reference and ours with the same weights, every embedding row outside the batch's tokens zero."""
    cfg = tiny_config.replace(text_config={"tie_word_embeddings": True})
    batch = _batch(cfg)
    ids = torch.unique(batch["input_ids"])  # (K,)
    extra = torch.tensor([7, 1000, 151645])  # rows that are shortlisted but never seen: trained as wrong answers
    ids = torch.unique(torch.cat([ids, extra]))
    ref = build_reference(cfg, seed=3).train()
    state = _zero_outside({k: v.clone() for k, v in reference_state_dict(ref, cfg).items()}, ids)
    ours = qvl.Qwen25VL(cfg)
    ours.load_state_dict(state, strict=True)
    ref.load_state_dict({**ref.state_dict(), **_ref_embedding(ref, state)})
    return cfg, ref, ours.train(), batch, ids


def _ref_embedding(ref, state):
    """The reference's key of the embedding table (4.52+: model.language_model.embed_tokens.weight)."""
    key = next(k for k in ref.state_dict() if k.endswith("embed_tokens.weight"))
    return {key: state["model.embed_tokens.weight"].clone()}


def test_shortlisted_loss_and_gradients_equal_the_reference(pair):
    """float32: loss rel < 1e-6; every gradient rel < 1e-5, the rows' against the reference's table gradient at ids."""
    cfg, ref, ours, batch, ids = pair
    shortlist = Shortlist(ours, ids.tolist())
    loss = shortlist.loss(ours, batch)
    ref_loss = ref(**{k: v for k, v in batch.items()}).loss
    compare("shortlisted loss vs reference", loss, ref_loss, 1e-6)
    compare("shortlisted loss vs ours over all columns", loss, causal_lm_loss(ours, batch), 1e-6)
    loss.backward()
    ref_loss.backward()
    ref_grads = reference_state_dict(type("G", (), {"state_dict": lambda self: {
        n: p.grad for n, p in ref.named_parameters()}})(), cfg)
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if n != "model.embed_tokens.weight"}
    assert ours.model.embed_tokens.weight.grad is None  # the table itself is frozen; its rows are `rows`
    assert len(ours_grads) == len(ref_grads) - 1
    for name, grad in ours_grads.items():
        compare(f"grad {name}", grad, ref_grads[name], 1e-5, show=False)
    compare("grad of the shortlisted rows", shortlist.rows.grad, ref_grads["model.embed_tokens.weight"][ids], 1e-5)
    outside = torch.ones(cfg.text_config.vocab_size, dtype=torch.bool)
    outside[ids] = False
    assert ref_grads["model.embed_tokens.weight"][outside].abs().max() > 0  # not trained, though not zero


def test_write_back_makes_the_model_compute_what_was_trained(pair):
    cfg, ref, ours, batch, ids = pair
    shortlist = Shortlist(ours, ids.tolist())
    with torch.no_grad():
        shortlist.rows.add_(0.1 * torch.randn(shortlist.rows.shape, generator=torch.Generator().manual_seed(0)))
    trained_loss = shortlist.loss(ours, batch)
    shortlist.write_back(ours)
    # 1e-5: the sum of 151,936 float32 exponentials rounds differently from K + 1 (measured 1.9e-6)
    compare("after write_back, over all columns", causal_lm_loss(ours, batch), trained_loss, 1e-5)
    assert torch.equal(ours.model.embed_tokens.weight[ids], shortlist.rows.detach())


def test_refusals(pair, tiny_config):
    cfg, ref, ours, batch, ids = pair
    with pytest.raises(ValueError, match="outside the shortlist must be exactly zero"):
        Shortlist(ours, ids[:-1].tolist())  # a row with numbers in it left out
    shortlist = Shortlist(ours, ids.tolist())
    bad = dict(batch, labels=batch["labels"].clone())
    bad["labels"][0, -1] = 42  # not shortlisted
    with pytest.raises(ValueError, match=r"answer tokens \[42\] are not in the shortlist"):
        shortlist.loss(ours, bad)
    untied = qvl.Qwen25VL(tiny_config.replace(text_config={"tie_word_embeddings": False}))
    with pytest.raises(ValueError, match="needs a tied head"):
        Shortlist(untied, ids.tolist())
    with pytest.raises(ValueError, match="non-empty list"):
        Shortlist(ours, [])
