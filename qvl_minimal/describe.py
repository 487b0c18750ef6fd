"""`python -m qvl_minimal describe IMAGE`: answer a question about a photo with a checkpoint."""

from __future__ import annotations

import sys
import time


def configure(parser) -> None:
    parser.add_argument("image", help="path to a photo (JPEG, PNG, ...)")
    parser.add_argument("--question", default="Describe this image.")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder (default: $QVL_CHECKPOINT, then the hub cache)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                        help="default: float32 on the CPU, bfloat16 on a GPU")


def run(args) -> int:
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
