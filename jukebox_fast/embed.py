"""Jukebox representations for music research: the top prior's hidden states as features.

The semantics are those of Castellon et al. 2021 and their jukemirlib (the features of the 5b
top prior, layer 36 by default):

1. audio, mono, 44.1 kHz, scaled so its largest magnitude is 1 (a copy: the caller's array
   is never changed);
2. the VQ-VAE's top-level codes of it, cut to the prior's ``n_ctx`` (8192 tokens, 23.8 s). The
   audio is cut first with a margin of 421 top-level tokens past ``n_ctx`` (jukemirlib's 25 s
   at the released shapes), so the codes kept see their whole receptive field (about ±80
   tokens);
3. the label row of artist "unknown", genre "unknown" (v2: artist 0, genres
   ``[0, -1, -1, -1, -1]``; genre 0 is a real embedding row), total length 62 s rounded down
   to a multiple of the prior's ``raw_to_tokens``, offset 0, no lyrics;
4. the transformer input of the training forward (``x_emb(z)`` shifted right by one, the label
   embedding at position 0, ``pos_emb[:t]``, the timing conditioning);
5. the hidden state after block L, blocks numbered from 1;
6. optionally the mean over positions (``meanpool``), per clip;
7. optionally the frame rate resampled to ``downsample_target_rate`` Hz (FFT resampling, what
   jukemirlib's default ``librosa_fft`` method does).

    >>> from jukebox_fast import load_vqvae, load_prior
    >>> from jukebox_fast.embed import extract
    >>> vqvae = load_vqvae("models/vqvae.pth.tar")
    >>> prior = load_prior("models/prior_level_2.pth.tar", "prior_5b", vqvae, layers=36)
    >>> reps = extract(vqvae, prior, audio, layers=(36,), meanpool=True)   # {36: [4800]}
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["extract", "extract_reference", "conditioning", "resample_frames", "prepare_audio", "MARGIN_TOKENS", "TOTAL_SECONDS"]

MARGIN_TOKENS = 421  # jukemirlib's cut: 25 s = 8192 x 128 + 53,924 samples, 421.3 top-level tokens
TOTAL_SECONDS = 62  # the song length of the conditioning (the prior takes more than 60 s)


def _check_prior(prior, vqvae) -> None:
    if prior.level != vqvae.hps.levels - 1:
        raise ValueError(f"representations come from the top prior (level {vqvae.hps.levels - 1}); this is the "
                         f"level-{prior.level} upsampler")
    if prior.n_tokens:
        raise ValueError("representations come from a top prior without lyrics (prior_5b, as in Castellon et al.); "
                         "this prior is conditioned on lyrics")
    if prior.hps.sr != vqvae.hps.sr or prior.raw_to_tokens != vqvae.hps.hop_lengths[-1]:
        raise ValueError(f"the prior codes for another VQ-VAE (sr {prior.hps.sr}, hop {prior.raw_to_tokens}) than this "
                         f"one (sr {vqvae.hps.sr}, hop {vqvae.hps.hop_lengths[-1]})")


def conditioning(prior) -> torch.Tensor | None:
    """The label row [1, 4 + G] of step 3: "unknown" artist and genre, 62 s, offset 0."""
    from .sample import Song

    total = int(TOTAL_SECONDS * prior.hps.sr) // prior.raw_to_tokens * prior.raw_to_tokens
    return Song(0, (0,), total).labels(prior, 0, 1)  # ids 0 / [0]: "unknown" in the v2 and v3 tables


def prepare_audio(clip, sr: int, cut: int) -> torch.Tensor:
    """One clip (1-D tensor or array) -> float32 [min(T, cut)], a copy scaled so that the whole
    clip's largest magnitude is 1 (as jukemirlib scales a file before cutting it)."""
    a = torch.as_tensor(np.asarray(clip) if not isinstance(clip, torch.Tensor) else clip)
    if a.dim() != 1:
        raise ValueError(f"a clip must be 1-D audio samples, got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        raise ValueError(f"audio must be float samples in [-1, 1], got {a.dtype}")
    if a.numel() == 0:
        raise ValueError("a clip holds no samples")
    a = a.detach()
    bad = ~torch.isfinite(a)
    if bad.any():
        raise ValueError(f"a clip holds {int(bad.sum())} NaN or inf samples (first at sample {int(bad.nonzero()[0])})")
    top = float(a.abs().max())
    a = a[:cut].to("cpu", torch.float32, copy=True)
    return a / top if top > 0 else a


def resample_frames(x: torch.Tensor, rate: float, target: float) -> torch.Tensor:
    """Frames [T, C] at ``rate`` Hz -> [ceil(T · target / rate), C] by FFT resampling (the
    spectrum cut or zero-padded, the Nyquist bin split or joined, scaled by n_out / n_in), as
    ``scipy.signal.resample`` and librosa's ``res_type="fft"``."""
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"downsample_target_rate must be a finite rate > 0 Hz, got {target}")
    n_in = x.shape[0]
    n_out = int(math.ceil(n_in * target / rate))
    if n_out == n_in:
        return x
    spec = torch.fft.rfft(x.double(), dim=0)  # [n_in // 2 + 1, C]
    keep = min(n_in, n_out)
    out = torch.zeros(n_out // 2 + 1, x.shape[1], dtype=spec.dtype)
    nyq = keep // 2 + 1
    out[:nyq] = spec[:nyq]
    if keep % 2 == 0:  # the shorter length's Nyquist bin
        if n_out < n_in:
            out[keep // 2] *= 2.0  # the two halves of the longer spectrum meet in one real bin
        else:
            out[keep // 2] *= 0.5  # one bin becomes two halves
    y = torch.fft.irfft(out, n_out, dim=0) * (n_out / n_in)
    return y.to(x.dtype)


def _as_clips(audio) -> tuple[list, str]:
    """-> (clips, how the result is shaped: "one", "batch" or "list")."""
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("audio is an empty list")
        return list(audio), "list"
    a = audio if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if a.ndim == 1:
        return [a], "one"
    if a.ndim == 2:
        if a.shape[0] == 0:
            raise ValueError("audio is an empty batch [0, T]")
        return [a[i] for i in range(a.shape[0])], "batch"
    raise ValueError(f"audio must be [T] samples, a [B, T] batch or a list of [T] clips, got shape {tuple(a.shape)}")


def _param(model) -> torch.Tensor:
    return next(model.parameters())


@torch.no_grad()
def extract(vqvae, prior, audio, layers: Sequence[int] = (36,), meanpool: bool = False, *,
            downsample_target_rate: float | None = None, dtype: torch.dtype | None = None,
            batch_size: int = 8, progress=None):
    """The top prior's hidden states for audio at the VQ-VAE's rate (44.1 kHz released).

    Args:
        vqvae, prior: from :func:`~jukebox_fast.load_vqvae` and :func:`~jukebox_fast.load_prior`
            (the top prior without lyrics; ``load_prior(..., layers=36)`` loads only what layer
            36 needs). Both on the same device; the audio goes there.
        audio: a 1-D float tensor or numpy array, a [B, T] batch, or a list of 1-D clips of any
            lengths (at least one top-level code, 128 samples, each).
        layers: blocks to read after, numbered from 1, any order; only blocks up to the deepest
            run.
        meanpool: the mean over positions of each clip.
        downsample_target_rate: resample the frames from the prior's rate (sr / hop, 344.5 Hz
            released) to this rate, before any meanpool.
        dtype: the blocks' dtype (LayerNorm and softmax stay fp32); default bf16 on a GPU,
            fp32 on the CPU. Results are float32 either way.
        batch_size: clips per forward of the prior.
        progress: called with the number of clips done after each batch (a progress bar's
            ``update``), or None.

    Returns:
        On the prior's device: ``{layer: float32 tensor [positions, width]}`` for one clip, ``[B, positions, width]``
        for a batch, a list of per-clip dicts for a list; ``[width]`` / ``[B, width]`` with
        ``meanpool``. positions = min(T // hop, n_ctx) (or the resampled count). Each clip's
        result is what it gives alone: clips of other lengths in the same batch do not touch
        it (the layers are causal, and the VQ-VAE encodes each clip on its own: the prior's
        forward, the bulk of the work, is what is batched).
    """
    _check_prior(prior, vqvae)
    wanted = [int(n) for n in layers]
    depth = len(prior.prior.transformer._attn_mods)
    if not wanted or min(wanted) < 1 or max(wanted) > depth:
        raise ValueError(f"layers are numbered 1..{depth} (the blocks this prior holds), got {list(layers)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    clips, shape = _as_clips(audio)
    device = _param(prior).device
    if _param(vqvae).device != device:
        raise ValueError(f"the VQ-VAE is on {_param(vqvae).device} but the prior is on {device}")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sr, hop, n_ctx = vqvae.hps.sr, vqvae.hps.hop_lengths[-1], prior.hps.n_ctx
    cut = (n_ctx + MARGIN_TOKENS) * hop
    prepared = [prepare_audio(c, sr, cut) for c in clips]
    for i, a in enumerate(prepared):
        if a.numel() < hop:
            raise ValueError(f"clip {i} has {a.numel()} samples; at least {hop} (one top-level code) are needed")
    y = conditioning(prior)
    results: list[dict[int, torch.Tensor]] = [{} for _ in prepared]
    # Longest first, so a batch holds clips of similar lengths (less padding).
    order = sorted(range(len(prepared)), key=lambda i: -prepared[i].numel())
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        codes = {}
        for i in batch:  # one clip at a time: a batched convolution rounds differently, which can
            # flip a near-tied code, and a clip must give what it gives alone
            x = prepared[i].view(1, -1, 1).to(device)  # [1, T, 1]
            codes[i] = vqvae.encode(x, start_level=vqvae.hps.levels - 1)[0][0, :n_ctx]  # [t]
        t_max = max(codes[i].shape[0] for i in batch)
        z = torch.stack([torch.nn.functional.pad(codes[i], (0, t_max - codes[i].shape[0])) for i in batch])  # [b, t]
        states = prior.hidden_states(z, wanted, y.expand(len(batch), -1).to(device), dtype=dtype)
        for row, i in enumerate(batch):
            t = codes[i].shape[0]
            for n in wanted:
                h = states[n][row, :t].float()  # [t, width]
                if downsample_target_rate is not None:
                    h = resample_frames(h.cpu(), sr / hop, downsample_target_rate)
                results[i][n] = h.mean(dim=0) if meanpool else h
        if progress is not None:
            progress(len(batch))
    if shape == "one":
        return results[0]
    if shape == "batch":
        return {n: torch.stack([r[n] for r in results]) for n in wanted}
    return results


@torch.no_grad()
def extract_reference(vqvae, prior, clip, layers: Sequence[int] = (36,), all_levels: bool = False
                      ) -> dict[int, torch.Tensor]:
    """jukemirlib's method, step by step on one clip in fp32: encode, build the input by hand
    (embed, roll by one, the label embedding in position 0, positions, timing), then the
    original-style loop over the blocks, keeping the states asked for. The oracle of
    :func:`extract` in the tests and the baseline of ``benchmarks/bench_embed.py``
    (``all_levels``: encode every level and keep the top one, as the original's ``encode``)."""
    _check_prior(prior, vqvae)
    device = _param(prior).device
    hop, n_ctx = vqvae.hps.hop_lengths[-1], prior.hps.n_ctx
    a = prepare_audio(clip, vqvae.hps.sr, (n_ctx + MARGIN_TOKENS) * hop)
    start = 0 if all_levels else vqvae.hps.levels - 1
    z = vqvae.encode(a.view(1, -1, 1).to(device), start_level=start)[-1][:, :n_ctx]  # [1, t]
    x_cond, y_cond, _ = prior.get_cond(None, conditioning(prior).to(device))  # [1, n_ctx, w], [1, 1, w]
    lm, t = prior.prior, z.shape[1]
    x = lm.x_emb(z)  # [1, t, w]
    x = torch.cat([x[:, -1:], x[:, :-1]], dim=1)  # roll by one ...
    x[:, 0] = y_cond.view(1, -1)  # ... and the start is the label embedding
    x = x + lm.pos_emb()[:t] + x_cond[:, :t]
    reps = {}
    for i, block in enumerate(lm.transformer._attn_mods[: max(layers)], start=1):
        x = block(x)
        if i in layers:
            reps[i] = x[0].float()
    return reps
