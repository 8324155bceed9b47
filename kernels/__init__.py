"""Triton kernels, installed as ``jukebox_fast.kernels``.

Only ``@triton.jit`` code and its launchers live here: no autograd, no model imports.
The ops in ``jukebox_fast.ops`` import these lazily, so importing jukebox_fast never needs
Triton (this file imports nothing that does).
"""
from __future__ import annotations

import os

__all__ = ["interpreter_on"]


def interpreter_on() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1`` in the
    environment): the one place that reads the variable."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
