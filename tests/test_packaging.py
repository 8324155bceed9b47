"""Packaging: kernels/ installs as jukebox_fast.kernels; importing the package stays light."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_kernels_package_is_importable_under_the_package_name():
    import jukebox_fast.kernels

    assert jukebox_fast.kernels.__name__ == "jukebox_fast.kernels"
    pytest.importorskip("triton")
    from jukebox_fast.kernels import vq

    assert callable(vq.search) and callable(vq.segment_sums)


def test_import_does_not_pull_triton_matplotlib_or_transformers():
    code = ("import sys, jukebox_fast; "
            "print(sorted(m for m in ('triton', 'matplotlib', 'transformers', 'soundfile') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
