"""Ops: the only way the model layer reaches a kernel.

Each op module holds the PyTorch reference, the checks every backend shares, and the
registration of its implementations with :mod:`jukebox_fast.dispatch`. Importing this package
registers them all.
"""
from .vq import vq_nearest, vq_nearest_reference

__all__ = ["vq_nearest", "vq_nearest_reference"]
