"""The command line: `python -m qvl_minimal COMMAND ...` (or `qvl COMMAND ...`).

    python -m qvl_minimal describe IMAGE... | VIDEO [--question TEXT] [--checkpoint DIR] [--json] ...
    python -m qvl_minimal figures [--out figures/]
    python -m qvl_minimal site [--out _site/]
    python -m qvl_minimal train --out DIR [--steps N] [--seed S]

Each command is a module with `configure(parser)` (its arguments) and `run(args) -> exit code`;
COMMANDS lists them. A module is imported only when its command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {  # name -> (module, one line of help)
    "describe": ("qvl_minimal.describe", "answer a question about photos or a video with a checkpoint"),
    "figures": ("qvl_minimal.figures", "draw every figure of the book into a folder"),
    "site": ("qvl_minimal.website", "build the book as a static website from the stored notebooks"),
    "handouts": ("qvl_minimal.labs.handouts", "write the student version of every chapter with exercises"),
    "grade": ("qvl_minimal.labs.grade", "run student notebooks and tabulate their checks (pass / fail / not attempted)"),
    "bench": ("qvl_minimal.bench", "time our model against the reference and this machine's ceilings (--quick, --full)"),
    "train": ("qvl_minimal.train_cli", "train a small model on the shapes task and write a checkpoint folder"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qvl_minimal", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_line) in COMMANDS.items():
        command = sub.add_parser(name, help=help_line)
        if name == chosen:  # only the command that runs is imported
            importlib.import_module(module).configure(command)
            command.set_defaults(module=module)
    args = parser.parse_args(argv)
    return importlib.import_module(args.module).run(args)


if __name__ == "__main__":
    sys.exit(main())
