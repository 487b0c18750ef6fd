"""Training on a shortlist (候选词表): the rows of the tokens a task uses, the loss still over all 151,936.

The tied embedding table of 3B's vocabulary has V = 151,936 rows: at width 128 that is 19.4 M of the
training model's 21.0 M numbers, and scoring 250 answer tokens against every row costs three
(250 x 151,936 x 128) matrix products per step (a step fell from 0.6 s to 0.08 s without them: appendix
A.9). The shapes task reads and writes only K = 57 of those tokens (the chat frame, the questions, colour
words, digits, the JSON of a box). Keep every other row at exactly zero. Then, for any hidden state h,

    logit_j = h . e_j = 0                       for each of the V - K rows outside the shortlist
    log Z   = log( sum_{k in shortlist} exp(logit_k) + (V - K) * exp(0) )

so the full-vocabulary cross-entropy needs only the K shortlisted logits plus one constant column,
log(V - K), that stands for the V - K zeros together. It is the same number the reference computes
over all V columns (tests/test_shortlist.py: rel < 1e-6), for K / V of the cost.

    scored_states(model, batch)          hidden states at the scored positions and their targets (both losses)
    outside(vocab_size, token_ids)       (V,) True on the rows that must stay zero
    Shortlist(model, token_ids)          checks the other rows are zero; rows (K, D): the trainable copy
    shortlist.loss(model, batch)         the reference's loss, from K + 1 columns
    shortlist.write_back(model)          rows -> the model's table (before generating or saving)

What is trained: the K rows (input embedding and output head at once, as they are tied) and everything
else; the other V - K rows stay zero, as a frozen base stays unchanged under LoRA. Their gradient is not
zero (the softmax pushes every wrong logit down), so this is a choice of what to train, not a trick that
changes nothing: a model trained this way has zeros outside the shortlist, and a word it never saw
(an out-of-shortlist input token) reaches it as a zero vector.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the label of a position that is not scored (cross_entropy's ignore_index)
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
                "video_grid_thw", "second_per_grid_ts")


def scored_states(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """prefill, then keep the positions whose next token is labelled -> (h (N, D), targets (N,))."""
    h, _ = model.prefill(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})  # (B, L, D)
    targets = batch["labels"][:, 1:]  # (B, L-1): position t is scored on token t+1
    scored = targets != IGNORE  # (B, L-1)
    if not scored.any():
        raise ValueError("no labelled token in the batch (every label is -100); label the answers")
    return h[:, :-1][scored], targets[scored]  # (N, D), (N,)


def outside(vocab_size: int, token_ids) -> torch.Tensor:
    """(V,) bool: True on every row that is not shortlisted."""
    mask = torch.ones(vocab_size, dtype=torch.bool)
    mask[torch.as_tensor(list(token_ids), dtype=torch.long)] = False
    return mask


class ShortlistEmbedding(nn.Module):
    """Stands in for embed_tokens during a training forward: ids -> rows, zeros for other tokens."""

    def __init__(self, shortlist: "Shortlist"):
        super().__init__()
        self.shortlist = [shortlist]  # a list, so that the rows are not registered twice

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = self.shortlist[0]
        table = torch.cat([s.rows, s.rows.new_zeros(1, s.rows.shape[1])])  # (K + 1, D): row K is the zero row
        return table[s.position[input_ids]]  # (B, L, D)


class Shortlist(nn.Module):
    """The shortlisted rows of a tied embedding table, as a trainable (K, D) parameter."""

    def __init__(self, model: nn.Module, token_ids, trainable: bool = True):
        super().__init__()
        if not model.config.text_config.tie_word_embeddings:
            raise ValueError("a shortlist needs a tied head (tie_word_embeddings): the rows it trains are the "
                             "head's too; train an untied model with training.causal_lm_loss")
        table = model.language.embed_tokens.weight  # (V, D)
        vocab = table.shape[0]
        ids = torch.tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.long)  # (K,)
        if len(ids) == 0 or ids[0] < 0 or ids[-1] >= vocab:
            raise ValueError(f"shortlist ids must be a non-empty list in [0, {vocab}); got {len(ids)} ids")
        if table.detach()[outside(vocab, ids)].any():
            raise ValueError("the embedding rows outside the shortlist must be exactly zero (their logits are then "
                             "0, which is what makes the shortlisted loss exact); start from "
                             "training.init_weights(model, vocabulary=ids), not from a pretrained model")
        self.ids = ids
        self.vocab_size = vocab
        position = torch.full((vocab,), len(ids), dtype=torch.long)  # K: "not shortlisted" -> the zero row
        position[ids] = torch.arange(len(ids))
        self.register_buffer("position", position, persistent=False)  # (V,) token id -> row of `rows`, or K
        self.rows = nn.Parameter(table.detach()[ids].clone(), requires_grad=trainable)  # (K, D)
        table.requires_grad_(False)  # the full table is updated only by write_back

    @contextmanager
    def _embedding_in(self, model):
        language = model.language
        original = language.embed_tokens
        language.embed_tokens = ShortlistEmbedding(self)
        try:
            yield
        finally:
            language.embed_tokens = original

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Mean next-token cross-entropy over the labelled tokens, over the whole vocabulary (K + 1 columns)."""
        with self._embedding_in(model):
            h, targets = scored_states(model, batch)  # (N, D), (N,)
        target_rows = self.position[targets]  # (N,)
        if (target_rows == len(self.ids)).any():
            missing = sorted(set(targets[target_rows == len(self.ids)].tolist()))[:5]
            raise ValueError(f"answer tokens {missing} are not in the shortlist; build it from every answer "
                             "the task can give (training.task_vocabulary)")
        logits = F.linear(h, self.rows)  # (N, K)
        others = logits.new_full((len(logits), 1), math.log(self.vocab_size - len(self.ids)))  # (N, 1)
        return F.cross_entropy(torch.cat([logits, others], dim=1).float(), target_rows)  # mean over N

    @torch.no_grad()
    def write_back(self, model: nn.Module) -> None:
        """Copy the trained rows into the model's table: the model alone then computes what was trained."""
        model.language.embed_tokens.weight[self.ids] = self.rows.to(model.language.embed_tokens.weight.dtype)
