"""Which dtype to compute in: bfloat16 where the hardware multiplies it natively, else float32.

    choose_dtype(device, dtype=None) -> (torch.dtype, reason)

    1. an explicit `dtype` argument wins;
    2. else the environment variable QVL_DTYPE (float32 | bfloat16);
    3. else a GPU computes in bfloat16;
    4. else a CPU computes in bfloat16 only if it has native bfloat16 matrix instructions:
       a. its feature flags say so (x86: avx512_bf16 or amx_bf16; Arm: bf16), and
       b. the matrix library is allowed to use them ($ONEDNN_MAX_CPU_ISA, if set, names an ISA
          with bfloat16, e.g. AVX512_CORE_BF16 or AVX512_CORE_AMX, not AVX2 or AVX512_CORE), and
       c. a one-off probe agrees: a (512 x 1024) @ (1024 x 1024) product, float32 and bfloat16
          timed in turn, best of 5 each, with bfloat16 at least half as fast as float32.

Why flags AND a probe. The two kinds of CPU are far apart, measured on the probe's shapes:
native bfloat16 (AMX, avx512_bf16, Apple M2+, Graviton 3) multiplies about 1-10x FASTER than
float32; without it bfloat16 is emulated, 2-4x slower with AVX-512 and 100-1000x slower with
AVX2 only. The flags alone can be wrong about speed (the matrix library dispatches on its own,
and $ONEDNN_MAX_CPU_ISA can forbid the instructions), and a probe alone is at the mercy of a
busy machine (a preempted run can make either dtype look slow). So the flags (and the ISA cap)
decide who is a candidate, without timing anything, and the probe only confirms a candidate;
its threshold (0.5) sits far below every native measurement. On a CPU without the flags the
answer is float32 at once, with no probe. The flags are read from /proc/cpuinfo (Linux) or
`sysctl` (macOS); where neither answers, the probe decides alone.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time

import torch

ENV = "QVL_DTYPE"
NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
X86_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
ISA_CAP = "ONEDNN_MAX_CPU_ISA"
ISA_WITH_BF16 = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")  # oneDNN ISA names that include bfloat16


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """"bfloat16" / torch.bfloat16 -> torch.bfloat16; anything else is an error that lists the choices."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in NAMES:
        return NAMES[dtype]
    raise ValueError(f"dtype {dtype!r}: choose one of {sorted(NAMES)}")


def cpu_bf16_flags() -> bool | None:
    """Do the CPU's feature flags announce bfloat16 matrix instructions? None: no way to tell here."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            words = set(f.read().split())
        return bool(words & X86_BF16_FLAGS) or "bf16" in words  # x86 "flags", Arm "Features"
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
            return out.stdout.strip() == "1"
        except OSError:
            return None
    return None


def _time_once(a: torch.Tensor, b: torch.Tensor) -> float:
    """Seconds of one a @ b (the caller keeps the best of several)."""
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


@functools.cache
def cpu_bfloat16_speedup(repeats: int = 5) -> float:
    """float32 time / bfloat16 time of one (512 x 1024) @ (1024 x 1024) product (>1: bfloat16 faster).

    The two dtypes are timed in turn, and each keeps its best run, so a moment of load on a busy
    machine slows one run of one dtype, not the comparison.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 1024, generator=generator)   # (512, 1024)
    b = torch.randn(1024, 1024, generator=generator)  # (1024, 1024)
    a16, b16 = a.bfloat16(), b.bfloat16()
    a @ b, a16 @ b16  # warm-up: the first call picks the kernels
    fp32 = bf16 = float("inf")
    for _ in range(repeats):
        fp32 = min(fp32, _time_once(a, b))
        bf16 = min(bf16, _time_once(a16, b16))
    return fp32 / bf16


@functools.cache
def cpu_native_bfloat16() -> tuple[bool, str]:
    """(does this CPU multiply bfloat16 natively, the evidence in a few words)."""
    flags = cpu_bf16_flags()
    if flags is False:
        return False, "this CPU has no bfloat16 matrix instructions"
    cap = os.environ.get(ISA_CAP, "").upper()
    if cap and not any(part in cap for part in ISA_WITH_BF16):
        return False, f"${ISA_CAP}={cap} keeps the matrix library off bfloat16 instructions"
    speedup = cpu_bfloat16_speedup()
    evidence = "bfloat16 instructions" if flags else "no flags to read"
    if speedup >= 0.5:
        return True, f"this CPU multiplies bfloat16 natively ({evidence}, probe confirms)"
    return False, f"bfloat16 matrix products run slowly here ({evidence}, probe: {1 / speedup:.0f}x slower)"


def choose_dtype(device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> tuple[torch.dtype, str]:
    """The dtype to compute in on `device`, and one line saying why (see the module's docstring)."""
    if dtype is not None:
        return parse_dtype(dtype), "as asked"
    if os.environ.get(ENV):
        return parse_dtype(os.environ[ENV]), f"from ${ENV}"
    if torch.device(device).type != "cpu":
        return torch.bfloat16, f"bfloat16 on {torch.device(device).type}"
    native, evidence = cpu_native_bfloat16()
    if native:
        return torch.bfloat16, evidence
    return torch.float32, f"{evidence}; float32 (twice the memory of bfloat16)"
