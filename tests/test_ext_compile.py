"""The CUDA sources of the extension compile with nvcc against this torch's headers.

A cubin only: nothing runs, so this holds on a machine without a GPU, and a CUDA compile error
fails CI there rather than at a user's first decode. nvcc's front end checks the whole file, the
host code included (a wrong call in a launch wrapper fails here too), before ptxas compiles the
device code for sm_90; only the host compiler's second pass over the ATen headers is left out
(about 35 s of this test's 52 s on two cores, and the CPU extension's build parses those headers).
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
from torch.utils import cpp_extension

from jukebox_fast import extension

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", [p for p in extension.sources() if p.suffix == ".cu"], ids=lambda p: p.name)
def test_cuda_source_compiles_for_hopper(source, tmp_path):
    # A CPU build of torch ships c10/cuda without the one header its CMake generates for CUDA
    # builds; this stand-in has the same content.
    shim = tmp_path / "include" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [arg for p in [tmp_path / "include", *cpp_extension.include_paths()] for arg in ("-isystem", str(p))]
    obj = tmp_path / (source.stem + ".cubin")
    cmd = [NVCC, "-cubin", str(source), "-o", str(obj), "-std=c++20", "-arch=sm_90", "-O3", "--use_fast_math",
           "-Xcompiler", "-fPIC", "-Xptxas", "-warn-spills", *cpp_extension.COMMON_NVCC_FLAGS, *includes]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc failed:\n{done.stderr[-4000:]}"
    assert obj.stat().st_size > 0
    assert "spill" not in done.stderr, f"register spills:\n{done.stderr[-2000:]}"
