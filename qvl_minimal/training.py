"""Training: labels, the next-token loss, one optimiser step, the loop, held-out accuracy.

    Example (image, question, answer) --encode_example--> ids (L,), labels (L,): -100 except the answer
    rows --collate--> left-padded batch: input_ids (B, L), attention_mask (B, L), labels (B, L),
                      pixel_values (B*64, 1176), image_grid_thw (B, 3)
    model.prefill --> hidden states (B, L, D); position t predicts token t+1:
    causal_lm_loss = mean over the N labelled tokens of -log softmax(head(h[t]))[labels[t+1]]
    train(...)     : AdamW, linear warm-up then cosine decay, gradient clipping, held-out accuracy
                     every `eval_every` steps by greedy decoding (evaluate), a tqdm bar, a history;
                     the loss on a Shortlist of task_vocabulary's rows (shortlist.py: the same value)

The loss is the reference's (transformers' ForCausalLMLoss with `labels=`): labels shifted left by
one, -100 ignored, the mean taken over every labelled token of the batch (not per row). Only the
labelled positions go through the head: with a 151,936-row vocabulary the head is most of the cost,
and the other positions' logits would be multiplied by zero anyway.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Qwen25VLConfig
from .model import Qwen25VL
from .preprocess import preprocess_image
from .shapes import COLOURS, KINDS, QUESTION_KINDS, SIZE, Shape, box_answer, held_out, make_example
from .shortlist import IGNORE, Shortlist, outside, scored_states
from .tokenizer import DEFAULT_SYSTEM, encode_chat


# The model chapter 14 trains (how it was chosen: its section 2.4). The real tokenizer and its ids stay,
# so the vocabulary keeps 3B's 151,936 rows, tied to the head as in 3B; training touches only the rows of
# the task's tokens (shortlist.py).
TRAIN_CONFIG = Qwen25VLConfig.preset("3b").replace(
    vision_config={"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4,
                   "out_hidden_size": 128, "fullatt_block_indexes": (1,)},
    text_config={"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "mrope_section": (4, 6, 6),
                 "tie_word_embeddings": True})


# ----------------------------------------------------------------------------- labels and batches
def encode_example(tokenizer, question: str, answer: str, image_grid_thw,
                   system: str = DEFAULT_SYSTEM) -> tuple[torch.Tensor, torch.Tensor]:
    """The chat prompt with one image, then the answer and <|im_end|> -> (ids (L,), labels (L,)).

    labels = -100 on the prompt (system, user turn, visual pads, "<|im_start|>assistant\\n"), and the
    token ids themselves on the answer and its <|im_end|>: the only tokens the model is scored on.
    """
    prompt = encode_chat(tokenizer, question, image_grid_thw=image_grid_thw, system=system)[0]  # (P,)
    answer_ids = torch.tensor(tokenizer.encode(answer, split_special_tokens=True) + [tokenizer.im_end_id])  # (A,)
    ids = torch.cat([prompt, answer_ids])  # (P + A,)
    labels = torch.cat([torch.full_like(prompt, IGNORE), answer_ids])  # (P + A,)
    return ids, labels


def left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """1-D tensors -> (B, L) with `value` in front of the shorter ones."""
    length = max(len(r) for r in rows)
    return torch.stack([F.pad(r, (length - len(r), 0), value=value) for r in rows])  # (B, L)


def collate(examples, tokenizer, with_answers: bool = True) -> dict:
    """Examples -> one left-padded batch for the model (with labels, or prompts only for generation)."""
    ids, labels, pixels, grids = [], [], [], []
    for ex in examples:
        pixel_values, grid = preprocess_image(ex.image)  # (64, 1176), (1, 3) for 112 x 112
        if with_answers:
            row_ids, row_labels = encode_example(tokenizer, ex.question, ex.answer, grid)
        else:
            row_ids = encode_chat(tokenizer, ex.question, image_grid_thw=grid)[0]
            row_labels = torch.full_like(row_ids, IGNORE)
        ids.append(row_ids), labels.append(row_labels), pixels.append(pixel_values), grids.append(grid)
    batch = {"input_ids": left_pad(ids, tokenizer.pad_id),  # (B, L)
             "attention_mask": left_pad([torch.ones_like(r) for r in ids], 0),  # (B, L)
             "pixel_values": torch.cat(pixels), "image_grid_thw": torch.cat(grids)}  # (B*64, 1176), (B, 3)
    if with_answers:
        batch["labels"] = left_pad(labels, IGNORE)  # (B, L): padding is never scored
    return batch


# ----------------------------------------------------------------------------- the loss
def causal_lm_loss(model: Qwen25VL, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of the batch (the reference's `loss`)."""
    h, targets = scored_states(model, batch)  # (N, D), (N,): only the scored positions
    logits = model.head(h)  # (N, vocab)
    return F.cross_entropy(logits.float(), targets)  # mean over the N tokens


