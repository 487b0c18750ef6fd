"""The book's pictures, drawn by code from the library (never by hand).

Each module here holds the figures of one part of the book; each figure is a function that
returns a matplotlib Figure. `python -m qvl_minimal figures` writes them all to `figures/`.
"""

import sys
from pathlib import Path


def configure(parser) -> None:
    parser.add_argument("--out", default="figures", help="folder for the PNG files (default: figures/)")


def run(args) -> int:
    import importlib
    import pkgutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    package = sys.modules[__name__]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for module in pkgutil.iter_modules(package.__path__):
        for stem, draw in importlib.import_module(f"{package.__name__}.{module.name}").FIGURES.items():
            fig = draw()
            fig.savefig(out / f"{stem}.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)
            print(f"wrote {out / stem}.png")
    return 0
