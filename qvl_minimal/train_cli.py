"""`python -m qvl_minimal train --out DIR`: train a small Qwen2.5-VL on the shapes task.

    train --out shapes-model                 the default run: 5000 steps (8.3 min on appendix A.9's 2-core machine)
    train --out quick --steps 200 --seed 1   a short run with another seed

The run: check the options -> build TRAIN_CONFIG's model, seeded, its embedding rows zero outside the
task's shortlist (shortlist.py) -> train (training.train: a progress
bar, held-out accuracy every --eval-every steps) -> write DIR as a checkpoint folder in the hub's
layout, which `load_pretrained(DIR)` and `describe ... --checkpoint DIR` load like any other:

    config.json               the config (TRAIN_CONFIG), flat as the released ones
    generation_config.json    eos: <|im_end|> and <|endoftext|>, pad <|endoftext|>, greedy
    model.safetensors         the weights, float32, the checkpoint's key names (tied head: no lm_head)
    tokenizer.json ...        the Qwen2.5-VL tokenizer files and chat template (tokenizer_files.py)
    training.json             the settings and the history: loss and held-out accuracy per evaluation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .training import TrainSettings

EXAMPLES = """examples:
  python -m qvl_minimal train --out shapes-model
  python -m qvl_minimal describe shapes.png --question "Where is the red circle?" --checkpoint shapes-model
"""


def configure(parser) -> None:
    defaults = TrainSettings()
    parser.description = __doc__.split("\n")[0].split("`: ")[-1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.error = lambda message: parser.exit(2, f"error: {message} (see {parser.prog} --help)\n")  # one line
    parser.add_argument("--out", required=True, help="the checkpoint folder to write (new or empty)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the weights and the data (default 0)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help=f"steps between held-out evaluations (default {defaults.eval_every})")


class OptionError(ValueError):
    """A mistake in the options: one `error:` line, exit 2."""


def check_options(args) -> Path:
    """Every option checked before anything is built; returns the output folder."""
    if args.steps < 1:
        raise OptionError(f"--steps must be at least 1, got {args.steps}")
    if args.eval_every < 1:
        raise OptionError(f"--eval-every must be at least 1, got {args.eval_every}")
    if not 0 <= args.seed < 2**63:
        raise OptionError(f"--seed must be a non-negative integer, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder name")
    if out.is_dir() and any(out.iterdir()):
        raise OptionError(f"--out {out} is not empty; choose a new folder or delete this one")
    if not out.parent.is_dir():
        raise OptionError(f"--out {out}: its parent folder {out.parent} does not exist")
    return out


def write_checkpoint(model, folder, extra: dict | None = None) -> Path:
    """Write `model` as a checkpoint folder in the hub's layout (see the module docstring)."""
    from safetensors.torch import save_file

    from .config import GenerationConfig
    from .tokenizer_files import write_tokenizer_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2), encoding="utf-8")
    generation = asdict(GenerationConfig.for_config(model.config))
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}  # our names = the hub's
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    write_tokenizer_files(folder)
    if extra is not None:
        (folder / "training.json").write_text(json.dumps(extra, indent=2), encoding="utf-8")
    return folder


def run(args) -> int:
    try:
        out = check_options(args)
    except OptionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    from .model import Qwen25VL
    from .shapes import QUESTION_KINDS
    from .tokenizer_files import load_tokenizer
    from .training import TRAIN_CONFIG, init_weights, task_vocabulary, train

    settings = TrainSettings(steps=args.steps, seed=args.seed, eval_every=args.eval_every)
    tokenizer = load_tokenizer()
    torch.manual_seed(args.seed)
    vocabulary = task_vocabulary(tokenizer)  # the shortlist (shortlist.py): the other rows stay zero
    model = init_weights(Qwen25VL(TRAIN_CONFIG), seed=args.seed, vocabulary=vocabulary)
    start = time.perf_counter()
    try:
        history = train(model, tokenizer, settings, vocabulary=vocabulary)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - start
    write_checkpoint(model, out, {"settings": asdict(settings), "seconds": seconds,
                                  "threads": torch.get_num_threads(), "history": history})
    last = history[-1]
    scores = " ".join(f"{k}={last[k]:.0%}" for k in QUESTION_KINDS if k in last)
    print(f"trained {settings.steps} steps in {seconds / 60:.1f} min on {torch.get_num_threads()} threads; "
          f"held-out accuracy {scores} ({settings.eval_per_kind} questions each); wrote {out}", file=sys.stderr)
    return 0
