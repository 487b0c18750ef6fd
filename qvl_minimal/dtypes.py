"""Which dtype to compute in: bfloat16 where the hardware multiplies it natively, else float32.

    choose_dtype(device, dtype=None) -> (torch.dtype, reason)

    1. an explicit `dtype` argument wins;
    2. else the environment variable QVL_DTYPE (float32 | bfloat16);
    3. else a GPU computes in bfloat16;
    4. else a CPU computes in bfloat16 only if a one-off probe shows its bfloat16 matrix products
       are native: a (256 x 512) @ (512 x 512) product timed in both dtypes, best of 5.

Why a probe and not the CPU's feature flags: the matmul speed comes from oneDNN's own dispatch,
which the flags do not predict reliably (a CPU with avx512_bf16 reported False from torch's own
`_is_avx512_bf16_supported`), and the two kinds of CPU are far apart. Measured on the probe's
shape: native bfloat16 (avx512_bf16 / AMX, Apple M2+, Graviton 3) runs it about 2x FASTER than
float32; without it (AVX2 only) 100-1000x SLOWER; AVX-512 without bf16 about 20x slower. The
threshold (bfloat16 under 2x the float32 time) sits far from both. The probe costs well under
a second once per process; on a machine without native bfloat16 that is almost all of it.
"""

from __future__ import annotations

import functools
import os
import time

import torch

ENV = "QVL_DTYPE"
NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """"bfloat16" / torch.bfloat16 -> torch.bfloat16; anything else is an error that lists the choices."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in NAMES:
        return NAMES[dtype]
    raise ValueError(f"dtype {dtype!r}: choose one of {sorted(NAMES)}")


def _best_time(a: torch.Tensor, b: torch.Tensor, repeats: int = 5) -> float:
    a @ b  # warm-up: the first call picks the kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bfloat16_speedup() -> float:
    """float32 time / bfloat16 time of one (256 x 512) @ (512 x 512) product on this CPU (>1: bf16 faster)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, 512, generator=generator)  # (256, 512)
    b = torch.randn(512, 512, generator=generator)  # (512, 512)
    return _best_time(a, b) / _best_time(a.bfloat16(), b.bfloat16())


def choose_dtype(device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> tuple[torch.dtype, str]:
    """The dtype to compute in on `device`, and one line saying why (see the module's docstring)."""
    if dtype is not None:
        return parse_dtype(dtype), "as asked"
    if os.environ.get(ENV):
        return parse_dtype(os.environ[ENV]), f"from ${ENV}"
    if torch.device(device).type != "cpu":
        return torch.bfloat16, f"bfloat16 on {torch.device(device).type}"
    speedup = cpu_bfloat16_speedup()
    if speedup > 0.5:  # bfloat16 at most 2x slower than float32: native bfloat16 matrix instructions
        return torch.bfloat16, f"this CPU multiplies bfloat16 natively ({speedup:.1f}x the float32 speed)"
    return torch.float32, (f"this CPU has no native bfloat16 matrix instructions (bfloat16 runs at "
                           f"{speedup:.3f}x the float32 speed); float32 needs twice the memory")
