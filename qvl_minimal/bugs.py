"""Planted bugs (chapter 13): realistic slips, each injected into a COPY of the library's model.

    model = tiny_model()                                  # the tiny preset, seeded random weights
    broken = plant(model, "vision rotary sign")           # a deep copy with one slip; `model` is untouched
    diverge(broken, model, debug_inputs(model.config)).first   # -> "vision block 0"

A bug never edits the library's code. Each one patches the copy in one of three small ways:

    swap     while one module of the copy runs, a function of a library module is replaced
             (the copy's forward is wrapped; the original is back as soon as that call returns)
    forward  one module of the copy gets its own forward (or method) with the slip in it
    config   one module of the copy gets a config with one field changed

`BUGS` are the bugs the chapter shows; each knows the first stage `diverge` names on the good input
and the component where it lives (one of `COMPONENTS`). Exercise 13.1's bugs are different:
`mystery_model(seed)` hands out only a broken model. No public name here says which slip a seed
draws, nor its stage or component; the checker (labs/ch13.py) keeps the answers. This keeps the
answer out of the notebook, not out of reach: the source of an installed package can be read.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from . import layers, model as model_module, text, vision
from .config import Qwen25VLConfig
from .model import Qwen25VL
from .reference import randomize_

COMPONENTS = {  # where a bug can live, in the order the data flows
    "patch embedding": "the Conv3d-as-Linear on the 1176-wide patch rows",
    "vision rotary": "the tower's 2D rotary embedding (angles, rotate_half)",
    "vision windows": "window_index, cu_window_seqlens, which blocks attend over the whole image",
    "vision attention": "qkv, the attention itself, proj",
    "merger": "ln_q, the 2 x 2 grouping, the merger's MLP",
    "token order": "the un-permutation after the merger, the splice into the prompt",
    "position ids": "get_rope_index: the (t, h, w) ids",
    "text rotary": "M-RoPE: the cos/sin of the (t, h, w) ids, the sections",
    "text attention": "grouped-query attention: heads, mask",
    "text MLP": "the decoder's SwiGLU",
    "norm": "an RMSNorm",
    "head": "the logits",
}


@dataclass(frozen=True)
class Bug:
    name: str  # short id, the key in BUGS
    slip: str  # what the programmer wrote, in one line
    stage: str  # the first stage diverge names on debug_inputs(config, "good")
    component: str  # one of COMPONENTS
    inject: Callable[[Qwen25VL], None]  # patches a copy in place


# ----------------------------------------------------------------------------- how bugs get in
def _swap(instance: torch.nn.Module, library_module, name: str, replacement) -> None:
    """While `instance` runs, `library_module.name` is `replacement` (only this copy sees it)."""
    forward = instance.forward

    def patched(*args, **kwargs):
        original = getattr(library_module, name)
        setattr(library_module, name, replacement)
        try:
            return forward(*args, **kwargs)
        finally:
            setattr(library_module, name, original)

    instance.forward = patched


def _use_config(module: torch.nn.Module, **changes) -> None:
    module.config = replace(module.config, **changes)


class _Functional:
    """torch.nn.functional with scaled_dot_product_attention's is_causal forced to one value."""

    def __init__(self, causal: bool):
        self.causal = causal

    def __getattr__(self, name):
        return getattr(F, name)

    def scaled_dot_product_attention(self, q, k, v, attn_mask=None, is_causal=False, **kw):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=self.causal, **kw)


# ----------------------------------------------------------------------------- the slips
def _rotate_half_sign(x):  # (x1, x2) -> (x2, -x1): turns every pair the wrong way
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, -x1), dim=-1)


def _tiled(x, pattern, r):  # k.repeat(1, r, 1, 1): heads g0 g1 g0 g1 instead of g0 g0 g1 g1
    return x.repeat(1, r, 1, 1)


