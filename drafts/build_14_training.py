import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []


def md(text, tags=None):
    c = new_markdown_cell(text.strip("\n"))
    if tags:
        c.metadata["tags"] = tags
    cells.append(c)


def code(text, tags=None):
    c = new_code_cell(text.strip("\n"))
    if tags:
        c.metadata["tags"] = tags
    cells.append(c)


md(r"""
# Chapter 14: Teach it to see

Every answer so far came from random weights or from a checkpoint someone else trained. In this chapter
you train a small Qwen2.5-VL yourself, from scratch, on a 2-core laptop, with the code the book built: the
same vision tower, the same splice, the same M-RoPE decoder, the real Qwen tokenizer and chat format. It
learns to say which colour a shape is, how many shapes a picture holds, and where a shape is, as a box in
Qwen2.5-VL's grounding format. Then you adapt it with LoRA (低秩适配) to a colour it has never seen and
measure what it forgets, and you compute what fine-tuning the real 3B would cost in memory.
""")

md(r"""
## 1. Goal

By the end of this chapter you will be able to

- write the **labels** (标签) of a chat example so that the loss scores only the assistant's answer;
- show that our loss and the gradient (梯度) of **every** parameter equal the reference's (transformers'
  `labels=` path), float32, on an image + video + left-padded batch;
- train with AdamW, a warm-up and a cosine decay, gradient clipping, and measure held-out accuracy by
  greedy decoding;
- write a trained model as a checkpoint folder that `load_pretrained` and `describe` read like the real one;
- add LoRA adapters, train only them, merge them, and measure forgetting (遗忘);
- say what full fine-tuning and LoRA of the real 3B need in memory, and what a 16 GB laptop can do.
""")

code(r"""
%matplotlib inline
import functools
import json
import math
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import qvl_minimal as qvl
from qvl_minimal.figures.training import learning_curve, recorded_learning_curve, shape_examples
from qvl_minimal.finetune_costs import GB, finetune_memory, laptop_table, measure_saved_bytes
from qvl_minimal.labs import check
from qvl_minimal.lora import add_lora, lora_parameters, merge_lora, unmerge_lora
from qvl_minimal.params import count_parameters
from qvl_minimal.reference import build_reference, compare, reference_state_dict
from qvl_minimal.shapes import COLOURS, KINDS, held_out, make_example
from qvl_minimal.shortlist import Shortlist
from qvl_minimal.train_cli import write_checkpoint
from qvl_minimal.training import (IGNORE, TRAIN_CONFIG, TrainSettings, causal_lm_loss, collate,
                                  encode_example, evaluate, init_weights, lr_at, task_vocabulary, train)

torch.manual_seed(0)
start = time.perf_counter()
tok = qvl.load_tokenizer()
print(tok)
""")

md(r"""
## 2. Build

### 2.1 The task: shapes, three questions

The data is drawn by a seeded generator, `qvl_minimal/shapes.py`, whose rules are simple enough to redraw
without our code: a white RGB image of 112 x 112 pixels with 1 to 3 shapes, each kind (square, circle,
triangle with its apex up) at most once; colours red (220, 30, 30), green (30, 160, 60) or blue
(40, 70, 220), which may repeat; each shape fills a square box of side 20 to 36 px, boxes at least 3 px
apart and inside the image. Each example asks one of three questions:

| question | answer |
|---|---|
| What colour is the circle? | `red` |
| How many shapes are there? | `2` |
| Where is the red circle? | `{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}` |

The box is Qwen2.5-VL's grounding (定位) convention: absolute pixel coordinates of the image **as the model
sees it** after `smart_resize` (chapter 01); 112 is a multiple of 28, so the image is not resized, and the
box is in the picture's own pixels (x2 and y2 exclusive). Example `i` of a run with seed `S` comes from its
own generator, `random.Random(f"train:{S}:{i}")`; the held-out (留出) set uses the split name `"heldout"`,
so no training run ever draws it.
""")

code(r"""
ex = make_example("train", 0, 0)
print("question:", ex.question, "| answer:", ex.answer, "| kind:", ex.kind)
for shape in ex.shapes:
    print(f"  {shape.colour:5s} {shape.kind:8s} box {shape.box}")
pixels, grid = qvl.preprocess_image(ex.image)                              # (64, 1176), (1, 3)
print("pixel_values", tuple(pixels.shape), "grid_thw", grid.tolist(), "->", int(grid.prod()) // 4, "visual tokens")
""")

code(r"""
fig = shape_examples()
display(fig)
plt.close(fig)
""")

md(r"""
**Figure 14.1** — Six held-out examples, two of each question kind, with the answer the model must write
under each picture. Look at the boxes: the numbers are the shape's pixel corners on the axes (0 to 111),
and a triangle's box runs from its apex down to its base. Colour and count need the whole picture; the box
needs position to a few pixels, finer than one 14-pixel patch.
""")

