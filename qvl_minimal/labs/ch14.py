"""The training chapter's exercises: the label mask, a LoRA Linear, one training step, a LoRA size
predicted (chapter 14).

    14.1  mask_labels(input_ids (B, L), attention_mask (B, L), answer_lengths) -> labels (B, L)
    14.2  LoRALinearMine(base: nn.Linear, rank, alpha): .base_layer frozen, .A (r, in), .B (out, r) trainable
    14.3  train_step_mine(model, optimizer, batch, lr, clip) -> loss (float)
    14.4  quiz: trainable numbers of LoRA rank 4 on q_proj and v_proj of TRAIN_CONFIG (an int)

Every answer is checked against the library (training.collate, lora.LoRALinear, training.train_step)
on fresh seeded inputs, never against a stored value.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import Qwen25VLConfig
from ..lora import LoRALinear, add_lora, lora_parameters
from ..model import Qwen25VL
from ..shapes import make_example
from ..tokenizer_files import load_tokenizer
from ..training import TRAIN_CONFIG, collate, init_weights, make_optimizer, train_step
from .core import assert_answer, assert_tensor_matches, exercise


@exercise("14.1", "the label mask of a left-padded batch")
def _(mask_labels) -> str:
    tokenizer = load_tokenizer()
    for start, size in ((0, 1), (10, 5), (40, 8)):
        examples = [make_example("lab", 14, start + i) for i in range(size)]
        batch = collate(examples, tokenizer)  # left padded, labels by the library
        lengths = [len(tokenizer.encode(ex.answer, split_special_tokens=True)) + 1 for ex in examples]
        mine = mask_labels(batch["input_ids"].clone(), batch["attention_mask"].clone(), lengths)
        assert_tensor_matches(mine, batch["labels"], f"labels of a batch of {size}")
    return "answers and <|im_end|> scored; prompt, visual pads and padding -100, on 3 batches"


class _Tiny:
    """Random Linears and inputs for 14.2."""

    @staticmethod
    def cases():
        for n_in, n_out, rank, alpha in ((16, 24, 4, 8), (32, 8, 2, 2), (8, 8, 8, 32)):
            yield nn.Linear(n_in, n_out), rank, alpha, torch.randn(3, 5, n_in)


@exercise("14.2", "a LoRA Linear")
def _(LoRALinearMine) -> str:
    for base, rank, alpha, x in _Tiny.cases():
        mine = LoRALinearMine(copy.deepcopy(base), rank, alpha)
        ref = LoRALinear(copy.deepcopy(base), rank, alpha)
        trainable = {n for n, p in mine.named_parameters() if p.requires_grad}
        assert not any(p.requires_grad for p in mine.base_layer.parameters()), "the base Linear must be frozen"
        assert len(trainable) == 2, f"exactly A and B train; trainable: {sorted(trainable)}"
        assert tuple(mine.A.shape) == (rank, base.in_features) and tuple(mine.B.shape) == (base.out_features, rank), \
            "A is (rank, in_features), B is (out_features, rank)"
        assert_tensor_matches(mine(x).detach(), base(x).detach(), "the output before training (B starts at 0)",
                              atol=1e-6)
        with torch.no_grad():
            for p in (mine.A, mine.B):
                p.copy_(torch.randn(p.shape))
            ref.A.copy_(mine.A), ref.B.copy_(mine.B)
        assert_tensor_matches(mine(x).detach(), ref(x).detach(), f"output with rank {rank}, alpha {alpha}",
                              atol=1e-5, rtol=1e-5)
    return "base frozen, B starts at zero, y = base(x) + (alpha/r) B A x on 3 shapes"


@exercise("14.3", "one training step")
def _(train_step_mine) -> str:
    tokenizer = load_tokenizer()
    config = Qwen25VLConfig.preset("tiny")
    batch = collate([make_example("lab", 14, 100 + i) for i in range(3)], tokenizer)
    model = init_weights(Qwen25VL(config), seed=14)
    mine_model, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    mine_opt, ref_opt = make_optimizer(mine_model, 1e-3), make_optimizer(ref_model, 1e-3)
    for step, (lr, clip) in enumerate(((1e-3, 1.0), (5e-4, 1e-3))):  # the second step clips hard
        loss = train_step_mine(mine_model, mine_opt, batch, lr, clip)
        ref_loss, _ = train_step(ref_model, ref_opt, batch, lr, clip)
        assert isinstance(loss, float), f"return the loss as a Python float (loss.item()), got {type(loss).__name__}"
        assert_answer(loss, ref_loss, f"loss of step {step + 1}", tol=1e-5 * abs(ref_loss))
        for (name, p), q in zip(mine_model.named_parameters(), ref_model.parameters()):
            assert_tensor_matches(p.detach(), q.detach(), f"{name} after step {step + 1}", atol=1e-6, rtol=1e-4)
    return "the loss and every parameter after two steps (the second clipped) equal the library's"


def _lora_numbers() -> int:
    """Trainable numbers of LoRA rank 4 on q_proj and v_proj of every decoder layer of TRAIN_CONFIG."""
    model = add_lora(Qwen25VL(TRAIN_CONFIG), targets=("q_proj", "v_proj"), rank=4, alpha=8)
    return sum(p.numel() for p in lora_parameters(model))


@exercise("14.4", "trainable numbers of a small LoRA", expected=_lora_numbers)
def _(predicted) -> str:
    assert_answer(predicted, _lora_numbers(), "LoRA rank 4 on q_proj and v_proj, every decoder layer",
                  hint="each adapted Linear (out x in) adds A (r x in) and B (out x r); v_proj is narrower than "
                       "q_proj under grouped-query attention (chapter 08)")
    return "A and B of 8 Linears counted right"