def _windows_assumed_full(grid_thw, config):  # a boundary every 64 patches, as if no window were cut short
    index, cu = _library["window_index"](grid_thw, config)
    full = (config.window_size // config.patch_size) ** 2  # patches in a full window: 64
    return index, torch.unique(torch.cat([torch.arange(0, int(cu[-1]), full), cu[-1:]]))


def _positions_without_plus_one(cfg, input_ids, *args, **kwargs):  # start = block.max(), not + 1
    position_ids, deltas = _library["get_rope_index"](cfg, input_ids, *args, **kwargs)
    visual = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)  # (B, L)
    block_ends = F.pad(visual[:, :-1] & ~visual[:, 1:], (1, 0)).long().cumsum(-1)  # (B, L) blocks passed
    return position_ids - block_ends.to(position_ids.device), deltas - block_ends[:, -1:]


def _positions_rows_cols_swapped(cfg, input_ids, *args, **kwargs):  # (t, w, h) instead of (t, h, w)
    position_ids, deltas = _library["get_rope_index"](cfg, input_ids, *args, **kwargs)
    return position_ids[[0, 2, 1]], deltas  # text rows have h == w: only visual tokens change


_library = {"window_index": vision.window_index, "get_rope_index": model_module.get_rope_index}


def _vision_rotary_sign(m):
    for block in m.visual.blocks:
        _swap(block.attn, layers, "rotate_half", _rotate_half_sign)


def _merger_order(m):  # the tower returns x, not x[argsort(index)]: tokens stay in window order
    forward, cfg = m.visual.forward, m.visual.config

    def window_order(pixel_values, grid_thw):
        return forward(pixel_values, grid_thw)[vision.window_index(grid_thw, cfg)[0]]

    m.visual.forward = window_order


def _kv_heads_tiled(m):
    _swap(m.model, text, "repeat", _tiled)


def _mrope_sections_reversed(m):
    _use_config(m.model, mrope_section=tuple(reversed(m.model.config.mrope_section)))


def _no_plus_one(m):
    _swap(m, model_module, "get_rope_index", _positions_without_plus_one)


def _full_attention_ignored(m):
    _use_config(m.visual, fullatt_block_indexes=())


def _edge_windows_full(m):
    _swap(m.visual, vision, "window_index", _windows_assumed_full)


BUGS = {bug.name: bug for bug in [
    Bug("vision rotary sign", "rotate_half returns cat(x2, -x1) instead of cat(-x2, x1)",
        "vision block 0", "vision rotary", _vision_rotary_sign),
    Bug("merger order", "the tower returns the merged tokens without [argsort(index)]",
        "spliced embeddings", "token order", _merger_order),
    Bug("kv heads tiled", "k.repeat(1, r, 1, 1) instead of repeat_interleave(k, r, dim=1)",
        "decoder layer 0", "text attention", _kv_heads_tiled),
    Bug("mrope sections reversed", "mrope_section (16, 24, 24) read as (24, 24, 16)",
        "decoder layer 0", "text rotary", _mrope_sections_reversed),
    Bug("no +1 after an image", "the text after a visual block starts at its max id, not max + 1",
        "position ids", "position ids", _no_plus_one),
    Bug("full attention ignored", "every block uses the windows (fullatt_block_indexes never read)",
        "vision block 1", "vision windows", _full_attention_ignored),
    Bug("edge windows assumed full", "cu_window_seqlens every 64 patches, as if every window were full",
        "vision block 0", "vision windows", _edge_windows_full),
]}


# ----------------------------------------------------------------------------- exercise 13.1's slips
def _patch_rows_misread(m):  # the 1176-wide row read as (t, c, h, w): it is (c, t, h, w)
    embed = m.visual.patch_embed
    embed.forward = lambda x: F.linear(x, embed.proj.weight.transpose(1, 2).flatten(1))


def _merger_strided(m):  # "(k u) d": rows u, u + N/4, ... grouped instead of 4 consecutive rows
    merger = m.visual.merger
    merger.forward = lambda x: merger.mlp(rearrange(merger.ln_q(x), "(k u) d -> u (k d)", k=merger.unit))


def _vision_causal(m):
    for block in m.visual.blocks:
        _swap(block.attn, vision, "F", _Functional(causal=True))


def _gate_up_swapped(m):
    for layer in m.model.layers:
        mlp = layer.mlp
        mlp.forward = lambda x, mlp=mlp: mlp.down_proj(F.silu(mlp.up_proj(x)) * mlp.gate_proj(x))


