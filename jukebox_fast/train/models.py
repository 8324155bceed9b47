"""Training entry points: the VQ-VAE on raw windows, a prior on the codes of a trained VQ-VAE."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .. import hparams, memory
from ..checkpoint import load_vqvae, save_prior, save_vqvae
from ..models.losses import DEFAULT_STFT, calculate_bandwidth
from ..models.prior import make_prior
from ..models.resnet import set_recompute
from ..models.vqvae import make_vqvae
from ..conditioning import Song
from ..devices import available_memory, process_device, require_memory
from ..runs import claim_output, fingerprint, hold_output
from .data import AudioFolder, ClipCodes
from .loop import TrainConfig, distributed_setup, fit

__all__ = ["train_vqvae", "train_prior"]


def _rank() -> int | None:
    """This process's rank under torchrun, or None for a single process."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _claim(out_dir, final: str, resume: bool, overwrite: bool, **settings) -> None:
    """Refuse to train over a run in ``out_dir`` unless asked to go on with it (with the same
    settings) or start over. ``steps`` is not a setting: a resumed run may go on for longer, and
    ``recompute`` and ``compile`` trade memory or start-up for time without changing what is learnt."""
    cfg = dataclasses.asdict(settings.pop("cfg"))
    for name in ("steps", "checkpoint_every", "recompute", "compile"):
        cfg.pop(name)
    claim_output(out_dir, {**settings, **cfg}, resume=resume, overwrite=overwrite and not resume,
                 made=("checkpoint.pt", final), what="a run trained", names={"vqvae": "the VQ-VAE"},
                 record=(_rank() or 0) == 0)