md(r"""
### 2.2 The label mask: which tokens are scored

A training example is the whole chat (chapter 06): the system turn, the user turn with the image's 16
`<|image_pad|>` tokens and the question, `<|im_start|>assistant\n`, then the answer and the `<|im_end|>`
that ends the turn. The model must **learn to write the answer and to stop**; it must not be trained to
predict the system prompt or the picture's placeholders, which are given. So every position gets a label:
the token itself on the answer and its `<|im_end|>`, and **-100** everywhere else (prompt, visual pads,
and the padding of a batch). -100 is the `ignore_index` of PyTorch's `cross_entropy`: those positions add
nothing to the loss or to the gradient. `encode_example` builds both rows:
""")

code(r"""
box_ex = next(e for e in held_out(30) if e.kind == "box")
_, grid = qvl.preprocess_image(box_ex.image)
ids, labels = encode_example(tok, box_ex.question, box_ex.answer, grid)
scored = labels != IGNORE
print(f"{len(ids)} tokens, {int(scored.sum())} scored, {int((ids == tok.image_pad_id).sum())} visual pads (all -100)")
print("last 12 tokens and their labels:")
for i in range(len(ids) - 12, len(ids)):
    label = "-100" if labels[i] == IGNORE else repr(tok.decode([int(labels[i])]))
    print(f"  {i:3d} {tok.decode([int(ids[i])])!r:18s} label {label}")
""")

md(r"""
In a batch the rows are **left padded** (chapter 09) with `<|endoftext|>`, attention mask 0 and label -100,
so that every row ends with its answer, the same layout generation uses. `collate` does it and preprocesses
the images: the batch's `pixel_values` are the images' patch rows one after the other, in row order.
""")

code(r"""
batch = collate([make_example("train", 0, i) for i in range(4)], tok)
for key, value in batch.items():
    print(f"{key:15s} {tuple(value.shape)}")
pad = batch["attention_mask"] == 0
print("padding positions:", int(pad.sum()), "| their labels all -100:", bool((batch["labels"][pad] == IGNORE).all()))
""")

md(r"""
### 2.3 The loss

Position `t` of a causal language model predicts token `t + 1`. The reference (transformers'
`ForCausalLMLoss`, which `Qwen2_5_VLForConditionalGeneration` calls when you pass `labels=`) shifts the
labels left by one, upcasts the logits to float32, and takes `cross_entropy` with `ignore_index=-100` and
the **mean over every scored token of the batch**, not a mean per row: a row with a 27-token box answer
weighs 13 times a row with a 2-token colour answer.

`causal_lm_loss` computes the same number more cheaply. The head is the most expensive Linear of this model
(151,936 rows, section 2.4), and the logits of unscored positions would be multiplied by zero anyway, so it
runs the head only on the positions whose next token is scored:

```python
h, _ = model.prefill(...)                              # (B, L, D)
targets = labels[:, 1:]                                # (B, L-1): position t is scored on token t+1
scored = targets != -100
logits = model.head(h[:, :-1][scored])                 # (N, vocab)
loss = F.cross_entropy(logits.float(), targets[scored])  # mean over the N scored tokens
```

**Predict, then run.** Before any training the model's logits are all near zero (the embedding table,
which is also the head, is drawn from N(0, 0.02); section 2.4). What loss do you expect on the first batch?
Write your number down, then run the cell.
""")

code(r"""
fresh = init_weights(qvl.Qwen25VL(TRAIN_CONFIG), seed=0)
with torch.no_grad():
    first = causal_lm_loss(fresh, batch).item()
V = TRAIN_CONFIG.text_config.vocab_size
print("the fresh model's loss equals ln(vocab) to 0.1:", abs(first - math.log(V)) < 0.1)
""")

md(r"""
The answer: a model that gives all 151,936 tokens the same probability scores `ln 151936` per token;
logits of standard deviation about 0.2 hardly change that. A loss far above it at step 0 means a bad
initialisation (PyTorch's default N(0, 1) embedding, tied to the head, would start near 20); far below it
means the labels leak the answer.
""")

md(r"""
### 2.4 A model a laptop can train

The model keeps everything that makes it Qwen2.5-VL and shrinks the widths. How the sizes were chosen:

- **The vocabulary stays.** The tokenizer must stay the real one, so that `describe` and the chat format
  work unchanged, and its ids are fixed: `<|image_pad|>` is row 151655. So the table keeps 3B's 151,936
  rows. Like 3B, the head is **tied** to the embedding table (one table, not two).
- **Width 128.** The narrowest at which 4 heads of 32 channels still split M-RoPE's 16 frequency pairs into
  time, height and width (4, 6, 6). Doubling every width made a step three times slower on the machine of
  appendix A.9, for a model this task does not need.
- **The picture is small.** 112 x 112 px is 8 x 8 patches, one attention window, 16 visual tokens; two vision
  blocks of width 128 (the second with full attention, as the real tower's every eighth) are enough to see
  three flat colours.
- **Depth for the reasoning.** Four decoder layers: the colour question must find the named shape, the box
  question must turn its position into digits.
- **Initialisation for the width** (`training.init_weights`). The reference draws every matrix from
  N(0, 0.02), which is about 1/sqrt(2048): right for 3B's width, where it keeps each layer's output at the
  scale of its input. At width 128 the same 0.02 makes every layer's output four times too weak and the
  attention almost uniform, and the model sits for hundreds of steps predicting the average answer without
  looking at the picture. So each matrix here is drawn from N(0, 1/fan_in), with fan_in its input width;
  only the embedding table keeps 0.02, so that the tied head starts near zero.
""")

