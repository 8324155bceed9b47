"""Native 16-bit arithmetic on the CPU: the instructions, and the switches that hold PyTorch and
oneDNN below them (how a fast machine imitates a slow one)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from jukebox_fast import cpu_features


@pytest.fixture
def cpu(monkeypatch):
    """A pretend x86 CPU with the given flags and PyTorch capability."""
    def make(flags, capability="AVX512", isa=None):
        cpu_features.no_native_16bit_reason.cache_clear()
        monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(cpu_features, "_cpu_flags", lambda: set(flags))
        monkeypatch.setattr(cpu_features.torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    yield make
    cpu_features.no_native_16bit_reason.cache_clear()


def test_fp32_is_always_native(cpu):
    cpu(set(), capability="DEFAULT")
    assert cpu_features.native_16bit(torch.float32)


def test_bf16_needs_the_instructions_and_no_switch_holding_them_back(cpu):
    cpu({"avx2", "fma"}, capability="AVX2")
    assert "no bf16 instructions" in cpu_features.no_native_16bit_reason(torch.bfloat16)
    cpu({"avx2", "avx512f", "avx512_bf16"})
    assert cpu_features.native_16bit(torch.bfloat16)
    assert "no fp16 instructions" in cpu_features.no_native_16bit_reason(torch.float16)  # bf16 is not fp16
    cpu({"avx512f", "avx512_bf16"}, capability="AVX2")
    assert "held to AVX2 (ATEN_CPU_CAPABILITY)" in cpu_features.no_native_16bit_reason(torch.bfloat16)
    cpu({"avx512f", "avx512_bf16"}, isa="AVX2")
    assert "oneDNN is held to AVX2" in cpu_features.no_native_16bit_reason(torch.bfloat16)
    cpu({"avx512f", "avx512_bf16"}, isa="avx512_core_bf16")
    assert cpu_features.native_16bit(torch.bfloat16)
    cpu({"amx_bf16", "amx_fp16", "avx512_fp16"}, isa="AVX512_CORE_AMX_FP16")
    assert cpu_features.native_16bit(torch.bfloat16) and cpu_features.native_16bit(torch.float16)


def test_the_environment_switches_reach_a_fresh_process():
    # What the README tells a fast machine to set to measure like an AVX2-only one.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = "import torch; from jukebox_fast import cpu_features as c; print(c.no_native_16bit_reason(torch.bfloat16))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() != "None"
