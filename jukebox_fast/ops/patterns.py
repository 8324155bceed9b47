"""Jukebox's factorised attention patterns, written down once as data.

A pattern says which keys a query may see. The reference attention, the Triton kernels and the
cached decode step all read it from here, so they cannot disagree.

Positions are 0-based. In self-attention a query at position ``p`` and a key at position ``j``
live in the same sequence; when the queries are only the last ``q_len`` positions of the key
sequence (chunked prefill, one-token decode), query ``i`` sits at ``p = k_len - q_len + i``.

Types, as numbered by the original's ``attn_order`` tables (``bc`` = block_ctx):

====  ============  ========================================================================
 0    dense         j ≤ p
 1    block         ⌊j/bc⌋ = ⌊p/bc⌋ and j ≤ p
 2    column        j ≡ p (mod bc) and j ≤ p
 3    prev_block    ⌊j/bc⌋ = ⌊p/bc⌋ − 1 (no mask); a query in block 0 sees bc all-zero keys
                    and values, so its output is exactly zero
 6    cross         every encoder position (keys come from another sequence)
 7    prime         j < P and j ≤ p, with P = (prime_len // blocks + 1)·blocks
====  ============  ========================================================================

Types 4 and 5 (summary attention) exist in the original's tables but no released model uses
them and the original has no decode path for 5; they are not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AttentionPattern", "ATTN_ORDERS", "KINDS", "layer_kinds", "prime_window"]

KINDS = {0: "dense", 1: "block", 2: "column", 3: "prev_block", 6: "cross", 7: "prime"}


def _order_10(d: int) -> int:  # 5b_lyrics: 9 plain layers, then groups of ten ending in cross-attention
    return ([1, 2, 3] * 3 + [1, 2, 3, 1, 2, 3, 1, 2, 3, 6] * 7)[d % 79]


# Layer d's attention type, per attn_order (the original's table).
ATTN_ORDERS = {
    0: lambda d: 0,
    1: lambda d: [1, 2][d % 2],
    2: lambda d: [1, 2, 3][d % 3],
    3: lambda d: [1, 4][d % 2],
    4: lambda d: [1, 5][d % 2],
    5: lambda d: [1, 4, 1, 1][d % 4],
    6: lambda d: [1, 2, 3, 6][d % 4],
    7: lambda d: ([1, 2, 3] * 5 + [6])[d % 16],
    8: lambda d: [1, 2, 3, 1, 2, 3, 1, 2, 3, 6][d % 10],
    9: lambda d: [1, 2, 3, 0][d % 4],
    10: _order_10,
    11: lambda d: [6, 6, 0][d % 3] if d % 16 == 15 else [1, 2, 3][d % 3],
    12: lambda d: [7, 7, 0][d % 3] if d % 16 == 15 else [1, 2, 3][d % 3],
}


def layer_kinds(attn_order: int, depth: int) -> list[int]:
    """The attention type of each of ``depth`` layers."""
    if attn_order not in ATTN_ORDERS:
        raise ValueError(f"attn_order must be one of {sorted(ATTN_ORDERS)}, got {attn_order}")
    kinds = [ATTN_ORDERS[attn_order](d) for d in range(depth)]
    missing = sorted({k for k in kinds if k not in KINDS})
    if missing:
        raise NotImplementedError(
            f"attn_order {attn_order} uses attention type(s) {missing} (summary attention), which no "
            "released model uses and jukebox_fast does not implement")
    return kinds


def prime_window(prime_len: int, blocks: int) -> int:
    """P of the prime pattern: the original rounds prime_len up past the next multiple of
    ``blocks`` (384 lyric tokens, 64 blocks -> 448: the first 64 music tokens are included)."""
    return (prime_len // blocks + 1) * blocks


@dataclass(frozen=True)
class AttentionPattern:
    """Which keys each query may see: the attention type plus the sizes it depends on.

    ``block_ctx`` is the block length for types 1-3; ``prime_len`` is P for type 7 (already
    rounded by :func:`prime_window`).
    """

    kind: int
    block_ctx: int = 1
    prime_len: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attention type must be one of {sorted(KINDS)} ({KINDS}), got {self.kind}")
        if self.block_ctx < 1:
            raise ValueError(f"block_ctx must be >= 1, got {self.block_ctx}")

    @property
    def name(self) -> str:
        return KINDS[self.kind]

    @property
    def causal(self) -> bool:
        return self.kind in (0, 1, 2, 7)

    def visible(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Boolean [.., Q, K] from query positions [Q] and key positions [K] (broadcast):
        the definition every implementation follows."""
        p, j = q_pos[:, None], k_pos[None, :]
        bc = self.block_ctx
        if self.kind == 0:
            return j <= p
        if self.kind == 1:
            return (j // bc == p // bc) & (j <= p)
        if self.kind == 2:
            return (j % bc == p % bc) & (j <= p)
        if self.kind == 3:
            return j // bc == p // bc - 1
        if self.kind == 6:
            return torch.ones_like(j, dtype=torch.bool).expand(p.shape[0], j.shape[1])
        return (j < self.prime_len) & (j <= p)  # 7

    def mask(self, q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean [q_len, k_len]: the queries are the last ``q_len`` positions of the keys'
        sequence (for cross-attention, any ``q_len`` against all ``k_len`` encoder states)."""
        offset = 0 if self.kind == 6 else k_len - q_len
        q_pos = torch.arange(q_len, device=device) + offset
        return self.visible(q_pos, torch.arange(k_len, device=device))