code(r"""
vc, tc = TRAIN_CONFIG.vision_config, TRAIN_CONFIG.text_config
model = init_weights(qvl.Qwen25VL(TRAIN_CONFIG), seed=0)
parts = {"vision tower": sum(p.numel() for p in model.visual.parameters()),
         "embedding = head (tied)": model.model.embed_tokens.weight.numel(),
         "decoder layers + norm": sum(p.numel() for n, p in model.model.named_parameters() if "embed" not in n)}
total = sum(p.numel() for p in model.parameters())
for name, n in parts.items():
    print(f"{name:24s} {n:>11,d}  {n / total:6.1%}")
print(f"{'total':24s} {total:>11,d}")
assert total == sum(parts.values()) == count_parameters(TRAIN_CONFIG)["total"]
head = 2 * tc.hidden_size * tc.vocab_size
decoder = 2 * parts["decoder layers + norm"]
print(f"forward multiply-adds x2 per scored token: head {head / 1e6:.1f} M, decoder {decoder / 1e6:.1f} M")
""")

md(r"""
Nine parameters in ten are the embedding table, and per scored token the head costs more than twenty times
the whole decoder. A batch of 16 examples scores about 250 tokens (a box answer alone is 32), so every step
multiplies 250 x 128 by 128 x 151,936 three times (the logits, then the two gradients), takes a softmax
over 38 million numbers, and updates 19.4 million embedding numbers with AdamW. Most of that work is for
tokens the task never uses.

### 2.5 The shortlist: the task's 59 rows, the loss over all 151,936

The shapes task reads and writes only a few dozen distinct tokens: the chat frame, the questions, colour
words, digits and the JSON of a box. `training.task_vocabulary` lists them by encoding every question and
every possible answer (every coordinate 0 to 112). Call that list the **shortlist** (候选词表), K tokens
long, and make every other row of the table **exactly zero** (`init_weights(..., vocabulary=...)`). A zero
row gives the logit `h . 0 = 0` for every hidden state `h`, so the softmax's normaliser is

    Z = sum over the K shortlisted tokens of exp(logit) + (V - K) * exp(0)

and the full-vocabulary cross-entropy needs only the K logits plus **one constant column**, `ln(V - K)`, that
stands for the V - K zeros together. `qvl_minimal/shortlist.py` builds it: `Shortlist(model, ids)` holds the
K rows as a trainable `(K, D)` parameter, swaps itself in for `embed_tokens` during the training forward,
and computes the loss from K + 1 columns. Only those K rows are trained; the others stay zero, the way a
frozen base stays unchanged under LoRA (section 2.9). That is a choice of what to train, not a free lunch:
the other rows' gradient is not zero (the softmax pushes every wrong logit down), and a word outside the
shortlist reaches the trained model as a zero vector. Section 2.9 needs the word *yellow* later, so the
chapter's shortlist includes it from the start (59 tokens; the `train` command's has 57).

**Predict, then run.** The shortlisted loss and the loss over all 151,936 columns are computed below on the
same batch. How far apart will they be? And how much faster is one forward + backward with K + 1 columns?
""")

code(r"""
FOUR = {**COLOURS, "yellow": (230, 190, 30)}                 # the colour section 2.9 teaches with LoRA
vocabulary = task_vocabulary(tok, FOUR)
print(f"shortlist: {len(vocabulary)} of {TRAIN_CONFIG.text_config.vocab_size:,d} tokens:",
      " ".join(tok.decode([i]).replace("\n", "\\n") for i in vocabulary[:24]), "...")
model = init_weights(qvl.Qwen25VL(TRAIN_CONFIG), seed=0, vocabulary=vocabulary)
shortlist = Shortlist(model, vocabulary)
batch16 = collate([make_example("train", 0, i) for i in range(16)], tok)
seconds = {}
for name, loss_of in (("all 151,936 columns", causal_lm_loss), ("shortlist, K + 1 columns", shortlist.loss)):
    model.model.embed_tokens.weight.requires_grad_(name.startswith("all"))
    begin = time.perf_counter()
    loss = loss_of(model, batch16)
    loss.backward()
    seconds[name] = time.perf_counter() - begin
    print(f"{name:26s} loss {loss.item():.4f}  forward+backward time={seconds[name]:.2f} s")
model.model.embed_tokens.weight.requires_grad_(False)
compare("shortlisted vs full loss", shortlist.loss(model, batch16), causal_lm_loss(model, batch16), 1e-5)
print(f"forward+backward: speedup={seconds['all 151,936 columns'] / seconds['shortlist, K + 1 columns']:.1f}x")
""")

md(r"""
The two losses agree to float32 rounding (the sum of 151,936 exponentials rounds differently from the sum of
K + 1; tolerance rel < 1e-5), and section 3 shows that every gradient agrees with the reference's too. The
speed-up is your machine's; on the machine of appendix A.9 a whole training step (with AdamW, which no longer
touches 19.4 million embedding numbers) went from 0.6 s to 0.08 s.
""")

