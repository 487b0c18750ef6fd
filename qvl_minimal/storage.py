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
    forward hook        the bfloat16 matrices put back (the copies stay in the buffer below
                        until the next module overwrites them); it runs even when the forward raises

A forward interrupted half-way must not leave a module computing with a stale copy: the copies
are views of the shared buffer, which the next module overwrites. Three guards, because an
ordinary exception and Ctrl-C (KeyboardInterrupt, which torch's `always_call` hooks do not see)
differ: each module keeps its bfloat16 matrices in `_bfloat16` for good, and the pre-hook always
copies from there, never from whatever `_parameters` holds now; the forward hook is registered
with `always_call=True`; and a pre-hook on the whole model puts every module's bfloat16 matrices
back before each forward (`restore`), so that nothing an interrupted forward left behind is seen.

so at most one module's weights exist in float32 at a time (the largest: the 3B head, 1.2 GB).
The float32 copies are written into ONE buffer, allocated once and reused by every module: a fresh
1.2 GB tensor per call would be handed back to the operating system when freed and page-faulted
in again on the next call, 4 KB at a time (measured with the whole 3B and AVX2: 4.6 s per decoded
token with fresh tensors; see chapter 12). The embedding table is looked up in bfloat16 (exact) and
its rows cast to float32; the head, which multiplies by that same table, upcasts it inside
`Qwen25VL.head` (`upcast`). The result equals, bit for bit, the float32 model run on the
bfloat16-rounded weights: the same float32 operations on the same values.
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


class Scratch:
    """One float32 buffer that every module's upcast writes into, in turn (see the module's docstring)."""

    def __init__(self, numel: int, device: torch.device | str = "cpu"):
        self.buffer = torch.empty(numel, dtype=torch.float32, device=device)  # (largest module's stored numel,)

    def float32(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Exact float32 copies of `tensors`, side by side in the buffer (valid until the next call)."""
        out, start = [], 0
        for t in tensors:
            view = self.buffer[start:start + t.numel()].view(t.shape)  # (t.shape): a slice, no allocation
            out.append(view.copy_(t))  # bfloat16 -> float32 is exact
            start += t.numel()
        return out


def upcast(model: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32: through the model's scratch buffer in bfloat16 storage, else `.float()`."""
    scratch = getattr(model, "_scratch", None)
    if tensor.dtype != torch.bfloat16 or scratch is None:
        return tensor.float()
    return scratch.float32([tensor])[0]


def _upcast(module: nn.Module, args) -> None:
    copies = module._scratch.float32(list(module._bfloat16.values()))  # always from the bfloat16 originals
    module._parameters.update({n: nn.Parameter(c, requires_grad=False) for n, c in zip(module._bfloat16, copies)})


def _restore(module: nn.Module, args, output):
    module._parameters.update(module._bfloat16)  # the float32 copies are used only inside this forward
    return output


def restore(model: nn.Module, args=None) -> None:
    """Put every stored module's bfloat16 matrices back (a no-op unless a forward was interrupted)."""
    for module in model._storage_modules:
        module._parameters.update(module._bfloat16)


def _float_rows(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output.float()  # rows looked up in bfloat16 (exact), handed on in float32


@torch.no_grad()
def store_in_bfloat16(model: nn.Module) -> nn.Module:
    """Keep `model`'s matrices in bfloat16 and compute in float32 (see the module's docstring). In place."""
    owners = {}  # module name -> its stored numel
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for n, p in module.named_parameters(recurse=False):
            if storage_dtype(prefix + n, p.shape, torch.float32, "bfloat16") == torch.bfloat16:
                module._parameters[n] = nn.Parameter(p.to(torch.bfloat16), requires_grad=False)
                owners[module_name] = owners.get(module_name, 0) + p.numel()
    nested = [(a, b) for a in owners for b in owners if a != b and b.startswith(f"{a}.")]
    if nested:  # the scratch buffer holds one module's copies at a time: a parent's would be overwritten
        raise ValueError(f"bfloat16 storage needs the matrices in leaf modules; {nested[0][0]} and {nested[0][1]} both hold some")
    if getattr(model, "_scratch", None) is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))  # the copies live beside the weights
        model._scratch = Scratch(max(owners.values(), default=0), device)
    model._storage_modules = []
    for module_name in owners:
        module = model.get_submodule(module_name)
        module._scratch = model._scratch
        module._bfloat16 = {n: p for n, p in module._parameters.items() if p is not None and p.dtype == torch.bfloat16}
        model._storage_modules.append(module)
        if getattr(module, "_storage_hooks", None):
            continue
        if isinstance(module, nn.Embedding):
            module._storage_hooks = [module.register_forward_hook(_float_rows)]
        else:
            module._storage_hooks = [module.register_forward_pre_hook(_upcast),
                                     module.register_forward_hook(_restore, always_call=True)]
    if not getattr(model, "_restore_hook", None):
        model._restore_hook = model.register_forward_pre_hook(restore)
    model.storage = "bfloat16"
    return model


def choose_storage(config: Qwen25VLConfig, dtype: torch.dtype, storage: str | None = None,
                   available: int | None = None, device: torch.device | str = "cpu") -> tuple[str | None, str]:
    """"bfloat16" (weights in bfloat16, computed in float32) or None (weights in `dtype`), and why.

    1. an explicit `storage` wins ("bfloat16", or "float32"/"none" for plain weights);
    2. else the environment variable QVL_STORAGE;
    3. else bfloat16 storage when computing in float32 and the float32 weights do not fit in the
       memory of the `device` that will hold them (`weights_fit`: more than 80% of what it has free).
    """
    choice = storage or os.environ.get(ENV)
    if choice is not None:
        if choice not in ("bfloat16", "float32", "none"):
            where = "storage" if storage else f"${ENV}"
            raise ValueError(f"{where} = {choice!r}: choose 'bfloat16' (weights in bfloat16, computed in float32) "
                             "or 'float32' / 'none' (weights kept in the compute dtype)")
        how = "as asked" if storage else f"from ${ENV}"
        return ("bfloat16", how) if choice == "bfloat16" and dtype == torch.float32 else (None, how)
    if dtype != torch.float32:
        return None, "weights kept in the compute dtype"
    fit, why = weights_fit(config, dtype, available, device)
    if not fit:
        return "bfloat16", f"{why}: weights kept in bfloat16 ({2 * count_parameters(config)['total'] / 1e9:.1f} GB), computed in float32"
    return None, why


def free_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free now on `device`: the host's available memory for the CPU, the GPU's own free memory
    for CUDA, None for the meta device (it holds shapes, no data)."""
    device = torch.device(device)
    if device.type == "meta":
        return None
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        raise ValueError(f"device {device}: the memory rule knows 'cpu', 'cuda' and 'meta'; "
                         "pass storage='bfloat16' or 'float32' to choose yourself")
    return psutil.virtual_memory().available


def weights_fit(config: Qwen25VLConfig, dtype: torch.dtype, available: int | None = None,
                device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Do the weights in `dtype` fit: at most 80% of the memory free now on `device` (free_memory),
    leaving the rest for activations, the KV cache and everything else? -> (answer, one line saying why)."""
    need = torch.finfo(dtype).bits // 8 * count_parameters(config)["total"]
    available = free_memory(device) if available is None else available
    name = str(dtype).removeprefix("torch.")
    if available is None:
        return True, f"{name} weights ({need / 1e9:.1f} GB) on the meta device take no memory"
    where = "" if torch.device(device).type == "cpu" else f" on {device}"
    if need > 0.8 * available:
        return False, f"{name} weights need {need / 1e9:.1f} GB, {available / 1e9:.1f} GB of memory is available{where}"
    return True, f"{name} weights fit ({need / 1e9:.1f} GB of {available / 1e9:.1f} GB available{where})"
