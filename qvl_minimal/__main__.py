"""The command line.

    python -m qvl_minimal describe IMAGE [--question TEXT] [--checkpoint DIR] [--max-new-tokens N]
                                         [--device cpu|cuda|mps] [--dtype bfloat16|float32]
    python -m qvl_minimal figures [--out figures/]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def describe(args) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from .preprocess import preprocess_image
    from .tokenizer import encode_chat, load_tokenizer
    from .weights import find_checkpoint, load_pretrained

    try:
        folder = find_checkpoint(args.checkpoint)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        image = Image.open(args.image)
    except (FileNotFoundError, UnidentifiedImageError) as e:
        print(f"error: cannot read the image {args.image}: {e}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(f"loading {folder} ...", file=sys.stderr)
    start = time.perf_counter()
    model = load_pretrained(folder, dtype=dtype, device=args.device)
    tokenizer = load_tokenizer(folder)
    print(f"loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    pixel_values, grid_thw = preprocess_image(image)  # (N, 1176), (1, 3)
    input_ids = encode_chat(tokenizer, args.question, image_grid_thw=grid_thw)  # (1, L)
    param = next(model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)

    ids, shown = [], ""

    def show(token):  # called with each new token, (B,) = (1,)
        nonlocal shown
        ids.append(int(token[0]))
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait until a character split over tokens is complete
            print(text[len(shown):], end="", flush=True)
            shown = text

    model.generate(input_ids.to(param.device), args.max_new_tokens, pixel_values=pixel_values,
                   image_grid_thw=grid_thw.to(param.device), on_token=show)
    print()
    return 0


def figures(args) -> int:
    import importlib
    import pkgutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import figures as package

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for module in pkgutil.iter_modules(package.__path__):
        for stem, draw in importlib.import_module(f"{package.__name__}.{module.name}").FIGURES.items():
            fig = draw()
            fig.savefig(out / f"{stem}.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)
            print(f"wrote {out / stem}.png")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qvl_minimal", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="answer a question about a photo with a checkpoint")
    d.add_argument("image", help="path to a photo (JPEG, PNG, ...)")
    d.add_argument("--question", default="Describe this image.")
    d.add_argument("--checkpoint", default=None, help="checkpoint folder (default: $QVL_CHECKPOINT, then the hub cache)")
    d.add_argument("--max-new-tokens", type=int, default=128)
    d.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    d.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                   help="default: float32 on the CPU, bfloat16 on a GPU")
    d.set_defaults(run=describe)
    f = sub.add_parser("figures", help="draw every figure of the book into a folder")
    f.add_argument("--out", default="figures")
    f.set_defaults(run=figures)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