def _rows_cols_swapped(m):
    _swap(m, model_module, "get_rope_index", _positions_rows_cols_swapped)


def _head_tied(m):
    m.head = lambda h: F.linear(h, m.model.embed_tokens.weight)


def _final_norm_skipped(m):
    m.model.norm.forward = lambda h: h


_MYSTERY_SLIPS = (  # exercise 13.1: drawn by seed; stage and component live with the checker only
    _patch_rows_misread, _merger_strided, _vision_causal, _gate_up_swapped, _rows_cols_swapped, _head_tied,
    _final_norm_skipped,
)


# ----------------------------------------------------------------------------- models and inputs
def tiny_model(seed: int = 0, std: float = 0.1) -> Qwen25VL:
    """The tiny preset (4 vision blocks, 2 decoder layers) with seeded random weights, eval mode.

    std 0.1, not the usual 0.02: with small random weights every attention is nearly uniform, so a
    wrong position (rotary, windows, position ids) changes almost nothing and hides.
    """
    return randomize_(Qwen25VL(Qwen25VLConfig.preset("tiny")), seed, std=std).eval()


def plant(model: Qwen25VL, bug: Bug | str | Callable[[Qwen25VL], None]) -> Qwen25VL:
    """A deep copy of `model` with one bug planted (a name of BUGS, a Bug, or an inject function);
    `model` is untouched."""
    inject = BUGS[bug].inject if isinstance(bug, str) else getattr(bug, "inject", bug)
    broken = copy.deepcopy(model)
    inject(broken)
    return broken


def mystery_model(seed: int) -> Qwen25VL:
    """tiny_model() with one slip drawn by `seed` from a set none of BUGS is in (exercise 13.1). Find it."""
    return plant(tiny_model(), _mystery_slip(seed))


def _mystery_slip(seed: int) -> Callable[[Qwen25VL], None]:
    """The inject function `seed` draws: for the checker and the tests, not for the student's notebook."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"the mystery seed is an int, got {seed!r}")
    return _MYSTERY_SLIPS[random.Random(seed).randrange(len(_MYSTERY_SLIPS))]


PROMPTS = {  # name -> parts: an int = that many text tokens; (kind, (t, h, w) in patches)
    "text only": (12,),
    "square image": (5, ("image", (1, 16, 16)), 7),  # 224 x 224 px: 2 x 2 full windows
    "one window": (5, ("image", (1, 8, 6)), 4),  # 112 x 84 px: 4 x 3 merge units, a single window
    "good": (5, ("image", (1, 10, 14)), 4, ("image", (1, 6, 4)), 3, ("video", (2, 6, 10)), 6),
}


def debug_inputs(config: Qwen25VLConfig, name: str | tuple = "good", seed: int = 0) -> dict:
    """Forward keyword arguments for one prompt (a name of PROMPTS, or parts written the same way),
    with random pixels and text ids.

    "good" has an odd-sized image (10 x 14 patches: windows cut short at the edges), a second small
    image and a 2-step video at 1 s per step, with text around each: every mechanism is exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    ids, pixels = [], {"image": ([], []), "video": ([], [])}
    for part in PROMPTS[name] if isinstance(name, str) else name:
        if isinstance(part, int):
            ids += torch.randint(0, 151_000, (part,), generator=gen).tolist()  # no special ids
            continue
        kind, (t, h, w) = part
        pad = config.image_token_id if kind == "image" else config.video_token_id
        ids += [config.vision_start_token_id] + [pad] * (t * h * w // 4) + [config.vision_end_token_id]
        pixels[kind][0].append(torch.randn(t * h * w, config.vision_config.patch_dim, generator=gen))
        pixels[kind][1].append([t, h, w])
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    for kind, key in (("image", ""), ("video", "_videos")):
        if pixels[kind][0]:
            inputs[f"pixel_values{key}"] = torch.cat(pixels[kind][0])  # (patches, 1176)
            inputs[f"{kind}_grid_thw"] = torch.tensor(pixels[kind][1])  # (n, 3)
    if pixels["video"][0]:
        inputs["second_per_grid_ts"] = torch.ones(len(pixels["video"][0]))  # 2 fps: 1 s per time step
    return inputs