md(r"""
### 2.6 The loop

One step (`training.train_step`):

1. the loss of a batch of 16 freshly drawn examples, question kinds mixed;
2. `loss.backward()`;
3. **gradient clipping** (梯度裁剪): if the global norm of all gradients exceeds 1, scale them all down to
   norm 1, so that one unlucky batch cannot throw the weights far;
4. **AdamW** (Loshchilov and Hutter, 2019): Adam's per-parameter step sizes from moving averages of the
   gradient and of its square, with weight decay applied to the weights directly (not to the gradient);
   no decay on biases, norm weights and the embedding table; betas (0.9, 0.95).

The learning rate follows a **warm-up** (预热) from 0 to the peak over the first steps, while Adam's averages
are still noise, then a **cosine decay** to a tenth of the peak:
""")

code(r"""
settings = TrainSettings()
print(f"default train: {settings.steps} steps of {settings.batch_size} examples, peak lr {settings.lr:g}, "
      f"warm-up {settings.warmup} steps, clip {settings.clip:g}, weight decay {settings.weight_decay:g}")
for step in (0, 49, 99, 1000, 2500, 4000, 4999):
    print(f"  step {step:5d}: lr {lr_at(step, settings.steps, settings.lr, settings.warmup):.2e}")
""")

md(r"""
Every `eval_every` steps the loop answers held-out questions by **greedy decoding** (chapter 09) and scores
them: colour and count by exact text, the box by parsing the JSON and requiring an intersection over union
(IoU, 交并比) of at least 0.5 with the true box. A guess scores 1/3 on colour and count, and about 0 on the box.
""")

md(r"""
### 2.7 A short run

The default `train` (section 2.8) takes minutes; here is a short run the chapter can afford: 300 steps
on the colour and count questions only, whose answers are one word and `<|im_end|>` (a box answer scores
about 30 tokens, and needs far more steps to learn). Training is deterministic for a given seed and thread count; across
thread counts and kinds of CPU the floats round differently, so the accuracies are printed masked and
**checked** against a guess instead: colour must beat 1/3 by 15 points on 60 held-out questions (a guess
would do that about once in a thousand runs).
""")

code(r"""
easy = ("colour", "count")
short = TrainSettings(steps=300, warmup=20, eval_every=100)
easy_held_out = [e for kind in easy for e in held_out(60, kinds=(kind,))]
model = init_weights(qvl.Qwen25VL(TRAIN_CONFIG), seed=short.seed, vocabulary=vocabulary)
history = train(model, tok, short, make=functools.partial(make_example, kinds=easy), evaluation=easy_held_out,
                vocabulary=vocabulary, progress=False)                 # True: a tqdm bar (the train command shows it)
for row in history:
    print(f"step {row['step']:4d}: " + " ".join(f"heldout_{k}={row[k]:.0%}" for k in easy))
final = history[-1]
assert final["colour"] >= 1 / 3 + 0.15, final                 # a guess: 1/3
print("after 300 steps, colour beats a guess (1/3) by at least 15 points: PASS")
""")

code(r"""
fig = learning_curve(history, "the short run: 300 steps, colour and count questions")
display(fig)
plt.close(fig)
""")

md(r"""
**Figure 14.2** — The short run's learning curve (your machine's: the exact numbers vary with the CPU). Left:
the mean training loss over each 100 steps, log scale. Within the first 100 steps it falls from `ln 151936`
(about 12) to near `ln 3 / 2` (0.55), the loss of a model that has learned the *format* (one word from the
right set of three, then `<|im_end|>`) and guesses the word: it has not looked at the picture yet. Only
below that line does it use the image. Right: held-out accuracy; the dotted line is a guess. Colour comes
first: a picture with one shape, or shapes of one colour, answers it from the average colour of the
picture. Counting needs every shape told apart, and takes longer.
""")

md(r"""
### 2.8 The `train` command and a checkpoint that `describe` reads

`python -m qvl_minimal train --out DIR [--steps N] [--seed S]` runs the default loop (5000 steps of 16
mixed questions, all three kinds) with a progress bar, then writes DIR in the hub's layout
(`train_cli.write_checkpoint`): `config.json`, `generation_config.json` (stop on `<|im_end|>`),
`model.safetensors` with the checkpoint's tensor names, the tokenizer files and chat template
(`tokenizer_files.write_tokenizer_files`, as the stand-ins of chapter 11 carry them), and `training.json`
with the learning curve. Here we write the short run's model the same way and load it back with the
chapter 11 loader:
""")

code(r"""
folder = Path(tempfile.mkdtemp()) / "shapes-model"
write_checkpoint(model, folder, {"history": history})
print(sorted(p.name for p in folder.iterdir()))
loaded = qvl.load_pretrained(folder, dtype=torch.float32, progress=False)
probe = collate(easy_held_out[:4], tok)
with torch.no_grad():
    compare("logits after save + load", loaded(**{k: v for k, v in probe.items() if k != "labels"}),
            model(**{k: v for k, v in probe.items() if k != "labels"}), 1e-7)
""")

