"""The hierarchical VQ-VAE: one encoder, codebook and decoder per level.

Level 0 is the finest (hop 8 in the released model), the last level the coarsest (hop 128).
Audio is [N, T, 1] float in [-1, 1]; codes are int64 [N, T // hop_level].
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn

from .. import hparams as hparams_mod
from ..hparams import VQVAEHparams
from .bottleneck import Bottleneck
from .encdec import Decoder, Encoder
from .losses import (Bandwidth, multispectral_loss, reconstruction_loss, spectral_convergence,
                     spectral_loss)

__all__ = ["VQVAE", "make_vqvae"]


def _average(metrics: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = metrics[0].keys() if metrics else ()
    return {k: sum(m[k].float() for m in metrics) / len(metrics) for k in keys}


class VQVAE(nn.Module):
    """Hierarchical VQ-VAE with the original's module names, losses and codebook updates.

    Build it with :func:`jukebox_fast.make_vqvae` or :func:`jukebox_fast.load_vqvae`.
    ``bandwidth`` (see :func:`~jukebox_fast.models.losses.calculate_bandwidth`) normalises the
    training losses; it defaults to ones.
    """

    def __init__(self, hps: VQVAEHparams):
        super().__init__()
        self.hps = hps
        self.levels = hps.levels
        self.l_bins = hps.l_bins
        self.downs_t, self.strides_t = hps.downs_t, hps.strides_t
        self.hop_lengths = hps.hop_lengths
        self.sample_length = hps.sample_length
        self.z_shapes = hps.z_shapes
        self.commit = hps.commit
        self.bandwidth = Bandwidth()

        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level, mult in zip(range(hps.levels), hps.multipliers()):
            kwargs = dict(
                width=hps.width * mult,
                depth=hps.depth * mult,
                m_conv=hps.m_conv,
                dilation_growth_rate=hps.dilation_growth_rate,
                dilation_cycle=hps.dilation_cycle,
                reverse_decoder_dilation=hps.vqvae_reverse_decoder_dilation,
            )
            args = (1, hps.emb_width, level + 1, hps.downs_t[: level + 1], hps.strides_t[: level + 1])
            self.encoders.append(Encoder(*args, **kwargs))
            self.decoders.append(Decoder(*args, **kwargs))
        self.bottleneck = Bottleneck(hps.l_bins, hps.emb_width, hps.l_mu, hps.levels,
                                     hps.revival_threshold, hps.codebook_mode)

    # -- input checks -----------------------------------------------------------------------------
    def _param(self) -> torch.Tensor:
        return self.decoders[0].out.weight

    def _levels(self, start_level: int, end_level: int | None) -> range:
        end = self.levels if end_level is None else end_level
        if not 0 <= start_level < end <= self.levels:
            raise ValueError(
                f"need 0 <= start_level < end_level <= {self.levels}, got start_level={start_level}, "
                f"end_level={end_level}"
            )
        return range(start_level, end)

    def _check_audio(self, x, levels: Sequence[int], any_length: bool = False) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected audio as a torch.Tensor [batch, samples, 1], got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"expected audio of shape [batch, samples, 1], got shape {tuple(x.shape)}")
        if x.shape[-1] != 1:
            raise ValueError(
                f"expected 1 audio channel (shape [batch, samples, 1]), got {x.shape[-1]} channels in "
                f"shape {tuple(x.shape)}; mix to mono first"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected float audio in [-1, 1], got dtype {x.dtype}")
        hop = max(self.hop_lengths[level] for level in levels)
        if any_length:  # the strided convolutions floor: T // hop codes, as the original's encoder
            if x.shape[0] == 0 or x.shape[1] < hop:
                raise ValueError(f"expected a non-empty batch of at least {hop} samples (one code of level "
                                 f"{max(levels)}), got shape {tuple(x.shape)}")
        elif x.shape[0] == 0 or x.shape[1] == 0 or x.shape[1] % hop:
            raise ValueError(
                f"expected a non-empty batch of audio whose length is a multiple of {hop} samples "
                f"(the hop of level {max(levels)}), got shape {tuple(x.shape)}"
            )
        if x.device != self._param().device:
            raise ValueError(f"audio is on {x.device} but the model is on {self._param().device}")

    def _check_codes(self, zs, levels: range) -> None:
        if not isinstance(zs, (list, tuple)) or len(zs) != len(levels):
            got = f"{len(zs)} items" if isinstance(zs, (list, tuple)) else type(zs).__name__
            raise ValueError(
                f"expected a list of {len(levels)} code tensors (levels {levels.start}..{levels.stop - 1}), got {got}"
            )
        for level, z in zip(levels, zs):
            if not isinstance(z, torch.Tensor) or z.dim() != 2:
                shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(f"codes of level {level} must be a [batch, time] tensor, got {shape}")
            if z.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"codes of level {level} must be int64 or int32 code indices, got {z.dtype}")
            if z.numel() == 0:
                raise ValueError(f"codes of level {level} are empty (shape {tuple(z.shape)}): nothing to decode")
            if z.device != self._param().device:
                raise ValueError(f"codes of level {level} are on {z.device} but the model is on {self._param().device}")
        z = zs[0]
        if z.numel() and z.device.type != "meta":  # (a memory plan traces on meta: no values)
            # Checked here because an out-of-range index is a device-side assert on CUDA.
            low, high = (int(v) for v in torch.aminmax(z))
            if low < 0 or high >= self.l_bins:
                raise ValueError(
                    f"codes of level {levels.start} must lie in [0, {self.l_bins}), got values in [{low}, {high}]"
                )

    # -- encode / decode ----------------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Audio [N, T, 1] -> [N, 1, T] in the model's dtype."""
        return x.permute(0, 2, 1).to(self._param().dtype)

    @staticmethod
    def postprocess(x: torch.Tensor) -> torch.Tensor:
        """[N, 1, T] -> [N, T, 1]."""
        return x.permute(0, 2, 1)

    @property
    def first_trained_level(self) -> int:
        """The lowest level whose codebook was trained or initialised (0 for a fresh model, or one
        trained whole; 1 for the demo's, which trains levels 1 and 2 only)."""
        return next((level for level, block in enumerate(self.bottleneck.level_blocks) if block.init), 0)

    def _check_trained(self, levels: Sequence[int]) -> None:
        """Refuse levels a partly trained model never trained (``train_vqvae(start_level=...)``):
        their codebooks are all zero, so their codes and audio would be meaningless. A model
        with no level trained (a fresh one, e.g. for a benchmark) is let through."""
        blocks = self.bottleneck.level_blocks
        missing = [level for level in levels if not blocks[level].init]
        trained = [level for level, block in enumerate(blocks) if block.init]
        if missing and trained:
            raise ValueError(f"level(s) {missing} of this VQ-VAE were never trained; encode or decode its trained "
                             f"level(s) {trained}")

    @staticmethod
    def _check_chunks(bs_chunks: int) -> None:
        if not isinstance(bs_chunks, int) or isinstance(bs_chunks, bool) or bs_chunks < 1:
            raise ValueError(f"bs_chunks must be an integer >= 1 (pieces of the batch), got {bs_chunks!r}")

    def encode(self, x: torch.Tensor, start_level: int = 0, end_level: int | None = None, bs_chunks: int = 1,
               check_finite: bool = True) -> list[torch.Tensor]:
        """Audio [N, T, 1] -> codes ``[int64 [N, T // hop_l] for l in start_level..end_level-1]``.

        T may be any length of at least one code of the highest level asked for: like the
        original's encoder, the strided convolutions drop what is left past the last whole code.
        ``bs_chunks`` splits the batch into that many pieces processed one after the other (less
        memory). Only the requested levels' encoders run (the original runs all of them).
        ``check_finite`` refuses NaN or inf samples: one reduction and one host read; pass False
        inside a CUDA graph capture, where encoding then makes no host sync at all.
        """
        levels = self._levels(start_level, end_level)
        self._check_chunks(bs_chunks)
        self._check_audio(x, levels, any_length=True)
        self._check_trained(levels)
        if check_finite and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).flatten().nonzero()
            raise ValueError(f"audio holds {len(bad)} NaN or inf sample(s) (the first at flat index {int(bad[0])}); "
                             "its codes would be meaningless")
        per_chunk = []
        with torch.no_grad():  # codes carry no gradient
            for chunk in torch.chunk(x, bs_chunks, dim=0):
                x_in = self.preprocess(chunk)
                latents = [self.encoders[level](x_in)[-1] for level in levels]
                per_chunk.append(self.bottleneck.encode(latents, start_level=levels.start))
        return [torch.cat(level_codes, dim=0) for level_codes in zip(*per_chunk)]

    def decode(self, zs: Sequence[torch.Tensor], start_level: int = 0, end_level: int | None = None, bs_chunks: int = 1) -> torch.Tensor:
        """Codes (one tensor per level from ``start_level`` to ``end_level - 1``) -> audio [N, T, 1].

        Only the first (level ``start_level``) is decoded, with that level's decoder, as in the
        original; T = codes × hop of that level.
        """
        levels = self._levels(start_level, end_level)
        self._check_chunks(bs_chunks)
        self._check_codes(zs, levels)
        self._check_trained([start_level])
        decoder, block = self.decoders[start_level], self.bottleneck.level_blocks[start_level]
        outs = [self.postprocess(decoder([block.decode(z)], all_levels=False))
                for z in torch.chunk(zs[0], bs_chunks, dim=0)]
        return torch.cat(outs, dim=0)

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor) -> None:
        """Initialise every level's codebook from random latent rows of audio x [N, T, 1].

        The first training batch does this by itself; call it to get meaningful codes from an
        untrained model (tests, parity checks, benchmarks).
        """
        self._check_audio(x, range(self.levels))
        x_in = self.preprocess(x)
        for level, block in enumerate(self.bottleneck.level_blocks):
            block.init_k(block.preprocess(self.encoders[level](x_in)[-1]))

    def take_levels(self, other: "VQVAE", levels: Sequence[int]) -> "VQVAE":
        """Adopt ``other``'s encoder, codebook (with its EMA state) and decoder at each of
        ``levels``, in place: levels trained apart (``train_vqvae(start_level=..., end_level=...)``)
        joined in one model. Both must have the same hyper-parameters."""
        if other.hps != self.hps:
            raise ValueError("take_levels joins VQ-VAEs of the same hyper-parameters; these differ")
        for level in levels:
            self._levels(level, level + 1)  # a ValueError for a level the model has not
            for mine, theirs in ((self.encoders, other.encoders), (self.decoders, other.decoders)):
                mine[level].load_state_dict(theirs[level].state_dict())
            block, source = self.bottleneck.level_blocks[level], other.bottleneck.level_blocks[level]
            block.load_state_dict(source.state_dict())
            block.k_sum, block.k_elem = (None if t is None else t.clone() for t in (source.k_sum, source.k_elem))
            block.threshold, block.init = source.threshold, source.init
        return self

    # -- training -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, start_level: int = 0,
                end_level: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: audio [N, T, 1] -> (reconstruction [N, T, 1] from ``start_level``, loss, metrics).

        The loss is the original's: Σ_levels recons + spectral·Σ spec + multispectral·Σ multispec
        + commit·Σ commit, plus Σ codebook losses in ``"vqvae1"`` mode. In training mode the
        codebooks are initialised from the first batch and updated by EMA with random restarts.
        ``start_level`` > 0 gives the loss of levels ``start_level`` and up, ``end_level`` that of
        the levels below it (each term as the whole pass computes it: every level is its own stack);
        the other levels are never run, or initialised.
        """
        hps = self.hps
        levels = self._levels(start_level, end_level)
        self._check_audio(x, levels)
        x_in = self.preprocess(x)
        latents = [self.encoders[level](x_in)[-1] for level in levels]
        bottleneck = dict(zip(levels, self.bottleneck(latents, start_level)))

        x_target = x.float()
        device = x_target.device
        recons = torch.zeros((), device=device)
        spec = torch.zeros((), device=device)
        multispec = torch.zeros((), device=device)
        metrics: dict[str, torch.Tensor] = {}
        for level in reversed(levels):
            x_out = self.postprocess(self.decoders[level]([bottleneck[level].quantised], all_levels=False)).float()
            this_recons = reconstruction_loss(hps.loss_fn, x_target, x_out, hps, self.bandwidth)
            # Weight 0 in the released model: still logged, but no graph for backward to zero out.
            with torch.set_grad_enabled(torch.is_grad_enabled() and hps.spectral != 0):
                if hps.use_nonrelative_specloss:
                    this_spec = spectral_loss(x_target, x_out).mean() / self.bandwidth.spec
                else:
                    this_spec = spectral_convergence(x_target, x_out).mean()
            this_multispec = multispectral_loss(
                x_target, x_out, hps.multispec_loss_n_fft, hps.multispec_loss_hop_length,
                hps.multispec_loss_window_size).mean() / self.bandwidth.spec
            metrics[f"recons_loss_l{level + 1}"] = this_recons
            metrics[f"spectral_loss_l{level + 1}"] = this_spec
            metrics[f"multispectral_loss_l{level + 1}"] = this_multispec
            recons = recons + this_recons
            spec = spec + this_spec
            multispec = multispec + this_multispec

        commit = sum(out.commit_loss for out in bottleneck.values())
        codebook = sum(out.codebook_loss for out in bottleneck.values())
        loss = recons + hps.spectral * spec + hps.multispectral * multispec + hps.commit * commit + codebook

        with torch.no_grad():  # metrics of the lowest level's reconstruction, as the original logs them
            metrics.update(
                spectral_convergence=spectral_convergence(x_target, x_out).mean(),
                l2_loss=reconstruction_loss("l2", x_target, x_out, hps, self.bandwidth),
                l1_loss=reconstruction_loss("l1", x_target, x_out, hps, self.bandwidth),
                linf_loss=reconstruction_loss("linf", x_target, x_out, hps, self.bandwidth),
            )
        metrics.update(recons_loss=recons, spectral_loss=spec, multispectral_loss=multispec, commit_loss=commit)
        if hps.codebook_mode == "vqvae1":
            metrics["codebook_loss"] = codebook
        if self.training:
            metrics.update(_average([out.metrics for out in bottleneck.values()]))
        return x_out, loss, {k: v.detach() for k, v in metrics.items()}


def make_vqvae(name_or_hparams: str | VQVAEHparams = "vqvae", device: torch.device | str | None = None) -> VQVAE:
    """A randomly initialised VQ-VAE from a preset name (``"vqvae"``, ``"tiny_vqvae"``) or hparams.

    Built directly on ``device`` (default: the current default device, so it also works under
    ``with torch.device("meta"):``). Codebooks start at zero and are initialised from the first
    training batch, as in the original.
    """
    hps = hparams_mod.get(name_or_hparams) if isinstance(name_or_hparams, str) else name_or_hparams
    if not isinstance(hps, VQVAEHparams):
        raise TypeError(f"expected a preset name or VQVAEHparams, got {type(hps).__name__}")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return VQVAE(hps)
