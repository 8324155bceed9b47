"""What a prior is conditioned on: artist, genres and timing (``y_emb``), and for upsamplers the
codes of the level above (``conditioner_blocks.0``).

Names follow the original (``bow_genre_emb.emb``, ``artist_emb.emb``, ``total_length_emb.emb``,
``absolute_pos_emb.emb``, ``relative_pos_emb.emb``; ``x_emb``, ``cond``, ``ln``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .checks import require_all
from .encdec import DecoderConvBlock
from .transformer import LayerNorm

__all__ = ["SimpleEmbedding", "RangeEmbedding", "LabelConditioner", "Conditioner"]


class SimpleEmbedding(nn.Module):
    """An embedding table ``emb`` [bins, width] whose lookups must lie in [0, bins)."""

    def __init__(self, bins: int, width: int, init_scale: float = 1.0, what: str = "id"):
        super().__init__()
        self.bins, self.what = bins, what
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        require_all((ids >= 0) & (ids < self.bins),
                    lambda: f"{self.what} must lie in [0, {self.bins}), got values in [{int(ids.min())}, {int(ids.max())}]")
        return self.emb(ids)


class RangeEmbedding(nn.Module):
    """Embeds positions in [lo, hi) through ``bins`` equal bins.

    With ``n_time`` > 1 the span [start, end) is sampled at ``start + (end − start)·i/n_time``
    (float32, in exactly that order: bins at boundaries depend on it); with ``n_time`` = 1 only
    ``start`` is embedded. ``clamp`` first clamps ``end`` into [lo, hi].
    """

    def __init__(self, n_time: int, bins: int, span: tuple[float, float], width: int, init_scale: float = 1.0,
                 clamp: bool = False, what: str = "position"):
        super().__init__()
        self.n_time, self.bins, self.clamp, self.what = n_time, bins, clamp, what
        self.lo, self.hi = span
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def forward(self, start: torch.Tensor, end: torch.Tensor | None = None) -> torch.Tensor:
        """start, end: [N, 1] -> [N, n_time, width]."""
        require_all((start >= self.lo) & (start < self.hi),
                    lambda: f"{self.what} must lie in [{self.lo:g}, {self.hi:g}), got {start.view(-1).tolist()}")
        if end is not None and not self.clamp:
            require_all((end >= self.lo) & (end <= self.hi),
                        lambda: f"{self.what} end must lie in [{self.lo:g}, {self.hi:g}], got {end.view(-1).tolist()}")
        start = start.float()
        if self.n_time == 1:
            position = start
        else:
            end = (end.clamp(self.lo, self.hi) if self.clamp else end).float()
            step = torch.arange(self.n_time, dtype=torch.float32, device=start.device).view(1, -1) / self.n_time
            position = start + (end - start) * step  # [N, n_time]
        u = (position - self.lo) / (self.hi - self.lo)
        return self.emb(torch.floor(self.bins * u).long())


class LabelConditioner(nn.Module):
    """``y`` [N, 4 + G] = (total_length, offset, length, artist, G genre ids or −1) ->
    start embedding [N, 1, width] and, at the top level, the timing embedding [N, n_time, width]."""

    def __init__(self, y_bins: tuple[int, int], out_width: int, init_scale: float, max_bow_genre_size: int,
                 include_time_signal: bool, n_time: int = 0, t_bins: int = 0, sr: int = 44100,
                 min_duration: float | None = None, max_duration: float | None = None):
        super().__init__()
        genres, artists = y_bins
        self.max_bow_genre_size = max_bow_genre_size
        self.bow_genre_emb = SimpleEmbedding(genres, out_width, init_scale, "genre ids")
        self.artist_emb = SimpleEmbedding(artists, out_width, init_scale, "artist ids")
        self.include_time_signal = include_time_signal
        if include_time_signal:
            total = (min_duration * sr, max_duration * sr)
            self.total_length_emb = RangeEmbedding(1, t_bins, total, out_width, init_scale,
                                                   what="total_length (samples; min_duration·sr to max_duration·sr)")
            self.absolute_pos_emb = RangeEmbedding(n_time, t_bins, (0.0, max_duration * sr), out_width, init_scale,
                                                   what="offset (samples)")
            self.relative_pos_emb = RangeEmbedding(n_time, t_bins, (0.0, 1.0), out_width, init_scale, clamp=True,
                                                   what="offset / total_length")

    @property
    def n_labels(self) -> int:
        return 4 + self.max_bow_genre_size

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if y.dim() != 2 or y.shape[1] != self.n_labels:
            raise ValueError(f"labels y must be [N, {self.n_labels}] (total_length, offset, length, artist, "
                             f"{self.max_bow_genre_size} genres), got {tuple(y.shape)}")
        total_length, offset, length, artist, genre = y[:, 0:1], y[:, 1:2], y[:, 2:3], y[:, 3:4], y[:, 4:]
        artist_emb = self.artist_emb(artist)  # [N, 1, width]
        used = (genre >= 0).unsqueeze(2)  # [N, G, 1]: −1 marks an empty genre slot
        genre_emb = (self.bow_genre_emb(genre.clamp(min=0)) * used).sum(dim=1, keepdim=True)
        start_emb = genre_emb + artist_emb
        if not self.include_time_signal:
            return start_emb, None
        start, end = offset.float(), (offset + length).float()
        total = total_length.float()
        timing = (self.total_length_emb(total) + self.absolute_pos_emb(start, end)
                  + self.relative_pos_emb(start / total, end / total))
        return start_emb, timing


class Conditioner(nn.Module):
    """Upper-level codes [N, T_up] -> [N, T_up·stride^down, width]: code embedding, the VQ-VAE's
    decoder block (dilated residual stacks and transposed convolutions), LayerNorm."""

    def __init__(self, bins: int, width: int, down_t: int, stride_t: int, cond_width: int, cond_depth: int,
                 m_conv: float, dilation_growth_rate: int, dilation_cycle: int | None, zero_out: bool,
                 res_scale: bool, checkpoint_res: int, init_scale: float = 1.0):
        super().__init__()
        self.bins = bins
        self.x_emb = nn.Embedding(bins, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.cond = DecoderConvBlock(width, width, down_t, stride_t, cond_width, cond_depth, m_conv,
                                     dilation_growth_rate, dilation_cycle, zero_out, res_scale,
                                     reverse_decoder_dilation=False, checkpoint_res=checkpoint_res)
        self.ln = LayerNorm(width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.x_emb(z).permute(0, 2, 1)  # [N, width, T_up]
        h = self.cond(h).permute(0, 2, 1)  # [N, T, width]
        return self.ln(h)