md(r"""
And the command line, on a picture saved as a PNG file, with the question typed as a user would. After 300
steps the answer is a colour word, right more often than a guess, so it is printed masked here; the check is
that the command reads the folder and answers in the task's vocabulary:
""")

code(r"""
import subprocess
import sys
from PIL import Image

picture = held_out(1, kinds=("colour",), start=100)[0]
Image.fromarray(picture.image).save(folder.parent / "shapes.png")
print("the picture holds:", ", ".join(f"{s.colour} {s.kind}" for s in picture.shapes), "| question:", picture.question)
run = subprocess.run([sys.executable, "-m", "qvl_minimal", "describe", str(folder.parent / "shapes.png"),
                      "--question", picture.question, "--checkpoint", str(folder), "--dtype", "float32"],
                     capture_output=True, text=True)
print(f"describe_answer={run.stdout.strip()} (expected {picture.answer}) | exit code {run.returncode}")
assert run.returncode == 0 and run.stdout.strip() in COLOURS, run.stderr[-500:]
""")

md(r"""
The default run, `python -m qvl_minimal train --out shapes-model`, trains 5,000 steps on all three
questions, the box included; then

    python -m qvl_minimal describe shapes.png --question "Where is the red circle?" --checkpoint shapes-model

answers in the grounding format. Section 4 says what it reached, and where.
""")

md(r"""
### 2.9 LoRA: a fourth colour, and what the model forgets

Fine-tuning the whole model for every new skill means a full copy of the weights per skill and AdamW states
twice the model's size (section 2.10). **LoRA** (Hu et al., 2021) freezes the weights and learns, next to a
chosen Linear `W` (out x in), a low-rank update `dW = (alpha / r) B A` with `A` (r x in) and `B` (out x r),
`B` starting at zero so that the model starts unchanged:

    y = W x + (alpha / r) B (A x)

`qvl_minimal/lora.py` builds it (`LoRALinear`, module names as PEFT's: `base_layer`, `lora_A.default`,
`lora_B.default`, so that its adapter files load in PEFT; `tests/test_lora.py` checks that round trip).
Which Linears: the seven projections of every decoder layer (q, k, v, o of attention; gate, up, down of the
MLP), as QLoRA found necessary to match full fine-tuning; the vision tower stays frozen, as in Qwen's own
fine-tuning recipe. The new skill: a fourth colour, **yellow** (230, 190, 30), which the model has never
seen and never written.
""")

code(r"""
teach = functools.partial(make_example, kinds=("colour",), colours=FOUR)   # yellow among the three old colours
new_held_out = [e for e in held_out(120, kinds=("colour",), colours=FOUR) if e.answer == "yellow"][:20]
before = {**evaluate(model, tok, easy_held_out), "yellow": evaluate(model, tok, new_held_out)["colour"]}

frozen_before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
model = add_lora(model, rank=8, alpha=16)                    # freezes everything, adapts the decoder's projections
trained = sum(p.numel() for p in lora_parameters(model))
print(f"LoRA rank 8 on {len([m for m in model.modules() if hasattr(m, 'lora_A')])} Linears: {trained:,d} trainable "
      f"numbers, {trained / sum(p.numel() for p in model.parameters()):.2%} of the model")
lora_run = TrainSettings(steps=80, warmup=10, lr=5e-3, eval_every=80, seed=1)
train(model, tok, lora_run, make=teach, evaluation=new_held_out, vocabulary=vocabulary, progress=False)
after = {**evaluate(model, tok, easy_held_out), "yellow": evaluate(model, tok, new_held_out)["colour"]}
for key in ("colour", "count", "yellow"):
    print(f"{key:7s} before_lora={before[key]:.0%}  after_lora={after[key]:.0%}")
assert before["yellow"] == 0.0                              # a word it was never trained to write
assert torch.equal(model.model.layers[0].mlp.up_proj.base_layer.weight, frozen_before)
assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
print("only A and B trained; the original weights are unchanged: PASS")
""")

md(r"""
Read the three rows (your machine's numbers). Before the adapters the model never says *yellow*: the word's
row is in the shortlist (section 2.5), but it was never a right answer, so training only ever pushed it
down; LoRA cannot train it (the table is frozen), so the adapters must turn the decoder's last hidden state
towards that fixed row. 80 steps are a small budget for a word
the model has never written: the *yellow* row shows how far they got. The old questions are measured on the
same held-out examples before and after: a drop there is **forgetting** (灾难性遗忘 when it is large). The
colour questions replay the three old colours beside yellow, the usual defence; the count question is not
replayed at all, so its row shows what an unrehearsed skill loses.

**Merging.** After training, `dW` can be added into `W` once (`merge_lora`), so inference costs nothing
extra; `unmerge_lora` subtracts it again. The merged model must compute what the adapted one computes, to
float32 rounding:
""")

code(r"""
probe = collate(easy_held_out[:6], tok)
inputs = {k: v for k, v in probe.items() if k != "labels"}
with torch.no_grad():
    adapted = model(**inputs)
    merge_lora(model)
    merged = model(**inputs)
    unmerge_lora(model)
    unmerged = model(**inputs)
compare("merged vs adapted logits", merged, adapted, 1e-5)
compare("unmerged vs adapted logits", unmerged, adapted, 1e-5)
""")

