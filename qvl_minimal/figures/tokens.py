"""Figures of tokens and splicing (chapter 06): a real prompt's token sequence, coloured by kind.

The ids come from the library's tokenizer (`load_tokenizer`, `encode_chat`) and the grid from
`preprocess_image` on the sample photo.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from ..preprocess import preprocess_image
from ..samples import sample_photo
from ..tokenizer import encode_chat, load_tokenizer

KIND_COLORS = {  # kind -> colour
    "text": "#9ecae1",
    "chat marker": "#bdbdbd",
    "vision marker": "#fd8d3c",
    "image pad": "#74c476",
    "video pad": "#c994c7",
}
QUESTION = "What is this person wearing?"


def token_kind(token_id: int, tok) -> str:
    """text / chat marker (<|im_start|>, <|im_end|>, <|endoftext|>) / vision marker / image or video pad."""
    if token_id == tok.image_pad_id:
        return "image pad"
    if token_id == tok.video_pad_id:
        return "video pad"
    if token_id in (tok.vision_start_id, tok.vision_end_id):
        return "vision marker"
    return "chat marker" if token_id in tok.special_tokens.values() else "text"


def _label(token_id: int, tok) -> str:
    piece = tok.decode([token_id])
    if token_id in tok.special_tokens.values():
        return piece.strip("<|>").replace("_", "\n")  # im_start -> im / start on two lines
    return piece.replace(" ", "\u2423").replace("\n", "\u21b5")  # visible space and newline


def prompt_tokens(question: str = QUESTION, width: int = 18, tokenizer=None):
    """Figure 6.1: the tokens of a chat prompt with the sample photo, in rows of `width`, coloured
    by kind, and the photo with its merged-token grid (one pad per 28 x 28-pixel cell)."""
    tok = tokenizer or load_tokenizer()
    photo = sample_photo()
    _, grid = preprocess_image(photo)  # (1, 3): [[1, 42, 36]]
    ids = encode_chat(tok, question, image_grid_thw=grid)[0].tolist()  # (L,)
    _, gh, gw = (int(v) for v in grid[0])
    first = ids.index(tok.image_pad_id)
    n_pads = ids.count(tok.image_pad_id)
    # Lay the 1-D sequence out in rows: the text before the image, the pads (gw/2 per row, so the
    # block shows the image's gh/2 x gw/2 token grid), the text after it.
    segments = [range(0, first), range(first, first + n_pads), range(first + n_pads, len(ids))]
    rows = [list(seg[i:i + width]) for seg in segments for i in range(0, len(seg), width)]

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 6.6), dpi=80, gridspec_kw={"width_ratios": [1.55, 1]})
    for r, row in enumerate(rows):
        for c, i in enumerate(row):
            kind = token_kind(ids[i], tok)
            ax.add_patch(Rectangle((c, r), 0.94, 0.9, color=KIND_COLORS[kind]))
            if kind != "image pad":
                ax.text(c + 0.47, r + 0.45, _label(ids[i], tok), ha="center", va="center", fontsize=6)
    pad0 = next((r, c) for r, row in enumerate(rows) for c, i in enumerate(row) if i == first)
    ax.add_patch(Rectangle(pad0[::-1], 0.94, 0.9, fill=False, edgecolor="red", linewidth=2))
    ax.set_xlim(0, width)
    ax.set_ylim(len(rows), 0)
    ax.set_yticks([r + 0.45 for r in range(len(rows))], [str(row[0]) for row in rows], fontsize=6)
    ax.set_ylabel("index of the row's first token")
    ax.set_xticks([])
    ax.text(width / 2, 1 + (gh // 2) / 2, f"{n_pads} x <|image_pad|>\n= {gh // 2} rows x {gw // 2} columns",
            ha="center", va="center", fontsize=11)
    ax.set_title(f"{len(ids)} tokens of the prompt (line breaks before and after the pads for reading)",
                 fontsize=9)
    kinds = sorted({token_kind(i, tok) for i in ids}, key=list(KIND_COLORS).index)
    counts = {k: sum(token_kind(i, tok) == k for i in ids) for k in kinds}
    ax.legend(handles=[Patch(color=KIND_COLORS[k], label=f"{k} ({counts[k]})") for k in kinds],
              loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=len(kinds), fontsize=8, frameon=False)

    height, width_px = gh * 14, gw * 14  # the resized photo the patches come from
    ax2.imshow(photo.resize((width_px, height)), extent=(0, width_px, height, 0))
    for y in range(0, height + 1, 28):
        ax2.axhline(y, color="white", linewidth=0.7, alpha=0.8)
    for x in range(0, width_px + 1, 28):
        ax2.axvline(x, color="white", linewidth=0.7, alpha=0.8)
    ax2.add_patch(Rectangle((0, 0), 28, 28, fill=False, edgecolor="red", linewidth=3))
    ax2.set_title(f"{width_px} x {height} px: {gh // 2} x {gw // 2} cells of 28 x 28 px\n"
                  f"pad k <- cell (k // {gw // 2}, k % {gw // 2}); red = pad 0 (index {first})", fontsize=9)
    ax2.set_xticks([])
    ax2.set_yticks([])
    fig.tight_layout()
    return fig


FIGURES = {"06_prompt_tokens": prompt_tokens}
