"""Ops: the only way the model layer reaches a kernel.

Each op module holds the PyTorch reference, the checks every backend shares, and the
registration of its implementations with :mod:`jukebox_fast.dispatch`. Importing this package
registers them all.
"""
from .attention import attention_weights, sparse_attention, sparse_attention_reference
from .decode import decode_attention, decode_attention_reference
from .decode_layers import WEIGHT_NAMES, DecodeLayer, DecodeStack, decode_layers, decode_layers_reference
from .decode_layers import bind as bind_decode_layers
from .resblock import dilated_resblock, dilated_resblock_reference
from .step_logits import bind as bind_step_logits
from .step_logits import step_logits, step_logits_reference
from .patterns import AttentionPattern, CacheLayout, Kind, layer_kinds, prime_window
from .vq import Quantised, vq_nearest, vq_nearest_reference, vq_quantise, vq_quantise_reference

__all__ = [
    "AttentionPattern",
    "attention_weights",
    "CacheLayout",
    "DecodeLayer",
    "DecodeStack",
    "Kind",
    "Quantised",
    "WEIGHT_NAMES",
    "bind_decode_layers",
    "bind_step_logits",
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
    "step_logits",
    "step_logits_reference",
    "vq_nearest",
    "vq_nearest_reference",
    "vq_quantise",
    "vq_quantise_reference",
]
