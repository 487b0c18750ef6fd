"""Chapter 08's exercises: grouped-query attention and the decoder layer, against the library.

    08.1  attention_mine(x, W, cos, sin, mask, tc) -> (B, L, D)      q/k/v with bias, rotary, GQA, o_proj
    08.2  decoder_layer_mine(h, W, cos, sin, mask, tc) -> (B, L, D)  pre-norm attention + SwiGLU, residuals
    08.3  quiz: rows that hold NaN after one and two layers when padding queries see nothing
    08.4  mha_weights_mine(W, tc) -> W with k/v projections for one KV head per query head

W holds one layer's 12 tensors under the checkpoint's names without the `model.layers.N.` prefix
(`self_attn.q_proj.weight`, ..., `post_attention_layernorm.weight`); mask is (B, 1, L, L) booleans,
True = may attend. Every answer is compared with the library's `Attention` / `DecoderLayer` given the
same tensors, on several head layouts (16 over 2 as in 3B, plain multi-head, one KV head, 6 over 2)
and on batches with left padding.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..positions import get_rope_index
from ..text import DecoderLayer, attention_mask_4d, mrope_cos_sin
from .core import assert_answer, assert_tensor_matches, exercise

# (query heads, KV heads, head_dim, mrope_section, batch, length, padding of the last row, what it tests)
_LAYOUTS = [
    (16, 2, 8, (2, 1, 1), 2, 12, 4, "16 query heads over 2 KV heads (3B's grouping)"),
    (4, 4, 16, (2, 3, 3), 1, 9, 0, "4 over 4: plain multi-head attention"),
    (8, 1, 8, (2, 1, 1), 2, 7, 3, "8 over 1: multi-query attention"),
    (6, 2, 16, (2, 3, 3), 3, 10, 5, "6 over 2: groups of 3"),
]


def _case(heads: int, kv_heads: int, head_dim: int, section, batch: int, length: int, pad: int):
    """A seeded layer (library DecoderLayer), its weights W, inputs, cos/sin and the padding mask."""
    config = Qwen25VLConfig.preset("tiny").replace(text_config={
        "hidden_size": heads * head_dim, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": 96, "mrope_section": section})
    tc = config.text_config
    layer = DecoderLayer(tc, layer_idx=0).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():  # random biases and norm weights too, so a missing one shows
            p.copy_(1 + 0.5 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    W = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    x = torch.randn(batch, length, tc.hidden_size)  # (B, L, D)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[-1, :pad] = 0  # the last row: left padding
    ids = torch.randint(0, 1000, (batch, length))
    position_ids, _ = get_rope_index(config, ids, attention_mask=attention_mask)  # (3, B, L)
    cos, sin = mrope_cos_sin(position_ids, tc)  # (B, L, hd) each
    mask = attention_mask_4d(attention_mask, 0, length)
    if mask is None or mask.ndim == 2:  # no padding: the library means plain causal; give the student booleans
        mask = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length)
    return tc, layer, W, x, cos, sin, mask, attention_mask


def _real_rows(out: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return out[attention_mask.bool()]  # (real tokens, D): padded positions hold garbage in every implementation


def _agree_on_layouts(what: str, compute, atol: float) -> None:
    """compute(tc, layer, W, x, cos, sin, mask) -> (expected, mine), compared on every layout's real tokens."""
    for heads, kv_heads, hd, section, batch, length, pad, layout in _LAYOUTS:
        tc, layer, W, x, cos, sin, mask, attention_mask = _case(heads, kv_heads, hd, section, batch, length, pad)
        with torch.no_grad():
            expected, mine = compute(tc, layer, W, x, cos, sin, mask)  # (B, L, D) each
        where = f"{layout}, batch {batch} x {length} tokens" + (f", {pad} padding tokens in the last row" if pad else "")
        if isinstance(mine, torch.Tensor) and mine.shape == expected.shape:
            mine = _real_rows(mine, attention_mask)
        assert_tensor_matches(mine, _real_rows(expected, attention_mask), f"{what} [{where}] (real tokens)",
                              atol=atol, rtol=1e-4)


