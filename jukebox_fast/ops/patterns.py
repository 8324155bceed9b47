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
from enum import IntEnum

import torch

__all__ = ["Kind", "AttentionPattern", "CacheLayout", "ATTN_ORDERS", "KINDS", "layer_kinds", "prime_window"]


class Kind(IntEnum):
    """The attention types, numbered as the original's ``attn_order`` tables number them. The
    Triton kernels take these values as their ``KIND`` constexpr (``kernels/patterns.py``)."""

    DENSE = 0
    BLOCK = 1
    COLUMN = 2
    PREV_BLOCK = 3
    CROSS = 6
    PRIME = 7


KINDS = {kind: kind.name.lower() for kind in Kind}  # e.g. Kind.PREV_BLOCK: "prev_block"


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
    missing = sorted({k for k in kinds if k not in KINDS})  # 4 and 5: summary attention
    if missing:
        raise NotImplementedError(
            f"attn_order {attn_order} uses attention type(s) {missing} (summary attention), which no "
            "released model uses and jukebox_fast does not implement")
    return [Kind(k) for k in kinds]


def prime_window(prime_len: int, blocks: int) -> int:
    """P of the prime pattern: the original rounds prime_len up past the next multiple of
    ``blocks`` (384 lyric tokens, 64 blocks -> 448: the first 64 music tokens are included)."""
    return (prime_len // blocks + 1) * blocks


@dataclass(frozen=True)
class AttentionPattern:
    """Which keys each query may see: the attention type plus the sizes it depends on.

    ``block_ctx`` is the block length for the block, column and previous-block types;
    ``prime_len`` is P for the prime type (already rounded by :func:`prime_window`).
    """

    kind: Kind
    block_ctx: int = 1
    prime_len: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attention type must be one of {sorted(KINDS)} ({KINDS}), got {self.kind}")
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.block_ctx < 1:
            raise ValueError(f"block_ctx must be >= 1, got {self.block_ctx}")

    @property
    def name(self) -> str:
        return KINDS[self.kind]

    @property
    def causal(self) -> bool:
        return self.kind in (Kind.DENSE, Kind.BLOCK, Kind.COLUMN, Kind.PRIME)

    @property
    def cross(self) -> bool:
        """Keys from another sequence (the lyric encoder's states)."""
        return self.kind == Kind.CROSS

    @property
    def blocked(self) -> bool:
        """A type whose geometry is blocks of ``block_ctx`` positions."""
        return self.kind in (Kind.BLOCK, Kind.COLUMN, Kind.PREV_BLOCK)

    def kernel_args(self) -> tuple[int, int, int]:
        """(kind, block_ctx, prime_len) as the Triton attention kernels take them."""
        return int(self.kind), self.block_ctx, self.prime_len

    def visible(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Boolean [.., Q, K] from query positions [Q] and key positions [K] (broadcast):
        the definition every implementation follows."""
        p, j = q_pos[:, None], k_pos[None, :]
        bc = self.block_ctx
        if self.kind == Kind.DENSE:
            return j <= p
        if self.kind == Kind.BLOCK:
            return (j // bc == p // bc) & (j <= p)
        if self.kind == Kind.COLUMN:
            return (j % bc == p % bc) & (j <= p)
        if self.kind == Kind.PREV_BLOCK:
            return j // bc == p // bc - 1
        if self.kind == Kind.CROSS:
            return torch.ones_like(j, dtype=torch.bool).expand(p.shape[0], j.shape[1])
        return (j < self.prime_len) & (j <= p)  # prime

    def mask(self, q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean [q_len, k_len]: the queries are the last ``q_len`` positions of the keys'
        sequence (for cross-attention, any ``q_len`` against all ``k_len`` encoder states)."""
        offset = 0 if self.cross else k_len - q_len
        q_pos = torch.arange(q_len, device=device) + offset
        return self.visible(q_pos, torch.arange(k_len, device=device))


@dataclass(frozen=True)
class CacheLayout:
    """Where one layer keeps its keys and values for a sequence of ``length`` positions
    (``enc_length`` encoder states for cross-attention), in a buffer that holds only the keys
    the pattern can still need (``ops/decode.py`` tabulates it)."""

    pattern: AttentionPattern
    length: int
    enc_length: int = 0

    @property
    def blocks(self) -> int:
        return -(-self.length // self.pattern.block_ctx)

    @property
    def size(self) -> int:
        """Slots in the buffer."""
        kind, bc = self.pattern.kind, self.pattern.block_ctx
        return {Kind.DENSE: self.length, Kind.BLOCK: bc, Kind.COLUMN: bc * self.blocks, Kind.PREV_BLOCK: 2 * bc,
                Kind.CROSS: self.enc_length, Kind.PRIME: self.pattern.prime_len + 1}[kind]

    @property
    def span(self) -> int:
        """The most slots one query sees (its visible run is at most this long)."""
        kind, bc = self.pattern.kind, self.pattern.block_ctx
        return {Kind.DENSE: self.length, Kind.BLOCK: bc, Kind.COLUMN: self.blocks, Kind.PREV_BLOCK: bc,
                Kind.CROSS: self.enc_length, Kind.PRIME: self.pattern.prime_len}[kind]

    def kernel_args(self) -> tuple[int, int, int, int, int]:
        """(kind, block_ctx, blocks, prime_len, enc_length) as the Triton decode kernels take them."""
        return int(self.pattern.kind), self.pattern.block_ctx, self.blocks, self.pattern.prime_len, self.enc_length

    def slots(self, positions: torch.Tensor) -> torch.Tensor:
        """Slot of each position (int64 tensor, any shape)."""
        kind, bc = self.pattern.kind, self.pattern.block_ctx
        if kind == Kind.DENSE:
            return positions
        if kind == Kind.BLOCK:
            return positions % bc
        if kind == Kind.COLUMN:
            return (positions % bc) * self.blocks + positions // bc
        if kind == Kind.PREV_BLOCK:
            return positions % (2 * bc)
        if kind == Kind.PRIME:
            return positions.clamp(max=self.pattern.prime_len)  # past the window: the scratch slot
        raise ValueError("cross-attention caches are filled from the encoder, not by position")

    def kept(self, count: int) -> range:
        """Positions among 0..count−1 whose keys are still needed after them (the last ones
        written to each slot)."""
        kind, bc = self.pattern.kind, self.pattern.block_ctx
        ring = {Kind.BLOCK: bc, Kind.PREV_BLOCK: 2 * bc}.get(kind)
        if ring:
            return range(max(0, count - ring), count)
        if kind == Kind.PRIME:
            return range(min(count, self.pattern.prime_len))
        return range(count)

    def visible(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[lo, hi) slots the query at ``position`` (after its own key is written) may see."""
        kind, bc = self.pattern.kind, self.pattern.block_ctx
        p = position
        if kind == Kind.DENSE:
            return torch.zeros_like(p), p + 1
        if kind == Kind.BLOCK:
            return torch.zeros_like(p), p % bc + 1
        if kind == Kind.COLUMN:
            lo = (p % bc) * self.blocks
            return lo, lo + p // bc + 1
        if kind == Kind.PREV_BLOCK:
            block = p // bc
            lo = torch.where(block > 0, ((block - 1) % 2) * bc, 0)
            return lo, torch.where(block > 0, lo + bc, 0)
        if kind == Kind.CROSS:
            return torch.zeros_like(p), torch.full_like(p, self.enc_length)
        return torch.zeros_like(p), p.clamp(max=self.pattern.prime_len - 1) + 1
