"""Chapter 14: the task's generator, the label mask, loss and gradients against the reference, training."""

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import qvl_minimal as qvl
from qvl_minimal.reference import build_reference, compare, reference_processor, reference_state_dict
from qvl_minimal.shapes import COLOURS, SIZE, _apart, held_out, make_example, shape_mask
from qvl_minimal.tokenizer import QWEN25VL_CHAT_TEMPLATE, chat_messages
from qvl_minimal.training import (IGNORE, causal_lm_loss, collate, encode_example, iou,
                                  is_correct, parse_box)
sys.path.insert(0, os.path.dirname(__file__))
from model_helpers import PAD, left_padded, sample  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return qvl.load_tokenizer()


# ----------------------------------------------------------------------------- the task
def test_generator_follows_the_rules():
    for i in range(300):
        ex = make_example("train", 0, i)
        assert ex.image.shape == (SIZE, SIZE, 3) and ex.image.dtype == np.uint8
        assert 1 <= len(ex.shapes) <= 3 and len({s.kind for s in ex.shapes}) == len(ex.shapes)
        painted = np.zeros((SIZE, SIZE), bool)
        for s in ex.shapes:
            x1, y1, x2, y2 = s.box
            assert 20 <= x2 - x1 <= 36 and x2 - x1 == y2 - y1 and 0 <= x1 and 0 <= y1 and x2 <= SIZE and y2 <= SIZE
            mask = shape_mask(s.kind, s.box)
            assert (ex.image[mask] == COLOURS[s.colour]).all()
            painted |= mask
        assert (ex.image[~painted] == 255).all()  # white elsewhere
        for a in ex.shapes:
            for b in ex.shapes:
                assert a is b or _apart(a.box, b.box, 3)
    # the triangle's apex is at the top: its top row is narrower than its bottom row
    tri = shape_mask("triangle", (10, 10, 40, 40))
    rows = tri.sum(axis=1)
    assert rows[10] <= 1 and rows[39] >= 29 and (np.diff(rows[10:40]) >= 0).all() and rows[40:].sum() == 0


def test_generator_is_seeded_and_held_out_differs():
    a, b = make_example("train", 3, 7), make_example("train", 3, 7)
    assert (a.image == b.image).all() and a.question == b.question and a.answer == b.answer
    train = {make_example("train", 0, i).image.tobytes() for i in range(200)}
    assert not train & {ex.image.tobytes() for ex in held_out(200)}
    assert {ex.kind for ex in held_out(60)} == {"colour", "count", "box"}
    q = [ex for ex in held_out(60) if ex.kind == "box"][0]
    box = parse_box(q.answer)
    shape = next(s for s in q.shapes if q.question == f"Where is the {s.colour} {s.kind}?")
    assert box == tuple(float(v) for v in shape.box) and f'"label": "{shape.colour} {shape.kind}"' in q.answer


def test_scoring():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert is_correct("box", '{"bbox_2d": [1, 1, 30, 30], "label": "x"}', '{"bbox_2d": [0, 0, 30, 30]}')
    assert not is_correct("box", '{"bbox_2d": [1, 1, 30', '{"bbox_2d": [0, 0, 30, 30]}')
    assert is_correct("count", "2", "2") and not is_correct("colour", "red", "blue")


# ----------------------------------------------------------------------------- labels
def test_label_mask_scores_only_the_answer_and_im_end(tok):
    ex = next(e for e in held_out(30) if e.kind == "box")
    _, grid = qvl.preprocess_image(ex.image)
    ids, labels = encode_example(tok, ex.question, ex.answer, grid)
    scored = labels != IGNORE
    assert tok.decode(labels[scored]) == ex.answer + "<|im_end|>"
    assert (labels[scored] == ids[scored]).all() and scored[-1] and int(scored.sum()) == len(tok.encode(ex.answer)) + 1
    assert not scored[ids == tok.image_pad_id].any() and not scored[: int((~scored).sum())].any()  # prompt first
    # the same ids as the reference processor on the whole conversation (minus its final "\n")
    processor = reference_processor(chat_template=QWEN25VL_CHAT_TEMPLATE)
    messages = chat_messages(ex.question, num_images=1) + [{"role": "assistant", "content": ex.answer}]
    text = processor.apply_chat_template(messages, tokenize=False)
    ref = processor(text=[text], images=[Image.fromarray(ex.image)], return_tensors="pt")["input_ids"][0]
    assert tok.decode(ref[-2:]) == "<|im_end|>\n"
    assert torch.equal(ids, ref[:-1])


def test_collate_left_pads_and_masks_padding(tok):
    batch = collate([make_example("train", 0, i) for i in range(6)], tok)
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE).all() and (batch["input_ids"][pad] == tok.pad_id).all()
    assert batch["attention_mask"][:, -1].all()  # left padding: every row ends with its <|im_end|>
    assert (batch["input_ids"][:, -1] == tok.im_end_id).all() and (batch["labels"][:, -1] == tok.im_end_id).all()