md(r"""
### 2.10 What fine-tuning the real 3B costs

`qvl_minimal/finetune_costs.py` reads the memory of one training step off the config: the weights, one
gradient per trained parameter, AdamW's two moving averages per trained parameter (float32), and the
**activations** (激活值) that the forward keeps for backward, per token. **Gradient checkpointing**
(梯度检查点) keeps only each layer's input and recomputes the layer during backward: roughly a third more
compute for far fewer activations. For one sequence of 1,024 tokens on Qwen2.5-VL-3B, against a 16 GB laptop
of which 12 GB are usable (the rest: the system, Python, a browser):
""")

code(r"""
cfg3b = qvl.Qwen25VLConfig.preset("3b")
print(f"{'method':6s} {'dtype':9s} {'ckpt':5s} {'weights':>8s} {'grads':>7s} {'adam':>7s} {'activ.':>7s} "
      f"{'total':>7s}  fits in 12 GB")
for row in laptop_table(cfg3b, tokens=1024):
    gb = {k: row[k] / GB for k in ("weights", "gradients", "adam_states", "activations", "total")}
    print(f"{row['method']:6s} {row['dtype']:9s} {str(row['checkpointing']):5s} {gb['weights']:7.1f}G "
          f"{gb['gradients']:6.1f}G {gb['adam_states']:6.1f}G {gb['activations']:6.1f}G {gb['total']:6.1f}G  "
          f"{'yes' if row['fits'] else 'no'}")
""")

md(r"""
Full fine-tuning of 3B does not fit a 16 GB laptop in any form: the trained parameters alone need a
gradient and two AdamW averages each, three more copies of the language model. LoRA trains under half a percent of
the numbers, so gradients and AdamW states almost vanish; what is left is the frozen weights and the
activations, and in bfloat16 with checkpointing a 1,024-token example fits. Those numbers are computed,
not measured on a laptop. They are checked where they can be: at the 3B's widths with 2 decoder layers,
the bytes autograd actually saves for backward (counted exactly by `measure_saved_bytes`, with hooks on
every saved tensor) against the formula:
""")

code(r"""
small3b = cfg3b.replace(text_config={"num_hidden_layers": 2}, vision_config={"depth": 1, "fullatt_block_indexes": (0,)})
with torch.device("meta"):
    big = qvl.Qwen25VL(small3b)                              # shapes only; the bytes saved do not depend on values
big = big.to_empty(device="cpu").requires_grad_(False)
for p in big.parameters():
    p.data.zero_()
ids = torch.randint(0, 150000, (1, 16), generator=torch.Generator().manual_seed(0))
for method in ("full", "lora"):
    for ckpt in (False, True):
        if method == "lora":
            add_lora(big, rank=8, alpha=16)
        else:
            big.model.requires_grad_(True)
        measured, _ = measure_saved_bytes(big, ids, checkpointing=ckpt)
        want = finetune_memory(small3b, 16, method, checkpointing=ckpt, scored_tokens=15)["activations"]
        print(f"{method:4s} checkpointing={str(ckpt):5s}: formula {want:>11,d} B, measured {measured:>11,d} B, "
              f"{'PASS' if abs(want - measured) <= 16 else 'FAIL'} (within 16 B)")
        assert abs(want - measured) <= 16
        if method == "lora":
            from qvl_minimal.lora import unload_lora
            unload_lora(big, merge=False)
        big.requires_grad_(False)
del big
""")

md(r"""
## 3. Check

The loss and the gradient of every parameter, ours against the reference's (`labels=`), on a batch that
exercises everything: an image row, a video row and a text-only row, left padded to one length, with a
different number of scored tokens per row. The tiny config (chapter 00) keeps this fast; its head is untied,
so the embedding's gradient and the head's are compared separately. Tolerance: rel < 1e-5 per tensor, float32.
""")

code(r"""
import sys

sys.path.insert(0, str(Path.cwd().parent))                                # the repository root: tests/ is a package there
from tests.model_helpers import left_padded, sample   # random prompts with images, videos, left padding

cfg = qvl.Qwen25VLConfig.preset("tiny")
ref = build_reference(cfg, seed=3).train()
ours = qvl.Qwen25VL(cfg)
ours.load_state_dict({k: v.clone() for k, v in reference_state_dict(ref, cfg).items()})
ours.train()
check_batch = left_padded(sample(cfg, 5, ("image", (1, 4, 4)), 9, seed=1),
                          sample(cfg, 3, ("video", (2, 4, 4), 1.0), 6, seed=2), sample(cfg, 12, seed=3))
check_labels = torch.full_like(check_batch["input_ids"], IGNORE)
for row, n in enumerate((4, 2, 7)):                                       # each row's last n tokens are its "answer"
    check_labels[row, -n:] = check_batch["input_ids"][row, -n:]
print("rows", tuple(check_batch["input_ids"].shape), "| real tokens per row",
      check_batch["attention_mask"].sum(1).tolist(), "| scored per row", (check_labels != IGNORE).sum(1).tolist())
loss = causal_lm_loss(ours, {**check_batch, "labels": check_labels})
ref_loss = ref(**check_batch, labels=check_labels).loss
compare("loss", loss, ref_loss, 1e-6)
loss.backward()
ref_loss.backward()
ref_grads = {name: p.grad for name, p in ref.named_parameters()}
ref_grads = reference_state_dict(type("Grads", (), {"state_dict": lambda self: ref_grads})(), cfg)
reports = [compare(f"grad {name}", p.grad, ref_grads[name], 1e-5, show=False) for name, p in ours.named_parameters()]
print(f"{sum(r.passed for r in reports)} of {len(reports)} parameter gradients PASS (tol rel < 1e-5); "
      f"worst rel={max(r.rel for r in reports):.1e}")
assert all(r.passed for r in reports) and len(reports) == len(ref_grads)
""")

