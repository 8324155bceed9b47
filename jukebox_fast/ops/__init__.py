"""Ops: the only way the model layer reaches a kernel.

Each op module holds the PyTorch reference, the checks every backend shares, and the
registration of its implementations with :mod:`jukebox_fast.dispatch`. Importing this package
registers them all.
"""
from .vq import Quantised, vq_nearest, vq_nearest_reference, vq_quantise, vq_quantise_reference

__all__ = ["Quantised", "vq_nearest", "vq_nearest_reference", "vq_quantise", "vq_quantise_reference"]