# ----------------------------------------------------------------------------- loss and gradients
@pytest.mark.parametrize("tied", [False, True])
def test_loss_and_every_gradient_match_reference(tiny_config, tied):
    """Image + video + text-only rows, left padded; labels on each row's last tokens (float32, rel < 1e-5)."""
    cfg = tiny_config.replace(text_config={"tie_word_embeddings": tied})
    ref = build_reference(cfg, seed=3).train()
    ours = qvl.Qwen25VL(cfg)
    ours.load_state_dict({k: v.clone() for k, v in reference_state_dict(ref, cfg).items()}, strict=True)
    ours.train()
    batch = left_padded(sample(cfg, 5, ("image", (1, 4, 4)), 9, seed=1),
                        sample(cfg, 3, ("video", (2, 4, 4), 1.0), 6, seed=2),
                        sample(cfg, 12, seed=3))
    lengths = batch["attention_mask"].sum(1)
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for row, n_scored in enumerate((4, 2, 7)):  # the last n_scored tokens of each row are the "answer"
        labels[row, -n_scored:] = batch["input_ids"][row, -n_scored:]
    assert (labels[batch["attention_mask"] == 0] == IGNORE).all() and lengths.min() < lengths.max()
    assert (batch["input_ids"] == PAD).any()

    loss = causal_lm_loss(ours, {**batch, "labels": labels})
    ref_loss = ref(**batch, labels=labels).loss
    compare("loss", loss, ref_loss, 1e-6)
    loss.backward()
    ref_loss.backward()
    ref_grads = reference_state_dict(type("G", (), {"state_dict": lambda self: {
        n: p.grad for n, p in ref.named_parameters()}})(), cfg)
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    assert ours_grads.keys() == ref_grads.keys()
    for name, grad in ours_grads.items():
        assert grad is not None and ref_grads[name] is not None, name
        compare(f"grad {name}", grad, ref_grads[name], 1e-5, show=False)
    assert ours_grads["visual.patch_embed.proj.weight"].abs().max() > 0  # the image and the video are trained


def test_loss_refuses_a_batch_without_labels(tok):
    batch = collate([make_example("train", 0, 0)], tok)
    batch["labels"][:] = IGNORE
    with pytest.raises(ValueError, match="no labelled token"):
        causal_lm_loss(qvl.Qwen25VL(qvl.Qwen25VLConfig.preset("tiny")), batch)


# ----------------------------------------------------------------------------- the train command
def test_train_command_writes_a_checkpoint_that_loads_and_describes(tmp_path, monkeypatch, capsys):
    import json

    from qvl_minimal import training
    from qvl_minimal.__main__ import main

    monkeypatch.setattr(training, "held_out_set", lambda per_kind: held_out(3))  # keep the test's evaluation short
    out = tmp_path / "shapes-model"
    assert main(["train", "--out", str(out), "--steps", "2", "--eval-every", "1", "--seed", "3"]) == 0
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.json",
            "training.json"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "training.json").read_text())
    assert [row["step"] for row in record["history"]] == [1, 2] and record["settings"]["seed"] == 3
    model = qvl.load_pretrained(out, dtype=torch.float32, progress=False)
    assert model.config == training.TRAIN_CONFIG and model.generation_config.eos_token_id == (151645, 151643)
    assert not hasattr(model, "lm_head")  # tied, as 3B
    picture = make_example("heldout", 0, 5)
    Image.fromarray(picture.image).save(tmp_path / "shapes.png")
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "shapes.png"), "--question", picture.question, "--checkpoint", str(out),
                 "--dtype", "float32", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()  # an answer was streamed


def _exit_code(argv) -> int:
    from qvl_minimal.__main__ import main

    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors exit
        return stop.code


@pytest.mark.parametrize("args, says", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "x"], "invalid int value"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),
    (["--seed", "-1"], "--seed must be a non-negative"),
    (None, "--out"),  # --out is required
])
def test_train_command_bad_options(tmp_path, capsys, args, says):
    argv = ["train"] if args is None else ["train", "--out", str(tmp_path / "new"), *args]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
    assert not (tmp_path / "new").exists()  # nothing written


def test_train_command_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert _exit_code(["train", "--out", str(tmp_path / "used")]) == 2
    assert "not empty" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a short run learns
def test_a_short_run_learns_colour_far_above_a_guess(tok):
    """100 steps of colour questions on the shortlist: held-out colour must beat a guess (1/3) by 25 points on
    60 questions (a guess does that with probability below 1e-5; measured here: 80% at 1 and 2 threads).
    The rows outside the shortlist are still exactly zero afterwards, and evaluation is repeatable."""
    import functools

    from qvl_minimal.training import TRAIN_CONFIG, TrainSettings, evaluate, init_weights, task_vocabulary, train

    vocabulary = task_vocabulary(tok)
    model = init_weights(qvl.Qwen25VL(TRAIN_CONFIG), seed=0, vocabulary=vocabulary)
    colour_held_out = held_out(60, kinds=("colour",))
    history = train(model, tok, TrainSettings(steps=100, warmup=20, eval_every=100), progress=False,
                    make=functools.partial(make_example, kinds=("colour",)), evaluation=colour_held_out,
                    vocabulary=vocabulary)
    assert history[-1]["colour"] >= 1 / 3 + 0.25, history
    table = model.model.embed_tokens.weight
    outside = torch.ones(len(table), dtype=torch.bool)
    outside[vocabulary] = False
    assert table.requires_grad and not table[outside].any() and table[vocabulary].abs().min() > 0
    assert evaluate(model, tok, colour_held_out) == {"colour": history[-1]["colour"]}
