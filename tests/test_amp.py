"""--amp on CPU: bfloat16 autocast only where the CPU has bfloat16 instructions, float32 elsewhere
(one log line), SCOB_FAST_CPU_BF16 forcing either way. The CPU is faked by monkeypatching what
`cpu_bf16_support` reads: /proc/cpuinfo's flags, torch's cpuinfo probes and its CPU capability."""
from __future__ import annotations

import logging

import pytest
import torch

from scob_fast.engine import amp

X86_AVX2 = "fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"
X86_AVX512 = X86_AVX2 + " avx512f avx512dq avx512bw avx512vl avx512_vnni"   # Skylake-X / Ice Lake: no bf16


def _fake_cpu(monkeypatch, flags: str | None, capability: str, avx512_bf16=False, amx=False):
    monkeypatch.setattr(amp, "cpu_flags", lambda *a: None if flags is None else frozenset(flags.split()))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(amp, "_logged", set())
    monkeypatch.delenv("SCOB_FAST_CPU_BF16", raising=False)


@pytest.mark.parametrize("text, expected", [
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n",
     {"fpu", "avx2", "avx512_bf16"}),                                  # x86: the first CPU's "flags"
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", {"fp", "asimd", "sve", "bf16", "i8mm"}),  # Arm
    ("processor\t: 0\nmodel name\t: something\n", set()),
])
def test_cpu_flags_reads_the_first_flags_line(tmp_path, text, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert amp.cpu_flags(path) == expected


def test_cpu_flags_without_cpuinfo_is_none(tmp_path):
    assert amp.cpu_flags(tmp_path / "missing") is None


@pytest.mark.parametrize("flags, capability, avx512_bf16, amx, native", [
    (X86_AVX2, "AVX2", False, False, False),                         # Haswell .. Zen 3
    (X86_AVX512, "AVX512", False, False, False),                     # AVX-512 without BF16: emulated
    (X86_AVX512 + " avx512_bf16", "AVX512", False, False, True),     # Cooper Lake, Zen 4 (flags only)
    (X86_AVX512 + " amx_tile amx_bf16", "AVX512", False, False, True),   # Sapphire Rapids
    (None, "AVX512", True, False, True),                             # no /proc/cpuinfo: torch's probe
    (None, "AVX512", False, True, True),
    (None, "AVX2", False, False, False),
    ("fp asimd sve bf16", "SVE256", False, False, True),             # Arm with BF16
    ("fp asimd", "DEFAULT", False, False, False),
])
def test_cpu_bf16_support(monkeypatch, flags, capability, avx512_bf16, amx, native):
    _fake_cpu(monkeypatch, flags, capability, avx512_bf16, amx)
    got, evidence = amp.cpu_bf16_support()
    assert got is native
    assert f"CPU capability {capability}" in evidence
    assert ("no bfloat16 instructions" in evidence) is (not native)


def _amp_records(caplog):
    return [r for r in caplog.records if r.name == "scob_fast.amp"]


def test_amp_without_native_bf16_runs_float32_and_says_so_once(monkeypatch, caplog):
    _fake_cpu(monkeypatch, X86_AVX2, "AVX2")
    caplog.set_level(logging.INFO, logger="scob_fast.amp")
    policy = amp.AmpPolicy("cpu", True)
    assert policy.requested is True and policy.enabled is False
    a = torch.randn(4, 4)
    with policy.autocast():
        assert (a @ a).dtype == torch.float32
    amp.AmpPolicy("cpu", True)   # a second policy in the same process (bench/train_step.py) logs nothing more
    records = _amp_records(caplog)
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "\n" not in message
    assert "no native bfloat16" in message and "AVX2" in message and "float32" in message
    assert "SCOB_FAST_CPU_BF16=1" in message


def test_amp_with_native_bf16_runs_bfloat16(monkeypatch, caplog):
    _fake_cpu(monkeypatch, X86_AVX512 + " avx512_bf16", "AVX512")
    caplog.set_level(logging.INFO, logger="scob_fast.amp")
    policy = amp.AmpPolicy("cpu", True)
    assert policy.enabled is True and policy.dtype == torch.bfloat16
    a = torch.randn(4, 4)
    with policy.autocast():
        assert (a @ a).dtype == torch.bfloat16
    assert [r.levelno for r in _amp_records(caplog)] == [logging.INFO]


@pytest.mark.parametrize("value, flags, enabled", [
    ("1", X86_AVX2, True),                     # forced bfloat16 on a CPU that emulates it
    ("0", X86_AVX512 + " avx512_bf16", False),  # forced float32 on a CPU that has it
    ("true", X86_AVX2, True),
    ("off", X86_AVX2, False),
])
def test_env_var_forces_either_way(monkeypatch, caplog, value, flags, enabled):
    _fake_cpu(monkeypatch, flags, "AVX512")
    monkeypatch.setenv("SCOB_FAST_CPU_BF16", value)
    caplog.set_level(logging.INFO, logger="scob_fast.amp")
    assert amp.AmpPolicy("cpu", True).enabled is enabled
    (record,) = _amp_records(caplog)
    assert "SCOB_FAST_CPU_BF16" in record.getMessage() and record.levelno == logging.WARNING


def test_env_var_bad_value_is_one_clear_error(monkeypatch):
    _fake_cpu(monkeypatch, X86_AVX2, "AVX2")
    monkeypatch.setenv("SCOB_FAST_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="SCOB_FAST_CPU_BF16='maybe'"):
        amp.AmpPolicy("cpu", True)


def test_no_amp_never_probes_or_logs(monkeypatch, caplog):
    _fake_cpu(monkeypatch, X86_AVX2, "AVX2")

    def must_not_run():
        raise AssertionError("probed the CPU without --amp")

    monkeypatch.setattr(amp, "cpu_bf16_support", must_not_run)
    caplog.set_level(logging.INFO, logger="scob_fast.amp")
    policy = amp.AmpPolicy("cpu", False)
    assert policy.enabled is False and policy.requested is False
    assert _amp_records(caplog) == []


def test_this_machine_is_reported(capsys):
    native, evidence = amp.cpu_bf16_support()
    print(f"this CPU: native bfloat16 {native}: {evidence}")   # visible with -s
    assert evidence.startswith("CPU capability ")
