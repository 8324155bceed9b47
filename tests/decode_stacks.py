"""Random decode stacks (every attention pattern, odd shapes) for the decode_layers tests."""
from __future__ import annotations

import torch

from jukebox_fast.ops import AttentionPattern, CacheLayout, DecodeLayer, DecodeStack, Kind

LENGTH = 40
LAYOUTS = [  # every pattern; block sizes that do not divide the length
    CacheLayout(AttentionPattern(Kind.DENSE), LENGTH), CacheLayout(AttentionPattern(Kind.BLOCK, 8), LENGTH),
    CacheLayout(AttentionPattern(Kind.COLUMN, 6), LENGTH), CacheLayout(AttentionPattern(Kind.PREV_BLOCK, 7), LENGTH),
    CacheLayout(AttentionPattern(Kind.PRIME, prime_len=12), LENGTH), CacheLayout(AttentionPattern(Kind.CROSS), LENGTH, enc_length=11),
]
SHAPES = [  # (N, width, heads, d, hidden): aligned; odd everything; more samples than a register tile
    (1, 64, 1, 64, 64),
    (3, 40, 3, 5, 71),
    (5, 67, 2, 9, 130),
    (9, 130, 4, 16, 200),
]


def random_stack(n, width, heads, d, hidden, res_scale=1.0, layouts=LAYOUTS, seed=0) -> DecodeStack:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    layers = []
    for layout in layouts:
        s = heads * d
        qkv = s if layout.pattern.kind == Kind.CROSS else 3 * s
        weights = (1 + rand(width, std=0.1), rand(width, std=0.1), rand(width, qkv, std=width**-0.5), rand(qkv, std=0.1),
                   rand(s, width, std=s**-0.5), rand(width, std=0.1), 1 + rand(width, std=0.1), rand(width, std=0.1),
                   rand(width, hidden, std=width**-0.5), rand(hidden, std=0.1), rand(hidden, width, std=hidden**-0.5),
                   rand(width, std=0.1))
        k, v = rand(n, heads, layout.size, d), rand(n, heads, layout.size, d)  # stale entries must not be read
        layers.append(DecodeLayer(weights, k, v, layout, heads, res_scale))
    return DecodeStack(layers)


def copy_caches(stack: DecodeStack) -> DecodeStack:
    return DecodeStack([DecodeLayer(l.weights, l.k.clone(), l.v.clone(), l.layout, l.n_head, l.res_scale, l.eps,
                                    l.scales) for l in stack.layers])


def int8_stack(exact: DecodeStack) -> DecodeStack:
    """``exact`` with its four projection matrices in weight-only int8 (per-column scales)."""
    from jukebox_fast.models.transformer import quantize_int8

    layers = []
    for l in exact.layers:
        quantized = {i: quantize_int8(l.weights[i]) for i in (2, 4, 8, 10)}
        weights = tuple(quantized[i][0] if i in quantized else w for i, w in enumerate(l.weights))
        scales = tuple(quantized[i][1] for i in (2, 4, 8, 10))
        layers.append(DecodeLayer(weights, l.k.clone(), l.v.clone(), l.layout, l.n_head, l.res_scale, l.eps, scales))
    return DecodeStack(layers)
