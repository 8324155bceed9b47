"""The performance table's cost model (``benchmarks/launch_cost.py``) walks the attention kernels'
tiles as the kernels do. Its key and query spans restate ``kernels/patterns.py`` in Python; here
they are held to the reference patterns (``AttentionPattern.visible``): the keys a tile of
queries walks are exactly the run from its first to its last visible key, and back, so the bytes
the table counts are the bytes the kernels load.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import launch_cost  # noqa: E402
from jukebox_fast.ops import AttentionPattern, CacheLayout, Kind, costs, prime_window  # noqa: E402


def _run(mask: torch.Tensor) -> tuple[int, int] | None:
    """[first, last + 1) of the True entries of a 1-D mask, None if there are none."""
    idx = mask.nonzero().flatten()
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else None


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(list(Kind)), bc=st.integers(1, 9), prime=st.integers(1, 6), lk=st.integers(1, 40),
       q_frac=st.floats(0.0, 1.0), tile=st.integers(1, 9))
def test_the_spans_are_the_runs_of_visible_keys_and_queries(kind, bc, prime, lk, q_frac, tile):
    pattern = AttentionPattern(kind, block_ctx=bc, prime_len=prime_window(prime, 2) if kind == Kind.PRIME else 0)
    lq = max(1, round(lk * q_frac)) if kind != Kind.CROSS else 1 + round(30 * q_frac)
    groups = min(bc, lk) if kind == Kind.COLUMN else 1
    q_pos = torch.arange(lq) + (0 if kind == Kind.CROSS else lk - lq)
    seen = pattern.visible(q_pos, torch.arange(lk))  # [lq, lk]
    for g in range(groups):
        q_start, base, step, u_lo, u_hi = launch_cost.query_layout(g, lq, lk, bc, kind)
        for first in range(u_lo, u_hi, tile):  # a tile of queries, in units
            last = min(first + tile, u_hi) - 1
            rows = [base + step * u - q_start for u in range(first, last + 1)]
            lo, hi = launch_cost.key_span(base + step * first, base + step * last, last, lk, bc,
                                          pattern.prime_len, kind)
            keys = seen[rows].any(0)  # [lk] by position
            units = keys[base::step] if kind == Kind.COLUMN else keys
            assert _run(units) == ((lo, hi) if hi > lo else None), (g, first, last)
        k_hi = u_hi if kind == Kind.COLUMN else lk
        for v_first in range(0, k_hi, tile):  # a tile of keys, in units
            v_last = min(v_first + tile, k_hi) - 1
            lo, hi = launch_cost.query_span(base + step * v_first, base + step * v_last, v_first, q_start, u_lo, u_hi,
                                            bc, pattern.prime_len, kind)
            keys = [base + step * v for v in range(v_first, v_last + 1)]
            queries = seen[:, keys].any(1)  # [lq] rows of q
            if kind == Kind.COLUMN:
                units = torch.zeros(u_hi, dtype=torch.bool)
                for u in range(u_lo, u_hi):
                    units[u] = queries[base + step * u - q_start]
            else:
                units = torch.cat([torch.zeros(q_start, dtype=torch.bool), queries])
            assert _run(units) == ((lo, hi) if hi > lo else None), (g, v_first, v_last)


@pytest.mark.parametrize("kind", list(Kind))
def test_the_decode_model_sees_the_slots_the_cache_layout_gives(kind):
    layout = CacheLayout(AttentionPattern(kind, block_ctx=8, prime_len=prime_window(20, 8)), 64, 12)
    a = dict(zip(("KIND", "BC", "NB", "PRIME", "ENC"), layout.kernel_args()))
    p = launch_cost.last_position(a)
    assert p == 63
    lo, hi = launch_cost.visible_slots(p, a["BC"], a["NB"], a["PRIME"], a["ENC"], a["KIND"])
    expected = 12 if kind == Kind.CROSS else int(layout.pattern.visible(torch.tensor([p]), torch.arange(64)).sum())
    assert hi - lo == expected


def test_a_block_layers_forward_moves_its_unique_bytes_when_tiles_hold_whole_blocks():
    kernel = SimpleNamespace(arg_names=("q_ptr", "H", "LQ", "LK", "D", "BC", "PRIME"),  # what it reads of a JIT function
                             fn=SimpleNamespace(__name__="_fwd_kernel"))
    n_heads, length, d, bc = 2, 256, 80, 64
    q = torch.empty(1, n_heads, length, d, dtype=torch.bfloat16, device="meta")
    args = (q, n_heads, length, length, d, bc, 0)
    consts = dict(KIND=int(Kind.BLOCK), BLOCK_M=128, BLOCK_N=64, BLOCK_DK=16, D_CHUNKS=5, PRECISION="tf32")
    got = launch_cost.launch_cost(kernel, (2, 1, n_heads), args, consts)
    want = costs.sparse_attention(AttentionPattern(Kind.BLOCK, bc), length, length, n_heads, d, torch.bfloat16)
    assert got.moved == want.bytes  # q, k, v read once, o and the log-sum-exp written once
    # Each 128-query tile walks its two blocks' 128 keys in 64-key trips: 2 trips × 2 products.
    assert got.flops == n_heads * 2 * 2 * 2 * (2 * 128 * 64 * 80)


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(list(Kind)), bc=st.integers(1, 9), prime=st.integers(0, 6), lk=st.integers(1, 40),
       q_frac=st.floats(0.0, 1.0), block_n=st.integers(1, 12))
def test_a_one_pass_backward_is_chosen_only_when_each_query_sees_one_key_tile(kind, bc, prime, lk, q_frac, block_n):
    # The backward stores dQ from its key loop when dq_in_one_pass says so: then no query may see
    # keys of two key tiles (tiles of block_n positions, or of block_n units of a column).
    attention = pytest.importorskip("jukebox_fast.kernels.attention", reason="the kernels need triton")
    pattern = AttentionPattern(kind, block_ctx=bc, prime_len=prime_window(prime, 2) if prime else 0)
    if not attention.dq_in_one_pass(kind, lk, bc, pattern.prime_len, block_n):
        return
    lq = max(1, round(lk * q_frac)) if kind != Kind.CROSS else 1 + round(30 * q_frac)
    q_pos = torch.arange(lq) + (0 if kind == Kind.CROSS else lk - lq)
    seen = pattern.visible(q_pos, torch.arange(lk))  # [lq, lk]
    key_units = torch.arange(lk) // bc if kind == Kind.COLUMN else torch.arange(lk)
    tiles = key_units // block_n  # [lk] the key tile of each key
    for row in seen:
        assert len(tiles[row].unique()) <= 1, (pattern, lq, lk, block_n)
