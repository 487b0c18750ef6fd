"""The dtype rule (qvl_minimal.dtypes): what decides, in which order, with the machine's answers faked.

No test here depends on this machine's CPU: the flags and the probe are replaced by fakes.
"""

import math

import pytest
import torch

from qvl_minimal import dtypes


@pytest.fixture
def machine(monkeypatch):
    """Fake a CPU: set .flags (True/False/None) and .speedup (float32 time / bfloat16 time)."""
    class Machine:
        flags, speedup, probed = True, 2.0, 0

    def speedup():
        Machine.probed += 1
        return Machine.speedup

    dtypes.cpu_native_bfloat16.cache_clear()
    monkeypatch.setattr(dtypes, "cpu_bf16_flags", lambda: Machine.flags)
    monkeypatch.setattr(dtypes, "cpu_bfloat16_speedup", speedup)
    monkeypatch.delenv(dtypes.ENV, raising=False)
    monkeypatch.delenv(dtypes.ISA_CAP, raising=False)
    yield Machine
    dtypes.cpu_native_bfloat16.cache_clear()


def choose(*args, **kwargs):
    dtypes.cpu_native_bfloat16.cache_clear()
    return dtypes.choose_dtype(*args, **kwargs)


def test_native_cpu_gets_bfloat16(machine):
    dtype, why = choose("cpu")
    assert dtype == torch.bfloat16 and "natively" in why and machine.probed == 1


def test_cpu_without_flags_gets_float32_without_a_probe(machine):
    machine.flags = False
    dtype, why = choose("cpu")
    assert dtype == torch.float32 and "no bfloat16" in why and machine.probed == 0


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_onednn_isa_cap_is_respected(machine, monkeypatch, cap, native):
    monkeypatch.setenv(dtypes.ISA_CAP, cap)
    dtype, why = choose("cpu")
    assert (dtype == torch.bfloat16) == native
    if not native:
        assert dtypes.ISA_CAP in why and machine.probed == 0


def test_a_slow_probe_overrules_the_flags(machine):
    machine.speedup = 1 / 120  # bfloat16 emulated: 120x slower
    dtype, why = choose("cpu")
    assert dtype == torch.float32 and "120x slower" in why


def test_no_flags_to_read_leaves_it_to_the_probe(machine):
    machine.flags = None
    assert choose("cpu")[0] == torch.bfloat16
    machine.speedup = 0.01
    assert choose("cpu")[0] == torch.float32


def test_explicit_and_environment_win(machine, monkeypatch):
    machine.flags = False
    assert choose("cpu", "bfloat16") == (torch.bfloat16, "as asked")
    assert choose("cpu", torch.float32) == (torch.float32, "as asked")
    monkeypatch.setenv(dtypes.ENV, "bfloat16")
    assert choose("cpu") == (torch.bfloat16, f"from ${dtypes.ENV}")
    assert choose("cpu", "float32")[0] == torch.float32  # the argument beats the environment


def test_gpu_gets_bfloat16_without_a_probe(machine):
    machine.flags = False
    assert choose("cuda")[0] == torch.bfloat16 and machine.probed == 0


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        dtypes.parse_dtype("float16")


def test_the_real_probe_runs_once_per_process():
    probe = dtypes.cpu_bfloat16_speedup
    ratio = probe()  # a ratio of two times: positive and finite on any machine, its size is the machine's
    assert math.isfinite(ratio) and ratio > 0
    hits = probe.cache_info().hits
    assert probe() == ratio and probe.cache_info().hits == hits + 1  # the second call is not timed again
