"""The vector-quantisation bottleneck: one codebook ``k`` [l_bins, emb_width] per level.

Two ways to learn the codebook (``VQVAEHparams.codebook_mode``):

- ``"ema"`` (the released Jukebox): ``k`` is a buffer moved by exponential moving averages of the
  vectors assigned to each code; codes whose average usage falls under ``threshold`` are restarted
  on random vectors of the current batch.
- ``"vqvae1"``: ``k`` is a parameter trained by the codebook loss ‖sg[E(x)] − e‖².

Either way the state dict holds only ``k``, under the original's name. The EMA statistics
(``k_sum``, ``k_elem``) are non-persistent buffers: they follow ``.to()`` but stay out of the
state dict, as in the original where they are plain attributes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .. import ops

__all__ = ["BottleneckBlock", "Bottleneck", "BottleneckOutput"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class BottleneckOutput(NamedTuple):
    codes: torch.Tensor  # int64 [N, T]
    quantised: torch.Tensor  # [N, emb_width, T], straight-through to the encoder
    commit_loss: torch.Tensor  # ‖sg[e] − E(x)‖² / numel
    codebook_loss: torch.Tensor  # ‖sg[E(x)] − e‖² / numel in "vqvae1" mode, else 0
    metrics: dict[str, torch.Tensor]


class BottleneckBlock(nn.Module):
    """Codebook of one level."""

    def __init__(self, k_bins: int, emb_width: int, mu: float, threshold: float = 1.0, codebook_mode: str = "ema"):
        super().__init__()
        self.k_bins, self.emb_width, self.mu = k_bins, emb_width, mu
        self.threshold = threshold
        self.codebook_mode = codebook_mode
        k = torch.zeros(k_bins, emb_width)
        if codebook_mode == "vqvae1":
            self.k = nn.Parameter(k)
        else:
            self.register_buffer("k", k)
        self.register_buffer("k_sum", None, persistent=False)  # [k_bins, emb_width]
        self.register_buffer("k_elem", None, persistent=False)  # [k_bins]
        self.init = False

    # -- codebook initialisation and EMA ---------------------------------------------------------
    def _random_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``k_bins`` random rows of x [M, D] (tiled with small noise when M < k_bins)."""
        m, d = x.shape
        if m < self.k_bins:
            x = x.repeat((self.k_bins + m - 1) // m, 1)
            x = x + torch.randn_like(x) * (0.01 / math.sqrt(d))
        rows = x[torch.randperm(x.shape[0], device=x.device)[: self.k_bins]].contiguous()
        if _distributed():
            dist.broadcast(rows, 0)  # every rank restarts with rank 0's choice
        return rows

    @torch.no_grad()
    def init_k(self, x: torch.Tensor) -> None:
        """Initialise the codebook from data: random rows of x [M, emb_width]."""
        self.k.copy_(self._random_rows(x.float()))
        self.k_sum = self.k.detach().clone()
        self.k_elem = torch.ones(self.k_bins, device=self.k.device)
        self.init = True

    @torch.no_grad()
    def restore_k(self, num_tokens: float | None = None, threshold: float = 1.0) -> None:
        """Start the EMA from a loaded codebook, as if each code had been used
        ``num_tokens / k_bins`` times (the original does this before fine-tuning)."""
        usage = 1.0 if num_tokens is None else num_tokens / self.k_bins
        self.k_sum = self.k.detach().clone() * usage
        self.k_elem = torch.full((self.k_bins,), float(usage), device=self.k.device)
        self.threshold = threshold
        self.init = True

    def train_state(self) -> dict:
        """The EMA's running state, which the state dict leaves out (the released checkpoints hold
        only ``k``): training checkpoints save it so a resumed run continues exactly."""
        return {"init": self.init, "k_sum": self.k_sum, "k_elem": self.k_elem, "threshold": self.threshold}

    def load_train_state(self, state: dict) -> None:
        self.init, self.threshold = state["init"], state["threshold"]
        device = self.k.device
        self.k_sum = None if state["k_sum"] is None else state["k_sum"].to(device)
        self.k_elem = None if state["k_elem"] is None else state["k_elem"].to(device)

    @torch.no_grad()
    def update_k(self, x: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """One EMA step from this batch's statistics (rows per code [k_bins], sum of the rows of
        each code [k_bins, emb_width]); restarts unused codes on random rows of x [M, emb_width]."""
        counts, sums = counts.float(), sums.float()
        candidates = self._random_rows(x.float())
        if _distributed():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        if self.k_sum is None:  # a loaded codebook whose EMA was never started
            self.restore_k(threshold=self.threshold)
        old_k = self.k.detach().clone()
        self.k_sum.mul_(self.mu).add_(sums, alpha=1.0 - self.mu)
        self.k_elem.mul_(self.mu).add_(counts, alpha=1.0 - self.mu)
        used = (self.k_elem >= self.threshold).float().unsqueeze(1)  # [k_bins, 1]
        self.k.copy_(used * (self.k_sum / self.k_elem.unsqueeze(1)) + (1 - used) * candidates)
        prob = counts / counts.sum()
        return dict(
            entropy=-(prob * torch.log(prob + 1e-8)).sum(),
            used_curr=(counts >= self.threshold).sum(),
            usage=used.sum(),
            dk=torch.linalg.vector_norm(self.k - old_k) / math.sqrt(self.k.numel()),
        )

    # -- quantisation ----------------------------------------------------------------------------
    def _check_width(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.emb_width:
            raise ValueError(f"bottleneck expects latents [N, {self.emb_width}, T], got {tuple(x.shape)}")

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """[N, C, T] -> rows [N*T, C]."""
        return x.permute(0, 2, 1).reshape(-1, x.shape[1])

    def quantise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [M, D] -> (codes int64 [M], fit = mean squared distance to the chosen codes)."""
        # self.k itself, not a detached alias: the search's codebook terms are kept per tensor and
        # version (a search needs no gradient). No finiteness check here: VQVAE.encode checks its
        # audio once, and the search then makes no host sync (CUDA-graph capturable).
        codes, dist_min = ops.vq_nearest(x.detach(), self.k, check_finite=False)
        return codes, dist_min.mean()

    def dequantise(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [N, emb_width, T] -> codes int64 [N, T]."""
        self._check_width(x)
        n, _, t = x.shape
        codes, _ = self.quantise(self.preprocess(x))
        return codes.view(n, t)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, T] -> latents [N, emb_width, T]."""
        n, t = codes.shape
        return self.dequantise(codes).view(n, t, self.emb_width).permute(0, 2, 1).contiguous()

    def forward(self, x: torch.Tensor, update_k: bool = True) -> BottleneckOutput:
        self._check_width(x)
        n, _, t = x.shape
        rows = self.preprocess(x)  # [N*T, emb_width]
        prenorm = torch.linalg.vector_norm(rows - rows.mean()) / math.sqrt(rows.numel())
        if update_k and not self.init:
            self.init_k(rows)
        ema = update_k and self.codebook_mode == "ema"
        # Codes, codebook[codes], commit error and (for the EMA) per-code counts and sums, in one op.
        out = ops.vq_quantise(rows, self.k, stats=ema)  # no gradient reaches the codebook through it
        metrics = dict(fit=out.distances.mean(), pn=prenorm)
        if ema:
            metrics.update(self.update_k(rows, out.counts, out.sums))
        commit_loss = out.commit / rows.numel()
        if self.codebook_mode == "vqvae1":
            codebook_loss = (self.dequantise(out.codes) - rows.detach()).square().sum() / rows.numel()
        else:
            codebook_loss = torch.zeros((), device=rows.device)
        # The op's gradient is the straight-through estimator: d quantised / d rows = identity.
        quantised = out.quantised.view(n, t, self.emb_width).permute(0, 2, 1).contiguous()
        return BottleneckOutput(out.codes.view(n, t), quantised, commit_loss, codebook_loss, metrics)


class Bottleneck(nn.Module):
    """One :class:`BottleneckBlock` per level."""

    def __init__(self, l_bins: int, emb_width: int, mu: float, levels: int, threshold: float = 1.0,
                 codebook_mode: str = "ema"):
        super().__init__()
        self.levels = levels
        self.level_blocks = nn.ModuleList(
            BottleneckBlock(l_bins, emb_width, mu, threshold, codebook_mode) for _ in range(levels)
        )

    def encode(self, xs: list[torch.Tensor], start_level: int = 0) -> list[torch.Tensor]:
        """Latents of levels ``start_level, start_level+1, ...`` -> their codes."""
        return [block.encode(x) for block, x in zip(self.level_blocks[start_level:], xs)]

    def decode(self, zs: list[torch.Tensor], start_level: int = 0, end_level: int | None = None) -> list[torch.Tensor]:
        end_level = self.levels if end_level is None else end_level
        return [block.decode(z) for block, z in zip(self.level_blocks[start_level:end_level], zs)]

    def restore_k(self, num_tokens: list[float] | None = None, threshold: float = 1.0) -> None:
        """:meth:`BottleneckBlock.restore_k` on every level (``num_tokens`` per level)."""
        for level, block in enumerate(self.level_blocks):
            block.restore_k(None if num_tokens is None else num_tokens[level], threshold)

    def forward(self, xs: list[torch.Tensor], start_level: int = 0) -> list[BottleneckOutput]:
        """Latents of levels ``start_level, start_level+1, ...`` -> their quantised outputs."""
        outs = []
        for block, x in zip(self.level_blocks[start_level:], xs):
            out = block(x, update_k=self.training)
            if not self.training:
                # Out of training no gradient may reach the encoder through the straight-through path.
                out = out._replace(quantised=out.quantised.detach())
            outs.append(out)
        return outs
