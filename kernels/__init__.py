"""Triton kernels, installed as ``jukebox_fast.kernels``.

Only ``@triton.jit`` code and its launchers live here: no autograd, no model imports.
The ops in ``jukebox_fast.ops`` import these lazily, so importing jukebox_fast never needs
Triton.
"""