@exercise("08.1", "grouped-query attention")
def _(attention_mine) -> str:
    def compute(tc, layer, W, x, cos, sin, mask):
        xn = layer.input_layernorm(x)
        return layer.self_attn(xn, cos, sin, mask), attention_mine(xn.clone(), W, cos, sin, mask, tc)

    _agree_on_layouts("attention", compute, atol=1e-5)
    return f"{len(_LAYOUTS)} head layouts (16/2, 4/4, 8/1, 6/2) incl. left padding, within 1e-5"


@exercise("08.2", "the decoder layer")
def _(decoder_layer_mine) -> str:
    def compute(tc, layer, W, x, cos, sin, mask):
        x = x * 3 + 1  # a residual stream far from unit scale: the norms must matter
        return layer(x, cos, sin, mask), decoder_layer_mine(x.clone(), W, cos, sin, mask, tc)

    _agree_on_layouts("decoder layer", compute, atol=1e-4)
    return f"{len(_LAYOUTS)} head layouts incl. left padding, within 1e-4"


def _nan_rows() -> tuple[int, int]:
    """Rows of batch row 1 holding NaN after one and two layers of attention without the diagonal."""
    # the chapter's written-out attention (explicit softmax; a fused kernel may hide the NaN), two layers
    B, L, pad, hd = 2, 16, 5, 8
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, :pad] = False  # batch row 1: 5 padding tokens on the left
    no_diag = torch.ones(L, L, dtype=torch.bool).tril() & keep[:, None, :]  # (B, L, L): no diagonal for padding

    def attend(h):  # (B, L, hd) -> (B, L, hd): one head, q = k = v = h, plus the residual
        weights = (h @ h.transpose(-1, -2) / hd ** 0.5).masked_fill(~no_diag, float("-inf")).softmax(-1)
        return h + weights @ h

    once = attend(torch.randn(B, L, hd))
    twice = attend(once)
    return tuple(int(torch.isnan(h[1]).any(-1).sum()) for h in (once, twice))


@exercise("08.3", "NaN without the diagonal", expected=_nan_rows)
def _(nan_rows) -> str:
    expected = _nan_rows()
    if not (isinstance(nan_rows, (tuple, list)) and len(nan_rows) == 2):
        raise AssertionError("answer with a pair: (rows with NaN after one layer, after two layers)")
    assert_answer(tuple(int(n) for n in nan_rows), expected, "(NaN rows of batch row 1 after one layer, after two)",
                  hint="softmax over a row that is all -inf is 0/0; then 0 x NaN in the next layer's weights @ v")
    return "both counts right"


@exercise("08.4", "multi-head weights from GQA weights")
def _(mha_weights_mine) -> str:
    for heads, kv_heads, hd, section, batch, length, pad, what in _LAYOUTS:
        tc, layer, W, x, cos, sin, mask, attention_mask = _case(heads, kv_heads, hd, section, batch, length, pad)

        mha_config = Qwen25VLConfig.preset("tiny").replace(text_config={
            "hidden_size": tc.hidden_size, "num_attention_heads": heads, "num_key_value_heads": heads,
            "intermediate_size": tc.intermediate_size, "mrope_section": section})
        W_mha = mha_weights_mine({k: v.clone() for k, v in W.items()}, tc)
        for name in ("k_proj", "v_proj"):
            for kind, shape in (("weight", (heads * hd, tc.hidden_size)), ("bias", (heads * hd,))):
                got = W_mha.get(f"self_attn.{name}.{kind}")
                if got is None or tuple(got.shape) != shape:
                    raise AssertionError(f"[{what}] self_attn.{name}.{kind}: shape "
                                         f"{None if got is None else tuple(got.shape)}, expected {shape}")
        mha = DecoderLayer(mha_config.text_config, layer_idx=0).eval()
        mha.load_state_dict(W_mha, strict=True)
        with torch.no_grad():
            xn = layer.input_layernorm(x)
            got, want = mha.self_attn(xn, cos, sin, mask), layer.self_attn(xn, cos, sin, mask)
        assert_tensor_matches(_real_rows(got, attention_mask), _real_rows(want, attention_mask),
                              f"multi-head attention with your weights vs GQA [{what}] (real tokens)", atol=1e-5, rtol=1e-4)
    return f"{len(_LAYOUTS)} head layouts: the multi-head layer computes what the GQA layer computes"
