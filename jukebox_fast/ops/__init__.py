"""Ops: the only way the model layer reaches a kernel.

Each op module holds the PyTorch reference, the checks every backend shares, and the
registration of its implementations with :mod:`jukebox_fast.dispatch`. Importing this package
registers them all.
"""
from .attention import sparse_attention, sparse_attention_reference
from .decode import CacheLayout, decode_attention, decode_attention_reference
from .decode_layers import DecodeLayer, DecodeStack, decode_layers, decode_layers_reference
from .resblock import dilated_resblock, dilated_resblock_reference
from .patterns import AttentionPattern, layer_kinds, prime_window
from .vq import Quantised, vq_nearest, vq_nearest_reference, vq_quantise, vq_quantise_reference

__all__ = [
    "AttentionPattern",
    "CacheLayout",
    "DecodeLayer",
    "DecodeStack",
    "Quantised",
    "decode_attention",
    "decode_attention_reference",
    "decode_layers",
    "decode_layers_reference",
    "dilated_resblock",
    "dilated_resblock_reference",
    "layer_kinds",
    "prime_window",
    "sparse_attention",
    "sparse_attention_reference",
    "vq_nearest",
    "vq_nearest_reference",
    "vq_quantise",
    "vq_quantise_reference",
]