# ----------------------------------------------------------------------------- the optimiser
@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int = 0, embed_std: float = 0.02,
                 vocabulary=None) -> torch.nn.Module:
    """Seeded initialisation for a narrow model: every matrix ~ N(0, 1 / fan_in) (fan_in: its input width;
    a patch-embedding kernel counts all 3 x 2 x 14 x 14 inputs), the embedding table ~ N(0, embed_std),
    biases 0, norm weights 1.

    The reference draws every matrix from N(0, 0.02): about 1 / sqrt(2048), right for 3B's width. At width
    128 it would be 4 times too small, every layer's output 4 times too weak, attention almost uniform, and
    the model would sit for hundreds of steps predicting the answers' average (chapter 14,
    section 2.4).
    PyTorch's default N(0, 1) embedding would make the tied head's logits huge: 0.02 keeps them near 0.
    With `vocabulary` (token ids), every other row of the table is zero: the shortlist's rule (shortlist.py).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if name.endswith(("norm.weight", "layernorm.weight", "ln_q.weight")) else 0.0)
        elif name.endswith("embed_tokens.weight"):
            p.copy_(embed_std * torch.randn(p.shape, generator=gen))
        else:
            fan_in = p[0].numel()  # (out, in) -> in; (out, c, t, h, w) -> c * t * h * w
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    if vocabulary is not None:
        table = model.language.embed_tokens.weight  # (V, D)
        table[outside(table.shape[0], vocabulary)] = 0.0
    return model


def task_vocabulary(tokenizer, colours: dict = COLOURS) -> list[int]:
    """Every token id a shapes prompt or answer can hold, and <|endoftext|> (the padding): the shortlist.

    Prompts: the chat frame with one 112 x 112 image and each question; answers: each colour word, each
    count, and a box answer for every coordinate 0..112 and every label; then <|im_end|>.
    """
    grid = torch.tensor([[1, SIZE // 14, SIZE // 14]])  # (1, 3): the task's one image
    questions = ["How many shapes are there?"] + [f"What colour is the {kind}?" for kind in KINDS] + [
        f"Where is the {colour} {kind}?" for colour in colours for kind in KINDS]
    answers = list(colours) + ["1", "2", "3"] + [
        box_answer(Shape(kind, colour, (n, n, n, n))) for colour in colours for kind in KINDS for n in range(SIZE + 1)]
    ids = {tokenizer.pad_id, tokenizer.im_end_id}
    for question in questions:
        ids.update(encode_chat(tokenizer, question, image_grid_thw=grid)[0].tolist())
    for text in answers:
        ids.update(tokenizer.encode(text, split_special_tokens=True))
    return sorted(ids)


def lr_at(step: int, steps: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to floor * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)  # 0 -> 1
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, lr: float, weight_decay: float = 0.01, embedding_rows=()) -> torch.optim.AdamW:
    """AdamW over the parameters that require a gradient (and `embedding_rows`, a shortlist's); no weight
    decay on biases, norm weights (1-D) and embedding rows."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim == 1 or "embed_tokens" in name else decay).append(p)
    no_decay += [p for p in embedding_rows if p.requires_grad]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train_step(model, optimizer, batch: dict, lr: float, clip: float = 1.0,
               loss_fn=causal_lm_loss) -> tuple[float, float]:
    """One step: loss, backward, clip the gradients' global norm to `clip`, AdamW. -> (loss, norm before clipping)

    loss_fn(model, batch): causal_lm_loss (all V columns), or a Shortlist's loss (K + 1 columns, the same value).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(trained, clip)
    optimizer.step()
    return loss.item(), norm.item()


# ----------------------------------------------------------------------------- held-out accuracy
def parse_box(answer: str):
    """'{"bbox_2d": [x1, y1, x2, y2], ...}' -> (x1, y1, x2, y2) floats, or None if it is not that."""
    try:
        box = json.loads(answer)["bbox_2d"]
        if len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            return tuple(float(v) for v in box)
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    return None


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (x2, y2 exclusive)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def is_correct(kind: str, predicted: str, answer: str) -> bool:
    """colour and count: exact text; box: the predicted box parses and has IoU >= 0.5 with the true one."""
    if kind != "box":
        return predicted.strip() == answer
    box = parse_box(predicted)
    return box is not None and iou(box, parse_box(answer)) >= 0.5


@torch.no_grad()
def answer(model, tokenizer, examples, max_new_tokens: int = 40, batch_size: int = 32) -> list[str]:
    """Greedy answers (text without <|im_end|>) to the examples' questions."""
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], tokenizer, with_answers=False)
        new = model.generate(**batch, max_new_tokens=max_new_tokens)  # (b, n)
        out += [tokenizer.decode(row, skip_special_tokens=True) for row in new]
    return out