md(r"""
Training ran on the shortlist (section 2.5), so its loss and gradients are checked too: the same batch, the
tiny config with a **tied** head, every embedding row outside the batch's tokens set to zero in both models.
The reference computes all 151,936 columns; ours K + 1. The shortlisted rows' gradient is compared with the
reference's gradient of the table at those rows (the other rows are not trained). Tolerance: rel < 1e-5.
""")

code(r"""
tied = cfg.replace(text_config={"tie_word_embeddings": True})
ref = build_reference(tied, seed=3).train()
state = {k: v.clone() for k, v in reference_state_dict(ref, tied).items()}
ids = torch.unique(check_batch["input_ids"])                             # (K,): the batch's tokens
keep = torch.zeros(tied.text_config.vocab_size, dtype=torch.bool)
keep[ids] = True
state["model.embed_tokens.weight"][~keep] = 0.0                           # the shortlist's rule
ours = qvl.Qwen25VL(tied)
ours.load_state_dict(state)
ref_table = next(p for n, p in ref.named_parameters() if n.endswith("embed_tokens.weight"))
with torch.no_grad():
    ref_table.copy_(state["model.embed_tokens.weight"])
ours.train()
short_list = Shortlist(ours, ids.tolist())
loss = short_list.loss(ours, {**check_batch, "labels": check_labels})
ref_loss = ref(**check_batch, labels=check_labels).loss
print(f"K = {len(ids)} of {tied.text_config.vocab_size:,d} columns")
compare("shortlisted loss vs the reference's", loss, ref_loss, 1e-6)
loss.backward()
ref_loss.backward()
ref_grads = {name: p.grad for name, p in ref.named_parameters()}
ref_grads = reference_state_dict(type("Grads", (), {"state_dict": lambda self: ref_grads})(), tied)
reports = [compare(f"grad {name}", p.grad, ref_grads[name], 1e-5, show=False)
           for name, p in ours.named_parameters() if p.requires_grad]
reports.append(compare("grad rows", short_list.rows.grad, ref_grads["model.embed_tokens.weight"][ids], 1e-5, show=False))
print(f"{sum(r.passed for r in reports)} of {len(reports)} gradients PASS (tol rel < 1e-5); "
      f"worst rel={max(r.rel for r in reports):.1e}")
assert all(r.passed for r in reports) and len(reports) == len(ref_grads)
""")

md(r"""
`tests/test_training.py` runs the first comparison with the tied head too, `tests/test_shortlist.py` the
second, and `tests/test_training.py` checks the label mask against
the reference processor: our prompt + answer + `<|im_end|>` ids equal the ids the reference processor gives
for the whole conversation rendered by the chat template (minus the template's final newline).
""")

md(r"""
## 4. Pictures

Figure 14.1 (the task) and Figure 14.2 (the short run) are above. The default run draws its own: `train`
writes the learning curve into the checkpoint folder's `training.json` (settings, seconds, threads, and one
row per evaluation: step, mean loss, the three held-out accuracies), and the same function draws it:

```python
record = json.loads((Path("shapes-model") / "training.json").read_text())
fig = learning_curve(record["history"], f"{record['settings']['steps']} steps, {record['seconds'] / 60:.0f} min")
```

The run below was recorded on the machine of appendix A.9 (`figures/14_learning_curve.json`, drawn by
`python -m qvl_minimal figures`); it is a record, not something this notebook computed.
""")

code(r"""
record = json.loads((Path.cwd().parent / "figures" / "14_learning_curve.json").read_text())
last = record["history"][-1]
print(f"recorded default run: {record['settings']['steps']} steps, {record['threads']} threads, {record['machine']}")
print("held-out accuracy at the end:", ", ".join(f"{k} {last[k]:.0%}" for k in ("colour", "count", "box")),
      f"({record['settings']['eval_per_kind']} questions each)")
fig = recorded_learning_curve()
display(fig)
plt.close(fig)
""")

md(r"""
**Figure 14.3** — The default `train` run (5,000 steps of 16 mixed questions), recorded. Left: the mean
training loss between evaluations. Right: held-out accuracy per question kind, dotted lines a guess. Look at
the order in which the skills arrive: colour first, then count, and the box last and slowest: its answer is
four numbers that must each land within a few pixels, read off 16 visual tokens that each cover 28 x 28 px.
""")

