"""Packed weights: the fast path for bfloat16 on the CPU (the chapters teach plain `F.linear`).

Decoding one token multiplies ONE row of activations by every weight matrix of the decoder: the
time goes into reading about 6 GB of bfloat16 weights (3B), so the speed limit is the memory's read
bandwidth (the "roof"). `F.linear` on the CPU hands each product to oneDNN (PyTorch's CPU math
library), whose kernel copies each block of the plain (out, in) matrix into the layout the bfloat16
instruction reads (pairs of neighbouring inputs side by side, 16 outputs at a time) as it goes, on
EVERY call; for one row that copying is a large share of the work, and one bfloat16 row reads its
weights at about half the roof (chapter 12, section 2.11, measures it on your machine). Rearranging
once, at load, and keeping only the rearranged ("packed") copy removes that work:

    packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)      # once: (out, in) -> oneDNN blocks
    y = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")   # every call

    pack_linears(model)    every nn.Linear of the model -> PackedLinear, and the head packed too;
                           returns one line saying what was packed, or why nothing was

Why it is safe to use, and where it stops:
- The packed tensor is opaque (a oneDNN handle, `is_mkldnn`): any other use of it (F.linear, .sum,
  state_dict's copy) raises instead of computing with scrambled numbers.
- These are private operators (their names start with `_`); a torch without them, a build without
  oneDNN, or a CPU oneDNN has no bfloat16 kernel for (one without AVX-512: the reorder raises) keeps
  F.linear. Checked with torch 2.13.0.
- Only where the result equals F.linear's BIT FOR BIT: `pack_linears` compares the two on the
  model's own weights (one row and several rows, each distinct shape) before it keeps anything.
  On the CPU checked (AMD with avx512_bf16; appendix A.9) bfloat16 passes; float32 does not (its
  packed kernel adds in another order), so float32 models keep F.linear.
- Inference only: a packed model has no `weight` to train, save or adapt; load it again unpacked
  for that. bfloat16 storage (storage.py, float32 compute) keeps F.linear: its weights are upcast
  one module at a time, and a packed copy would have to be rebuilt on every call.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

ENV = "QVL_PACK"  # "0" keeps F.linear everywhere (to compare, or to rule the fast path out)
PROBE_ROWS = (1, 7, 64)  # one decode row, a short prompt, a prefill-sized block


def switched_off() -> bool:
    """$QVL_PACK: "0" keeps F.linear, "1" or unset packs where exact; anything else is an error."""
    value = os.environ.get(ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"${ENV}={value!r}: set it to 0 (keep F.linear everywhere) or 1 (pack where exact), "
                         "or unset it")
    return value == "0"


def head_copy_bytes(config, dtype: torch.dtype, device: str = "cpu", storage: str | None = None) -> int:
    """The bytes packing will add for this model (the tied head's packed copy of the table), for the
    memory estimate made before the load; 0 where nothing would be packed."""
    from .config import Qwen25VLConfig

    text = config.text_config  # refusal first: it also reads $QVL_PACK, which must be valid for every model
    if refusal({str(dtype).removeprefix("torch.")}, {torch.device(device).type}, storage) is not None:
        return 0
    if not isinstance(config, Qwen25VLConfig) or not text.tie_word_embeddings:
        return 0  # Qwen2.5-VL loads only are packed (Qwen3-VL's config is another class); untied: no copy
    return text.vocab_size * text.hidden_size * 2


def packing_available() -> tuple[bool, str]:
    """Does this torch have oneDNN's packed linear? -> (answer, why)."""
    ops = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available():
        return False, "this torch is built without oneDNN"
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False, f"torch {torch.__version__} has no torch.ops.mkldnn._reorder_linear_weight"
    return True, "oneDNN's packed linear is available"


class PackedLinear(nn.Module):
    """y = x W^T + b with W kept only in oneDNN's packed layout (see the module's docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # a buffer, so that state_dict holds it and saving a packed model fails instead of leaving it out
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1))  # (out, in), opaque
        self.bias = None if bias is None else bias.detach()  # (out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def equals_f_linear(packed: PackedLinear, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Is `packed`'s result bit-identical to F.linear's on random rows (PROBE_ROWS rows each)?"""
    generator = torch.Generator().manual_seed(0)
    for rows in PROBE_ROWS:
        x = torch.randn(rows, weight.shape[1], generator=generator).to(weight.dtype)  # (rows, in)
        if not torch.equal(packed(x), F.linear(x, weight, bias)):
            return False
    return True


@torch.no_grad()
def pack_linears(model: nn.Module, release=None) -> str:
    """Replace every nn.Linear of `model` (and a tied head) by a PackedLinear, in place, where that is
    exact; -> one line saying what was done or why not. Every distinct shape is compared with F.linear
    BEFORE anything is replaced, so a model is packed whole or not at all. release(weight), if given,
    is called with each plain weight once its packed copy exists (the loader drops the file's pages)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    reason = why_not(model, linears)
    if reason:
        return f"weights not packed: {reason}; F.linear everywhere"
    tied = model.config.text_config.tie_word_embeddings
    table = model.language.embed_tokens.weight  # (vocab, D): a tied head multiplies by it
    shapes = {(*m.weight.shape, m.bias is not None): (name, m.weight, m.bias) for name, m in reversed(linears)}
    if tied:
        shapes[(*table.shape, False)] = ("the tied head", table, None)
    probes = {}  # name -> its packed copy, kept once it has passed
    for name, weight, bias in shapes.values():
        try:
            probes[name] = probe = PackedLinear(weight, bias)
        except RuntimeError as err:  # e.g. a CPU without AVX-512 has no bfloat16 packed kernel
            return f"weights not packed: oneDNN says {str(err).splitlines()[0]}; F.linear everywhere"
        if not equals_f_linear(probe, weight, bias):
            return (f"weights not packed: oneDNN's packed result differs from F.linear's for {name} "
                    f"{tuple(weight.shape)} on this CPU; F.linear everywhere")
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        packed = probes.pop(name) if name in probes else PackedLinear(linear.weight, linear.bias)
        setattr(model.get_submodule(parent), child, packed)
        if release is not None:
            release(linear.weight)
    head = ""
    if tied:  # the look-up still needs the plain table: the packed head is a second copy of it
        model.packed_head = probes.pop("the tied head")
        head = f" and the tied head (a packed copy of the embedding table, {table.nbytes / 1e9:.2f} GB)"
    return (f"weights packed for oneDNN (packed.py): {len(linears)} Linear layers{head}; results bit-identical "
            f"to F.linear on all {len(shapes)} shapes, checked on {'/'.join(map(str, PROBE_ROWS))} random rows")


def why_not(model: nn.Module, linears) -> str | None:
    """The reason `model` cannot be packed, or None."""
    return refusal({str(m.weight.dtype).removeprefix("torch.") for _, m in linears},
                   {m.weight.device.type for _, m in linears}, getattr(model, "storage", None), model.training)


def refusal(dtypes: set[str], devices: set[str], storage: str | None, training: bool = False) -> str | None:
    """The reason weights of these dtypes on these devices are not packed, or None. The one rule, for
    pack_linears and for the memory estimate made before the load (head_copy_bytes)."""
    if switched_off():
        return f"${ENV}=0"
    ok, why = packing_available()
    if not ok:
        return why
    if storage:
        return "bfloat16 storage upcasts each module's weights on every call"
    if training:
        return "the model is in training mode; packing is for inference (call model.eval())"
    if devices != {"cpu"}:
        return f"weights on {', '.join(sorted(devices))}; the packed kernels are the CPU's"
    if dtypes != {"bfloat16"}:
        return (f"{', '.join(sorted(dtypes))} weights; only bfloat16 is packed, since float32's packed kernel adds "
                "in another order and its results would not equal F.linear's")
    return None
