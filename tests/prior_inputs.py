"""Inputs for a prior's forward: random codes and label rows (shared by the parity, kernel, GPU
and sampling tests and the benchmarks; nothing here needs HF transformers)."""
from __future__ import annotations

import torch


def labels(prior, n: int, seed: int = 0) -> torch.Tensor:
    """y rows: a song 1.5 × min_duration long, this window at offset 0, two genres, lyrics."""
    g = torch.Generator().manual_seed(seed)
    hps = prior.hps
    total = int(1.5 * (hps.min_duration or 10) * hps.sr)
    genres = [5, 7][: hps.max_bow_genre_size] + [-1] * max(0, hps.max_bow_genre_size - 2)
    rows = torch.tensor([[total, 0, prior.sample_length, 3 + i] + genres for i in range(n)])
    if prior.n_tokens:
        rows = torch.cat([rows, torch.randint(0, hps.n_vocab, (n, prior.n_tokens), generator=g)], dim=1)
    return rows


def codes(prior, n: int):
    z = torch.randint(0, prior.bins, (n, prior.hps.n_ctx))
    if not prior.x_cond:
        return [z]
    return [z, torch.randint(0, prior.bins, (n, prior.hps.n_ctx // prior.cond_downsample))]
