"""bfloat16 storage: weights kept in bfloat16 (half the memory), every product computed in float32.

A CPU without native bfloat16 multiplies bfloat16 100-1000x slower than float32 (dtypes.py), yet
the 3B model in float32 needs 15 GB, which a 16 GB laptop cannot spare. The way out: keep each
weight matrix in bfloat16 (7.5 GB in all) and upcast it to float32 only while its module runs.

    store_in_bfloat16(model)      matrices -> bfloat16 in place; hooks upcast them around each forward
    storage_dtype(name, p, ...)   the dtype a parameter is kept in (the loader asks it tensor by tensor)
    choose_storage(config, ...)   "bfloat16" when float32 would not fit in the memory available

Which parameters: every matrix (ndim >= 2) except the patch embedding's (6 MB; it stays float32 so
that the pixels, which take its dtype, stay float32 too). Norm weights and biases stay float32
(a few MB). Every module that owns a stored matrix gets two hooks:

    forward pre-hook    its bfloat16 matrices replaced by float32 copies (bfloat16 -> float32 is exact)
    forward hook        the bfloat16 matrices put back; the float32 copies freed

so at most one module's weights exist in float32 at a time (the largest: the 3B head, 1.2 GB).
The embedding table is looked up in bfloat16 (exact) and its rows cast to float32; the head, which
multiplies by that same table, upcasts it inside `Qwen25VL.head`. The result equals, bit for bit,
the float32 model run on the bfloat16-rounded weights: the same float32 operations on the same values.
"""

from __future__ import annotations

import os

import psutil
import torch
from torch import nn

from .config import Qwen25VLConfig
from .params import count_parameters

ENV = "QVL_STORAGE"
KEPT_IN_FLOAT32 = ("visual.patch_embed.",)  # its dtype is the dtype the pixels are given in


def storage_dtype(name: str, shape, dtype: torch.dtype, storage: str | None) -> torch.dtype:
    """The dtype to keep parameter `name` (of `shape`) in, for compute dtype `dtype` and `storage`."""
    if storage == "bfloat16" and len(shape) >= 2 and not name.startswith(KEPT_IN_FLOAT32):
        return torch.bfloat16
    return dtype


def _upcast(module: nn.Module, args) -> None:
    module._stored = {n: p for n, p in module._parameters.items() if p is not None and p.dtype == torch.bfloat16}
    for n, p in module._stored.items():
        module._parameters[n] = nn.Parameter(p.float(), requires_grad=False)  # exact; freed after the forward


def _restore(module: nn.Module, args, output):
    module._parameters.update(module._stored)
    module._stored = {}
    return output


def _float_rows(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output.float()  # rows looked up in bfloat16 (exact), handed on in float32


@torch.no_grad()
def store_in_bfloat16(model: nn.Module) -> nn.Module:
    """Keep `model`'s matrices in bfloat16 and compute in float32 (see the module's docstring). In place."""
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        stored = False
        for n, p in module.named_parameters(recurse=False):
            if storage_dtype(prefix + n, p.shape, torch.float32, "bfloat16") == torch.bfloat16:
                module._parameters[n] = nn.Parameter(p.to(torch.bfloat16), requires_grad=False)
                stored = True
        if not stored or getattr(module, "_storage_hooks", None):
            continue
        if isinstance(module, nn.Embedding):
            module._storage_hooks = [module.register_forward_hook(_float_rows)]
        else:
            module._storage_hooks = [module.register_forward_pre_hook(_upcast), module.register_forward_hook(_restore)]
    model.storage = "bfloat16"
    return model


def choose_storage(config: Qwen25VLConfig, dtype: torch.dtype, storage: str | None = None,
                   available: int | None = None) -> tuple[str | None, str]:
    """"bfloat16" (weights in bfloat16, computed in float32) or None (weights in `dtype`), and why.

    1. an explicit `storage` wins ("bfloat16", or "float32"/"none" for plain weights);
    2. else the environment variable QVL_STORAGE;
    3. else bfloat16 storage when computing in float32 and the float32 weights would take more
       than 80% of the memory available now (psutil), leaving too little for the rest.
    """
    choice = storage or os.environ.get(ENV)
    if choice is not None:
        if choice not in ("bfloat16", "float32", "none"):
            raise ValueError(f"storage {choice!r}: choose 'bfloat16' (weights in bfloat16, computed in float32) "
                             "or 'float32' / 'none' (weights kept in the compute dtype)")
        how = "as asked" if storage else f"from ${ENV}"
        return ("bfloat16", how) if choice == "bfloat16" and dtype == torch.float32 else (None, how)
    if dtype != torch.float32:
        return None, "weights kept in the compute dtype"
    need = 4 * count_parameters(config)["total"]
    available = psutil.virtual_memory().available if available is None else available
    if need > 0.8 * available:
        return "bfloat16", (f"float32 weights need {need / 1e9:.1f} GB, {available / 1e9:.1f} GB of memory is "
                            f"available: weights kept in bfloat16 ({need / 2e9:.1f} GB), computed in float32")
    return None, f"float32 weights fit ({need / 1e9:.1f} GB of {available / 1e9:.1f} GB available)"