def train_vqvae(data: str | os.PathLike | AudioFolder, out_dir: str | os.PathLike, preset: str = "tiny_vqvae",
                cfg: TrainConfig | None = None, resume: bool = False, device: str | None = None,
                progress: bool = True, bad_files: str = "skip", overwrite: bool = False, start_level: int = 0,
                end_level: int | None = None, progress_row: int = 0):
    """Train a VQ-VAE on random windows (``sample_length`` samples) of the audio under ``data``.
    ``preset``: a preset's name or :class:`~jukebox_fast.hparams.VQVAEHparams`.
    ``start_level`` > 0 trains only that level and those above, ``end_level`` only those below it.
    Each level is its own encoder, codebook and decoder; only the gradient clipping (on the norm
    of all gradients) couples them. The other levels stay untrained, and the model refuses to
    encode or decode them; :meth:`~jukebox_fast.models.VQVAE.take_levels` joins levels trained
    apart. ``progress_row``: the terminal row of the progress bar (trainings side by side).

    Writes ``out_dir/checkpoint.pt`` (resumable) and, at the end, ``out_dir/vqvae.pth.tar``.
    A folder holding a run is only trained over with ``resume`` (go on) or ``overwrite``.
    Files that cannot be used are skipped with a warning, or stop the run (``bad_files``):
    unreadable ones, NaN or inf samples, and files shorter than the training window (the
    longest file's length, at most ``sample_length``, and never under the spectral losses'
    STFT size). Returns (model, summary).
    """
    cfg = cfg or TrainConfig()
    hps = hparams.get(preset) if isinstance(preset, str) else preset
    if not isinstance(hps, hparams.VQVAEHparams):
        raise ValueError(f"preset {preset!r} is a {type(hps).__name__[:-7].lower()}, not a VQ-VAE "
                         f"(VQ-VAE presets: {', '.join(hparams.names(hparams.VQVAEHparams))})")
    if not (isinstance(start_level, int) and 0 <= start_level < hps.levels):
        raise ValueError(f"start_level must be one of this VQ-VAE's levels, 0..{hps.levels - 1}, got {start_level!r}")
    if end_level is not None and not (isinstance(end_level, int) and start_level < end_level <= hps.levels):
        raise ValueError(f"end_level must be above start_level ({start_level}) and at most {hps.levels}, "
                         f"got {end_level!r}")
    folder = data if isinstance(data, AudioFolder) else AudioFolder(data, hps.sr, bad_files)  # before the claim
    dev = process_device(device)
    hop = hps.hop_lengths[-1]
    # The STFTs of the losses and the bandwidth pad by n_fft / 2 on each side, reflected.
    shortest = -(-max(DEFAULT_STFT[0], *hps.multispec_loss_n_fft) // hop) * hop
    window = max(shortest, min(hps.sample_length, max(c.shape[0] for c in folder.clips) // hop * hop))
    # The batch's audio, and the decoder's last activations [batch, width, window] in fp32.
    require_memory({"audio": cfg.batch_size * window * 4, "activations": cfg.batch_size * window * hps.width * 4},
                   dev, f"a batch of {cfg.batch_size} windows of {window} samples", "lower --batch-size")
    with hold_output(out_dir, _rank()):  # one writer per folder (per rank)
        _claim(out_dir, "vqvae.pth.tar", resume, overwrite, preset=str(preset), cfg=cfg,
               **({"start_level": start_level} if start_level else {}),
               **({"end_level": end_level} if end_level not in (None, hps.levels) else {}))
        folder.drop_shorter(window)
        torch.manual_seed(cfg.seed)  # the initial weights too
        model = make_vqvae(hps).to(dev)
        model.bandwidth = calculate_bandwidth(c.numpy() for c in folder.clips)

        def next_batch(gen: torch.Generator) -> torch.Tensor:
            return folder.windows(window, cfg.batch_size, gen)[0].to(dev)

        def loss_fn(m, x):
            _, loss, metrics = m(x, start_level, end_level)
            return loss, metrics

        span = range(start_level, end_level or hps.levels)
        part = ("" if len(span) == hps.levels else f" level {span[0]}" if len(span) == 1
                else f" levels {span[0]}-{span[-1]}")
        summary = fit(model, loss_fn, next_batch, cfg, out_dir, resume, progress,
                      f"train {preset if isinstance(preset, str) else 'VQ-VAE'}{part}", progress_row)
        summary["skipped"] = list(folder.skipped)
        if distributed_setup(dev.type)[0] == 0:
            save_vqvae(model, Path(out_dir) / "vqvae.pth.tar")
        return model.eval(), summary


def train_prior(data: str | os.PathLike | AudioFolder, out_dir: str | os.PathLike, vqvae: str | os.PathLike,
                preset: str = "tiny_top_prior", cfg: TrainConfig | None = None, resume: bool = False,
                device: str | None = None, artist: int = 0, genres: tuple[int, ...] = (0,), progress: bool = True,
                bad_files: str = "skip", overwrite: bool = False, cache_codes: bool = False, progress_row: int = 0):
    """Train a prior (top level or upsampler) on the codes the VQ-VAE at ``vqvae`` gives for random
    windows of the audio under ``data``, conditioned on ``artist``/``genres`` and each window's
    timing. Writes ``out_dir/checkpoint.pt`` and, at the end, ``out_dir/prior_level_<L>.pth.tar``.
    ``resume``, ``overwrite`` and ``bad_files`` as in :func:`train_vqvae` (the window is the
    prior's ``sample_length``). ``cache_codes`` encodes every file once before training and draws
    windows of its codes (:class:`ClipCodes`) instead of encoding each batch's audio as the
    original does: about twice as fast for the tiny priors on a CPU. ``progress_row``: the
    terminal row of the progress bar (priors trained side by side). Returns (model, summary).
    """
    cfg = cfg or TrainConfig()
    hps = hparams.get(preset) if isinstance(preset, str) else preset
    if not isinstance(hps, hparams.PriorHparams):
        raise ValueError(f"preset {preset!r} is not a prior (prior presets: "
                         f"{', '.join(hparams.names(hparams.PriorHparams))})")
    dev = process_device(device)
    vq = load_vqvae(vqvae, device=dev).eval()
    folder = data if isinstance(data, AudioFolder) else AudioFolder(data, vq.hps.sr, bad_files)  # before the claim
    # The batch's audio, the encoder's first activations [batch, width, window] that give its codes,
    # and the step (memory.training_step_peak: activations, gradients, traced) with the weights
    # and AdamW's two moments; fp32. The conditioner recomputes its blocks only where needed.
    window = hps.n_ctx * vq.hps.hop_lengths[hps.level]
    with torch.device("meta"):
        weights = 4 * sum(p.numel() for p in make_prior(hps, vq.hps).parameters())  # fp32 master weights
    recompute = cfg.recompute == "on"
    parts = {"audio": cfg.batch_size * window * 4, "encoding": cfg.batch_size * window * vq.hps.width * 4,
             "weights and AdamW state": 3 * weights}
    step = memory.training_step_peak(hps, vq.hps, cfg.batch_size, recompute, dev.type)
    if cfg.recompute == "auto" and not recompute:
        left = available_memory(dev)
        if left is not None and sum(parts.values()) + step > 0.9 * left:
            recompute = True
            step = memory.training_step_peak(hps, vq.hps, cfg.batch_size, True, dev.type)
    require_memory({**parts, "training step": step}, dev, f"a batch of {cfg.batch_size} windows of {hps.n_ctx} codes",
                   "lower --batch-size")
    with hold_output(out_dir, _rank()):  # one writer per folder (per rank)
        _claim(out_dir, "prior_level_*.pth.tar", resume, overwrite, preset=str(preset), cfg=cfg, vqvae=fingerprint(vq),
               artist=artist, genres=list(genres), **({"cache_codes": True} if cache_codes else {}))
        torch.manual_seed(cfg.seed)
        # fp32 master weights: AdamW cannot train the fp16 Conv1D weights of fp16_params presets (the
        # original kept fp32 copies for that); load_prior casts them back to the preset's dtypes.
        prior = set_recompute(make_prior(preset, vq).to(dev).float(), recompute)
        folder.drop_shorter(prior.sample_length)
        level = prior.hps.level
        end_level = min(level + 2, vq.hps.levels)  # an upsampler also reads the level above's codes
        cached = ClipCodes(folder, vq, level, end_level, dev) if cache_codes else None

        def next_batch(gen: torch.Generator):
            if cached is not None:
                zs, offsets, totals = cached.windows(hps.n_ctx, cfg.batch_size, gen)
                zs = [z.to(dev) for z in zs]
            else:
                audio, offsets, totals = folder.windows(prior.sample_length, cfg.batch_size, gen)
                with torch.no_grad():  # the folder's clips are finite (read_audio refused any other): no sync
                    zs = vq.encode(audio.to(dev), start_level=level, end_level=end_level, check_finite=False)
            rows = [Song(artist, tuple(genres), int(t), offset=int(o)).labels(prior, 0, 1, sampling=False)
                    for o, t in zip(offsets, totals)]
            y = torch.cat(rows).to(dev) if rows[0] is not None else None
            return zs, y

        def loss_fn(m, batch):
            zs, y = batch
            return m(zs, y)

        summary = fit(prior, loss_fn, next_batch, cfg, out_dir, resume, progress,
                      f"train {preset if isinstance(preset, str) else f'level-{level} prior'}", progress_row)
        summary["skipped"] = list(folder.skipped)
        if distributed_setup(dev.type)[0] == 0:
            save_prior(prior, Path(out_dir) / f"prior_level_{level}.pth.tar")
        return prior.eval(), summary
