"""A jukemirlib-compatible facade: an existing feature script changes one import line.

    import jukebox_fast.jukemir as jukemirlib        # was: import jukemirlib
    jukemirlib.setup_models("models/")                 # a folder with vqvae.pth.tar, prior_level_2.pth.tar
    audio = jukemirlib.load_audio("song.wav")
    reps = jukemirlib.extract(audio, layers=[36], meanpool=True)   # {36: numpy float32 [4800]}

The keyword names and return types are jukemirlib's (numpy arrays, float32 unless ``fp16_out``).
Nothing is downloaded: ``setup_models`` reads the original checkpoints from a local folder (the
argument, else ``$JUKEMIRLIB_CACHE_DIR``, else ``~/.cache/jukemirlib``). The work is
:func:`jukebox_fast.embed.extract`'s: only the blocks needed run, batched.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .embed import extract as _extract

__all__ = ["setup_models", "load_audio", "extract", "JUKEBOX_SAMPLE_RATE", "T"]

JUKEBOX_SAMPLE_RATE = 44100
T = 8192  # the top prior's context, in tokens
DEFAULT_LAYERS = (36,)
_MODELS: dict = {}


def _default_dir() -> Path:
    return Path(os.environ.get("JUKEMIRLIB_CACHE_DIR") or Path.home() / ".cache" / "jukemirlib")


def setup_models(cache_dir: str | os.PathLike | None = None, verbose: bool = True, *, device=None,
                 max_layer: int | None = None, preset: str | None = "prior_5b"):
    """Load the 5b model's VQ-VAE and top prior from ``cache_dir`` (``vqvae.pth.tar``,
    ``prior_level_2.pth.tar``: the original files). ``max_layer`` loads only the blocks up to it
    (default: all 72). ``preset``: the prior's architecture (None for our own files, which
    describe themselves). Returns (vqvae, top_prior), which :func:`extract` then uses."""
    from .checkpoint import load_prior, load_vqvae

    folder = Path(cache_dir) if cache_dir is not None else _default_dir()
    paths = {name: folder / f"{name}.pth.tar" for name in ("vqvae", "prior_level_2")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: jukebox_fast downloads nothing; put the original "
                                "5b checkpoints (vqvae.pth.tar, prior_level_2.pth.tar) there, or pass their folder")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if verbose:
        print(f"loading the VQ-VAE and the top prior from {folder} onto {device}")
    vqvae = load_vqvae(paths["vqvae"], device=device)
    prior = load_prior(paths["prior_level_2"], preset, vqvae if preset else None, device=device, layers=max_layer)
    _MODELS.update(vqvae=vqvae, top_prior=prior)
    return vqvae, prior


def load_audio(fpath, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Mono float32 [T] at 44.1 kHz, ``duration`` seconds from ``offset``, scaled so its largest
    magnitude is 1 (as jukemirlib's)."""
    from .audio import read_audio

    audio = read_audio(fpath, JUKEBOX_SAMPLE_RATE, peak=1.0, offset=offset, duration=duration)
    return audio


def extract(audio=None, fpath=None, meanpool: bool = False, layers=None, offset: float = 0.0,
            duration: float | None = None, downsample_target_rate: float | None = None,
            downsample_method: str | None = None, fp16: bool = False, fp16_out: bool = False,
            force_empty_cache: bool = True, *, batch_size: int = 8) -> dict[int, np.ndarray]:
    """jukemirlib's ``extract``: ``{layer: numpy [positions, 4800]}`` (``[4800]`` with
    ``meanpool``) for ``audio`` (a 1-D array at 44.1 kHz) or the file ``fpath``.

    The blocks run in fp32 (jukemirlib's numbers), or with ``fp16`` in half precision: bf16
    here, with LayerNorm and softmax in fp32 (fp16 has too little range for the 5b residual
    stream). ``fp16_out`` returns float16 arrays.
    ``downsample_method``: only jukemirlib's default, FFT resampling ("librosa_fft" or
    "librosa_scipy"), is offered. ``force_empty_cache`` is accepted and ignored: nothing here
    needs the CUDA cache emptied. A [B, T] batch or a list of clips also works (returns are
    then stacked / a list), which jukemirlib does not offer.
    """
    if not _MODELS:
        raise RuntimeError("call setup_models(folder) first (it loads the VQ-VAE and the top prior)")
    if (audio is None) == (fpath is None):
        raise ValueError("pass exactly one of audio and fpath")
    if downsample_method not in (None, "librosa_fft", "librosa_scipy"):
        raise ValueError(f"downsample_method {downsample_method!r} is not offered: FFT resampling ('librosa_fft') "
                         "is jukemirlib's default and the one here")
    if audio is None:
        audio = load_audio(fpath, offset=offset, duration=duration)
    layers = list(DEFAULT_LAYERS if layers is None else layers)
    vqvae, prior = _MODELS["vqvae"], _MODELS["top_prior"]
    dtype = torch.bfloat16 if fp16 else torch.float32
    reps = _extract(vqvae, prior, audio, layers, meanpool, downsample_target_rate=downsample_target_rate,
                    dtype=dtype, batch_size=batch_size)
    out_type = np.float16 if fp16_out else np.float32

    def to_numpy(r: dict) -> dict[int, np.ndarray]:
        return {n: v.float().cpu().numpy().astype(out_type) for n, v in r.items()}

    return [to_numpy(r) for r in reps] if isinstance(reps, list) else to_numpy(reps)
