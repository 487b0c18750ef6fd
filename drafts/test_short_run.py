"""Chapter 14's short training run as a test (a draft, outside pytest's testpaths).

Taken out of tests/test_training.py: it took 7 minutes of wall time at 1 thread on a loaded 2-core
machine (about 300 x 0.5 s at best on a quiet one), too much for the 15-minute test command, and it
passed once, at one thread count, by a margin (held-out colour 57% against the 48% bar) that other
thread counts may not keep. Bring it back when a run learns faster (drafts/README.md).
Run it by hand with: python -m pytest -q -p no:nbval drafts/test_short_run.py
"""


import pytest

import qvl_minimal as qvl
from qvl_minimal.shapes import held_out, make_example
from qvl_minimal.tokenizer_files import load_tokenizer
from qvl_minimal.training import evaluate


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_short_run_beats_a_guess(tok):
    """Chapter 14's short run: 300 steps on colour and count; held-out colour must beat 1/3 by 15 points
    on 60 questions (a guess does that with probability about 1e-3)."""
    import functools

    from qvl_minimal.training import TRAIN_CONFIG, TrainSettings, init_weights, train

    easy = ("colour", "count")
    model = init_weights(qvl.Qwen25VL(TRAIN_CONFIG), seed=0)
    colour_held_out = held_out(60, kinds=("colour",))
    history = train(model, tok, TrainSettings(steps=300, warmup=20, eval_every=300), progress=False,
                    make=functools.partial(make_example, kinds=easy), evaluation=colour_held_out)
    assert history[-1]["loss"] < history[0]["loss"] or len(history) == 1
    assert history[-1]["colour"] >= 1 / 3 + 0.15, history
    assert evaluate(model, tok, colour_held_out) == {"colour": history[-1]["colour"]}  # evaluation is repeatable


