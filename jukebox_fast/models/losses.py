"""VQ-VAE training losses: reconstruction (l1/l2/linf/lmix) and spectral, as the original defines them.

Audio tensors are [N, T, C] (C = 1 or 2, averaged to mono for spectra). Every loss is divided by
a data "bandwidth" (variance, mean absolute value and mean spectrum norm of the training audio)
so that its scale does not depend on the loudness of the data set.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "Bandwidth",
    "calculate_bandwidth",
    "stft_magnitude",
    "spectral_loss",
    "multispectral_loss",
    "spectral_convergence",
    "reconstruction_loss",
]

# The original's default STFT (spectral loss, convergence metric, bandwidth): n_fft, hop, window.
DEFAULT_STFT = (2048, 256, 1536)


@dataclass
class Bandwidth:
    """Normalisers of the losses, measured on the training data by :func:`calculate_bandwidth`.
    The default of ones leaves the losses unnormalised."""

    l2: float = 1.0
    l1: float = 1.0
    spec: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, window: int) -> torch.Tensor:
    """|STFT| of mono signals [N, T] -> [N, n_fft // 2 + 1, frames] (Hann window, centred, reflect)."""
    win = torch.hann_window(window, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop, win_length=window, window=win, center=True,
                      pad_mode="reflect", return_complex=True).abs()


def _mono(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return x.float().mean(dim=-1)
    if x.dim() == 2:
        return x.float()
    raise ValueError(f"expected audio [N, T] or [N, T, C], got {tuple(x.shape)}")


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each item: [N, ...] -> [N]."""
    return x.reshape(x.shape[0], -1).square().sum(dim=-1).sqrt()


def spectral_loss(x_in: torch.Tensor, x_out: torch.Tensor, stft: tuple[int, int, int] = DEFAULT_STFT) -> torch.Tensor:
    """‖ |S(x_in)| − |S(x_out)| ‖ per item [N]."""
    a, b = _mono(x_in), _mono(x_out)
    return _norm(stft_magnitude(a, *stft) - stft_magnitude(b, *stft))


def multispectral_loss(x_in: torch.Tensor, x_out: torch.Tensor, n_ffts, hops, windows) -> torch.Tensor:
    """:func:`spectral_loss` averaged over several STFT settings, per item [N]."""
    losses = [spectral_loss(x_in, x_out, s) for s in zip(n_ffts, hops, windows)]
    return sum(losses) / len(losses)


def spectral_convergence(x_in: torch.Tensor, x_out: torch.Tensor, epsilon: float = 2e-3) -> torch.Tensor:
    """‖|S(x_in)| − |S(x_out)|‖ / ‖|S(x_in)|‖ per item [N]; 0 where the input is near silent."""
    spec_in = stft_magnitude(_mono(x_in), *DEFAULT_STFT)
    spec_out = stft_magnitude(_mono(x_out), *DEFAULT_STFT)
    gt = _norm(spec_in)
    return _norm(spec_in - spec_out) * (gt > epsilon).float() / gt.clamp(min=epsilon)


def reconstruction_loss(kind: str, x_target: torch.Tensor, x_pred: torch.Tensor, hps, bandwidth: Bandwidth) -> torch.Tensor:
    """The original's ``_loss_fn``: l1, l2, linf (mean of each item's ``linf_k`` largest squared
    errors) or lmix (their mix weighted by ``lmix_l1/l2/linf``)."""
    if kind == "l1":
        return (x_pred - x_target).abs().mean() / bandwidth.l1
    if kind == "l2":
        return (x_pred - x_target).square().mean() / bandwidth.l2
    if kind == "linf":
        residual = (x_pred - x_target).square().reshape(x_target.shape[0], -1)
        # The original requires linf_k samples per item; a shorter window uses all of them.
        values, _ = torch.topk(residual, min(hps.linf_k, residual.shape[1]), dim=1)
        return values.mean() / bandwidth.l2
    if kind == "lmix":
        loss = torch.zeros((), device=x_target.device)
        for sub, weight in (("l1", hps.lmix_l1), ("l2", hps.lmix_l2), ("linf", hps.lmix_linf)):
            if weight:
                loss = loss + weight * reconstruction_loss(sub, x_target, x_pred, hps, bandwidth)
        return loss
    raise ValueError(f"unknown loss_fn {kind!r}; expected l1, l2, linf or lmix")


def calculate_bandwidth(clips: Iterable[np.ndarray | torch.Tensor], stft: tuple[int, int, int] = DEFAULT_STFT) -> Bandwidth:
    """Measure the loss normalisers on training audio: clips of shape [T] or [T, C].

    l2 = variance of the samples, l1 = mean absolute sample, spec = mean over clips of the
    norm of the (mono) magnitude spectrum.
    """
    n = total = total_sq = l1 = spec_total = 0.0
    n_clips = 0
    for clip in clips:
        x = torch.as_tensor(np.asarray(clip), dtype=torch.float64)
        mono = x.mean(dim=-1) if x.dim() == 2 else x
        spec_total += float(_norm(stft_magnitude(mono.unsqueeze(0), *stft))[0])
        n_clips += 1
        n += x.numel()
        total += float(x.sum())
        total_sq += float(x.square().sum())
        l1 += float(x.abs().sum())
    if n_clips == 0:
        raise ValueError("calculate_bandwidth needs at least one clip")
    mean = total / n
    return Bandwidth(l2=total_sq / n - mean**2, l1=l1 / n, spec=spec_total / n_clips)