md(r"""
## 5. Summary

- Labels are the token ids on the answer and its `<|im_end|>`, and -100 on everything given: system and
  user turns, visual pads, padding. The loss is the mean over all scored tokens of the batch, shifted by one,
  in float32: exactly the reference's `labels=` loss, and every gradient agrees to rel < 1e-5.
- A small Qwen2.5-VL (2 vision blocks, 4 decoder layers, width 128) with the real 151,936-token vocabulary
  learns the shapes task on a CPU. Nine tenths of its parameters are the tied embedding table; training only
  the rows of the task's few dozen tokens and keeping the others at zero (the shortlist) gives the same loss
  from K + 1 columns, and makes a step several times cheaper.
- AdamW, warm-up then cosine decay, gradient clipping; held-out accuracy by greedy decoding; the loss falls
  first by learning the answer's format, then its content.
- `train` writes a hub-layout checkpoint; `load_pretrained` and `describe` read it unchanged.
- LoRA trains a fraction of a percent of the numbers, learns a new colour, and merges into the weights to
  float32 rounding; measure the old questions before and after to see what is forgotten.
- Full fine-tuning of 3B needs several times the model's weights in memory; a 16 GB laptop can LoRA-tune it
  in bfloat16 with gradient checkpointing, and cannot fully fine-tune it.
""")

md(r"""
## 6. Exercises

**Exercise 14.1 (the label mask).** Write `mask_labels(input_ids, attention_mask, answer_lengths)`: a
left-padded batch `(B, L)` whose row `b` ends with an answer of `answer_lengths[b]` tokens including its
`<|im_end|>`; return the labels `(B, L)`: the token ids on each answer, -100 everywhere else. The check
compares with the labels `collate` builds, on three batches.
""")

code(r"""
def mask_labels(input_ids, attention_mask, answer_lengths):
    labels = None
    ### BEGIN SOLUTION
    labels = torch.full_like(input_ids, IGNORE)
    for row, n in enumerate(answer_lengths):
        labels[row, -n:] = input_ids[row, -n:]                  # left padding: every answer ends its row
    ### END SOLUTION
    return labels
""", tags=["exercise"])

code(r"""check("14.1", mask_labels)""", tags=["check"])

md(r"""
**Exercise 14.2 (a LoRA Linear).** Write `LoRALinearMine(base, rank, alpha)`, an `nn.Module` holding the
frozen `base_layer` (the given `nn.Linear`), and two trainable parameters `A` (rank x in) and `B`
(out x rank), `B` zero at the start; `forward(x) = base_layer(x) + (alpha / rank) * x A^T B^T`. The check
sets `A` and `B` to random values and compares with `lora.LoRALinear`.
""")

code(r"""
from torch import nn


class LoRALinearMine(nn.Module):
    ### BEGIN SOLUTION
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base_layer(x) + (x @ self.A.T @ self.B.T) * self.scaling
    ### END SOLUTION
""", tags=["exercise"])

code(r"""check("14.2", LoRALinearMine)""", tags=["check"])

md(r"""
**Exercise 14.3 (one training step).** Write `train_step_mine(model, optimizer, batch, lr, clip)`: set the
optimiser's learning rate to `lr`, compute `causal_lm_loss`, clear the old gradients, backpropagate, clip the
global gradient norm to `clip`, step, and return the loss as a Python float. The check runs two steps (the
second clips hard) on copies of a tiny model and compares every parameter with `training.train_step`'s.
""")

code(r"""
def train_step_mine(model, optimizer, batch, lr, clip):
    ### BEGIN SOLUTION
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = causal_lm_loss(model, batch)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item()
    ### END SOLUTION
""", tags=["exercise"])

code(r"""check("14.3", train_step_mine)""", tags=["check"])

md(r"""
**Exercise 14.4 (quiz: predict, then run).** Section 2.9 adapted all seven projections at rank 8. The LoRA
paper adapted only `q_proj` and `v_proj`. How many trainable numbers does LoRA of rank 4 on `q_proj` and
`v_proj` of every decoder layer of `TRAIN_CONFIG` add? Work it out from the config (section 2.4's widths,
and chapter 08 for the shapes of the projections), answer with an int, then check.
""")

code(r"""
lora_numbers = None
### BEGIN SOLUTION
D, hd = TRAIN_CONFIG.text_config.hidden_size, TRAIN_CONFIG.text_config.head_dim
q_out, v_out = TRAIN_CONFIG.text_config.num_attention_heads * hd, TRAIN_CONFIG.text_config.num_key_value_heads * hd
lora_numbers = TRAIN_CONFIG.text_config.num_hidden_layers * 4 * ((D + q_out) + (D + v_out))  # r (in + out) each
### END SOLUTION
""", tags=["exercise"])

code(r"""check("14.4", lora_numbers)""", tags=["check"])


code(r"""print(f"time={time.perf_counter() - start:.1f}s (whole chapter)")""")

nb = new_notebook(cells=cells)
nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
               "language_info": {"name": "python"}}
nbformat.write(nb, "chapters/14_training.ipynb")  # run from the repository root
print("wrote", len(cells), "cells")