def evaluate(model, tokenizer, examples) -> dict[str, float]:
    """Accuracy per question kind (a fraction) on these examples, by greedy decoding."""
    predicted = answer(model, tokenizer, examples)
    scores = {kind: [] for kind in QUESTION_KINDS if any(ex.kind == kind for ex in examples)}
    for ex, text in zip(examples, predicted):
        scores[ex.kind].append(is_correct(ex.kind, text, ex.answer))
    return {kind: sum(s) / len(s) for kind, s in scores.items()}


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainSettings:
    steps: int = 5000  # optimiser steps
    batch_size: int = 16  # examples per step, question kinds mixed
    lr: float = 1e-3  # peak learning rate
    warmup: int = 100  # steps of linear warm-up
    clip: float = 1.0  # gradient clipping: max global norm
    weight_decay: float = 0.01
    eval_every: int = 500  # steps between held-out evaluations
    eval_per_kind: int = 50  # held-out examples per question kind
    seed: int = 0  # weights and training examples


def held_out_set(per_kind: int) -> list:
    """`per_kind` held-out examples of each question kind (from the "heldout" split)."""
    return [ex for kind in QUESTION_KINDS for ex in held_out(per_kind, kinds=(kind,))]


def train(model, tokenizer, settings: TrainSettings, progress: bool = True, make=make_example,
          evaluation=None, vocabulary=None) -> list[dict]:
    """Train in place; returns the history: one dict per evaluation (step, loss, accuracies, seconds).

    Step s trains on examples s * batch_size ... of the "train" split with settings.seed (`make`
    draws one example: another task is another `make`). `evaluation` is the held-out list (default:
    held_out_set(settings.eval_per_kind)). The loss runs on a shortlist (shortlist.py) of `vocabulary`
    (default: task_vocabulary(tokenizer)), whose rows are trained unless the table is frozen (LoRA).
    """
    torch.manual_seed(settings.seed)
    evaluation = held_out_set(settings.eval_per_kind) if evaluation is None else evaluation
    table = model.language.embed_tokens.weight
    train_rows = table.requires_grad
    shortlist = Shortlist(model, task_vocabulary(tokenizer) if vocabulary is None else vocabulary, train_rows)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay, embedding_rows=[shortlist.rows])
    history, losses, start = [], [], time.perf_counter()
    bar = tqdm(range(settings.steps), desc="training", unit="step", disable=not progress)
    try:
        for step in bar:
            model.train()
            examples = [make("train", settings.seed, step * settings.batch_size + j)
                        for j in range(settings.batch_size)]
            lr = lr_at(step, settings.steps, settings.lr, settings.warmup)
            loss, _ = train_step(model, optimizer, collate(examples, tokenizer), lr, settings.clip, shortlist.loss)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")
            if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
                shortlist.write_back(model)  # generation reads the model's own table
                model.eval()
                accuracy = evaluate(model, tokenizer, evaluation)
                history.append({"step": step + 1, "loss": sum(losses) / len(losses), **accuracy,
                                "seconds": time.perf_counter() - start})
                losses = []
                bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v:.2f}" for k, v in accuracy.items()})
    finally:
        shortlist.write_back(model)
        table.requires_grad_(train_rows)
        model.eval()
    return history
