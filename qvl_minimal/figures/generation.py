"""Figures of generation (chapter 09): the position ids of a real prompt and of the tokens decoded after it.

The prompt is the real chat prompt with the sample photo (tokenizer, preprocess_image); every id is
the library's `get_rope_index`, and the decoded tokens' ids are `cache position + delta`, the rule
`Qwen25VL.generate` uses (chapter 09 checks it against recomputing `get_rope_index`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..config import Qwen25VLConfig
from ..positions import get_rope_index

AXES = (("t", "#c0392b", "-"), ("h", "#27ae60", "--"), ("w", "#3b75af", ":"))


def photo_prompt(question: str = "Describe this photo."):
    """The chat prompt with the sample photo: (input_ids (1, L), image_grid_thw (1, 3))."""
    from ..preprocess import preprocess_image
    from ..samples import sample_photo
    from ..tokenizer import encode_chat, load_tokenizer

    _, grid = preprocess_image(sample_photo())
    return encode_chat(load_tokenizer(), question, image_grid_thw=grid), grid


def decoding_positions(new_tokens: int = 24):
    """Figure 9.1: t, h, w ids against the cache position, for the prompt and for decoded tokens."""
    config = Qwen25VLConfig.preset("3b")
    ids, grid = photo_prompt()
    pos, delta = get_rope_index(config, ids, image_grid_thw=grid)  # (3, 1, L), (1, 1)
    L, d = ids.shape[1], int(delta)
    cache_pos = torch.arange(L, L + new_tokens)  # where each new token sits in the KV cache
    new_ids = cache_pos + d  # its id on all three axes
    image = (ids[0] == config.image_token_id).nonzero().flatten()
    first, last = int(image[0]), int(image[-1])

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4.0), dpi=90, gridspec_kw={"width_ratios": [1.6, 1]})
    for a, (name, color, style) in enumerate(AXES):
        ax.plot(range(L), pos[a, 0].numpy(), style, color=color, linewidth=1.2, label=f"{name} id (prompt)")
    ax.plot(cache_pos.numpy(), new_ids.numpy(), "o", color="black", markersize=3,
            label="decoded tokens: cache position + delta")
    ax.plot([0, L + new_tokens], [0, L + new_tokens], color="gray", linewidth=0.8, linestyle="-.",
            label="id = cache position (no images)")
    ax.axvspan(first, last, color="#f0a030", alpha=0.15)
    ax.text((first + last) / 2, L * 0.45, f"{last - first + 1} image tokens\n(merged grid {int(grid[0, 1]) // 2} x "
            f"{int(grid[0, 2]) // 2})", ha="center", fontsize=8)
    ax.annotate("", xy=(L, L + d), xytext=(L, L), arrowprops={"arrowstyle": "<->", "color": "black"})
    ax.text(L + 6, L + d / 2, f"delta\n= {d}", fontsize=9, va="center")
    ax.set_xlabel("cache position (index in the sequence)")
    ax.set_ylabel("position id")
    span = int(pos[:, 0, first:last + 1].max()) - int(pos[:, 0, first:last + 1].min()) + 1
    ax.set_title(f"{last - first + 1} image tokens advance the ids by only {span}", fontsize=9)
    ax.set_xlim(0, L + new_tokens + 40)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)

    lo = last - 6
    for a, (name, color, style) in enumerate(AXES):
        zoom.plot(range(lo, L), pos[a, 0, lo:].numpy(), style + "o", color=color, markersize=3, label=name)
    zoom.plot(cache_pos.numpy(), new_ids.numpy(), "o", color="black", markersize=4)
    zoom.axvline(L - 0.5, color="gray", linewidth=0.8)
    zoom.text(L + 0.5, float(pos[:, 0, lo:].min()), "prefill | decode", fontsize=8, color="gray")
    zoom.set_xlabel("cache position")
    zoom.set_title(f"end of the image, the text after it, {new_tokens} decoded tokens:\n"
                   "t = h = w, one step per token", fontsize=9)
    zoom.legend(fontsize=7, loc="upper left")
    zoom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


FIGURES = {"09_decoding_positions": decoding_positions}
