"""Chapter 11's picture: the relative error of every stage, ours against the reference.

The stages are recorded by `qvl_minimal.stages`; `error_profile` draws them on a log scale,
`standin_errors` recomputes chapter 11's figure: the same stand-in checkpoint (every width of 3B,
2 vision blocks, 2 decoder layers), photo and question, in float32 whatever the machine.
"""

from __future__ import annotations

import re

import matplotlib.pyplot as plt


COLORS = {"vision": "#3b75af", "decoder": "#e08a2c", "head": "#7a4ea3"}


def error_profile(rels: dict[str, float], tol: float = 1e-5, title: str = ""):
    """Relative error (max |ours - ref| / max |ref|) of each stage, in order, on a log scale.

    Stages whose name starts with "vision", "patch" or "merger" are blue, the language model's
    orange, the logits purple; exact zeros are drawn at the bottom edge with a hollow marker.
    """
    names, values = list(rels), [float(v) for v in rels.values()]
    floor = min([v for v in values if v > 0] + [tol]) / 10
    kind = ["vision" if n.startswith(("patch", "vision", "merger", "visual")) else
            "head" if n.startswith("logits") else "decoder" for n in names]
    fig, ax = plt.subplots(figsize=(8.0, 3.8), dpi=90)
    for i, (v, k) in enumerate(zip(values, kind)):
        ax.scatter(i, max(v, floor), s=36, color=COLORS[k] if v > 0 else "white", edgecolors=COLORS[k], zorder=3)
    ax.plot(range(len(values)), [max(v, floor) for v in values], color="#999999", lw=0.8, zorder=2)
    ax.axhline(tol, color="#c03030", ls="--", lw=1)
    ax.text(len(names) - 0.5, tol * 1.3, f"tolerance {tol:.0e}", color="#c03030", ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, max(tol, *values) * 8)
    crowded = len(names) > 30  # real depth (32 + 36 stages): label blocks and layers 4, 8, ... only
    labels = ["" if crowded and (m := re.fullmatch(r"(vision block|decoder layer) (\d+)", n)) and (int(m[2]) % 4 or int(m[2]) == 0) else n
              for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=7 if crowded else 8)
    ax.set_ylabel("max |ours - ref| / max |ref|")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c) for c in COLORS.values()]
    ax.legend(handles, ["vision tower", "language model", "logits"], fontsize=8, loc="upper left", frameon=False)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="major", color="#e6e6e6", lw=0.6)
    fig.tight_layout()
    return fig


def standin_errors():
    """The figure of chapter 11, recomputed on its stand-in checkpoint, in float32 (about 20 s on a CPU)."""
    from ..preprocess import preprocess_image
    from ..stages import run_both, stage_rels
    from ..reference import reference_processor, reference_sharing_weights
    from ..standin import standin_checkpoint
    from ..samples import sample_photo
    from ..tokenizer import build_chat_prompt, encode_chat, load_tokenizer
    from ..weights import load_pretrained

    folder = standin_checkpoint("full")  # chapter 11's stand-in
    model = load_pretrained(folder, dtype="float32", progress=False)  # float32: the figure is the same on every CPU
    ref = reference_sharing_weights(model)
    photo, question = sample_photo(), "Describe this image."
    pixel_values, grid = preprocess_image(photo)  # (1512, 1176), as in chapter 11
    ids = encode_chat(load_tokenizer(folder), question, image_grid_thw=grid)
    theirs = reference_processor()(text=[build_chat_prompt(question, 1)], images=[photo], return_tensors="pt")
    ours, ref_out = run_both(model, ref, dict(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid),
                             dict(theirs), max_new_tokens=1)
    return error_profile(stage_rels(ours, ref_out), title="stand-in checkpoint, float32: relative error per stage")


FIGURES = {"11_stage_errors": standin_errors}
