"""Sampling: one window, a whole level (windowed), and the whole pipeline down to audio.

The semantics are the original's (``sample.py``: ``sample_level``, ``sample_single_window``,
``sample_partial_window``; ``SimplePrior.sample``): a song longer than a prior's context is
sampled in windows of n_ctx tokens starting every ``hop_fraction · n_ctx`` tokens (the last one
flush with the end), each window continuing from the codes already there; an upsampler window
reads the level above's codes under it; labels carry each window's offset and lyric window.

What differs is how a window runs: the known codes are prefilled in one pass and each new token
is one :meth:`~jukebox_fast.models.decoding.IncrementalDecoder.step` over static caches (a CUDA
graph on the GPU when asked), where the original re-runs cached attention with growing
``torch.cat`` copies. The codes are saved atomically after every window, with the random
generator's state, so a run that is interrupted resumes where it stopped and produces the same
codes as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import memory, validate
from .conditioning import Song
from .devices import release_memory
from .files import atomic_save, read_checkpoint
from .models.decoding import IncrementalDecoder
from .runs import claim_output, digest, fingerprint, hold_output, refuse_other_settings, settings_differences

__all__ = ["Song", "filter_logits", "draw", "inverse_cdf", "get_starts", "sample_window", "sample_level", "generate",
           "run_settings", "fingerprint", "settings_differences"]  # Song and the last two live in conditioning / runs


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """The original's filter: top-k keeps logits at least the k-th largest; top-p keeps the
    smallest set of the most likely tokens whose probability reaches p (always the first).
    Removed entries become −inf. logits [N, V]."""
    if top_k and top_p:
        raise ValueError("use top_k or top_p, not both (as the original)")
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def draw(logits: torch.Tensor, temp: float = 1.0, top_k: int = 0, top_p: float = 0.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits [N, V] -> [N]; ``temp=0`` takes the most likely (greedy)."""
    if temp == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temp, top_k, top_p).softmax(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    return inverse_cdf(probs, u)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-probability interval holds u·total, per row: probs [N, V],
    u [N, 1] uniform in [0, 1) -> [N]. One uniform per row, where ``torch.multinomial`` draws V
    exponentials (measured 4x-12x slower for V = 2048 on a CPU, the whole cost of a small step).
    Tokens of probability 0 are never picked: u·total stays strictly below the total, and an
    interval of width 0 holds no value."""
    cdf = probs.cumsum(dim=-1)  # [N, V]
    total = cdf[:, -1:]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def get_starts(total: int, n_ctx: int, hop: int) -> list[int]:
    """Window starts for ``total`` tokens: every ``hop``, the last one flush with the end."""
    starts = []
    for start in range(0, max(1, total - n_ctx + hop), hop):
        starts.append(total - n_ctx if start + n_ctx >= total else start)
    return starts


@dataclass
class Sampling:
    """How to draw tokens and run the decoder. ``temp`` is one temperature for every level, or one
    per level indexed by level (``(0.5, 0.6, 0.9)``: the top level at 0.9), as the original's
    per-level sampling arguments allow."""

    temp: float | tuple[float, ...] = 0.99
    top_k: int = 0
    top_p: float = 0.0
    max_batch_size: int = 16
    dtype: torch.dtype | None = None  # the transformer body's dtype (None: the prior's)
    cuda_graph: bool = True  # capture the decode step when the prior is on a GPU
    generator: torch.Generator | None = None
    progress: bool = True
    stats: dict = field(default_factory=lambda: {"tokens": 0, "seconds": 0.0})

    def __post_init__(self) -> None:
        if isinstance(self.temp, (list, tuple)):
            self.temp = tuple(validate.finite(t, "temperature", allow_zero=True) for t in self.temp)
        else:
            validate.finite(self.temp, "temperature", allow_zero=True)
        validate.at_least(self.top_k, "top_k", 0, " (0: off)")
        validate.unit_interval(self.top_p, "top_p", " (0: off)")
        validate.at_least(self.max_batch_size, "max_batch_size", 1)

    def at_level(self, level: int) -> "Sampling":
        """These settings with one level's temperature (the same statistics and generator)."""
        if not isinstance(self.temp, tuple):
            return self
        if not 0 <= level < len(self.temp):
            raise ValueError(f"no temperature for level {level}: {len(self.temp)} given, one per level from 0")
        return dataclasses.replace(self, temp=self.temp[level])


def total_length_of(seconds: float, vqvae, sr: int = 44100) -> int:
    """Samples of audio for ``seconds``, rounded down to whole top-level codes of ``vqvae`` (the
    model or its hparams)."""
    hop = getattr(vqvae, "hps", vqvae).hop_lengths[-1]
    return int(validate.finite(seconds, "seconds") * sr) // hop * hop


def check_hierarchy(vqvae, priors: Sequence, levels: Sequence[int]) -> None:
    """Each prior to be sampled codes for this VQ-VAE's level (``vqvae`` the model or its
    hparams): its place, hop and codebook."""
    vqvae = getattr(vqvae, "hps", vqvae)
    hops = vqvae.hop_lengths
    for level in levels:
        prior = priors[level]
        if prior.level != level or prior.raw_to_tokens != hops[level] or prior.bins != vqvae.l_bins:
            raise ValueError(f"the prior given for level {level} codes for level {prior.level} with a hop of "
                             f"{prior.raw_to_tokens} samples and {prior.bins} codes; this VQ-VAE's level {level} has "
                             f"a hop of {hops[level]} and {vqvae.l_bins} codes: they were not trained together")


def check_levels(levels: Sequence[int], top: int) -> list[int]:
    """The levels to sample, top first; each must be one of the VQ-VAE's 0..top."""
    for level in levels:
        if not 0 <= level <= top:
            raise ValueError(f"this VQ-VAE has levels 0..{top}, got {level}")
    return sorted(set(levels), reverse=True)


@torch.no_grad()
def sample_window(prior, context: torch.Tensor, sample_tokens: int, z_cond: torch.Tensor | None = None,
                  y: torch.Tensor | None = None, sampling: Sampling | None = None, bar=None) -> torch.Tensor:
    """Continue ``context`` [N, c] (codes of this window so far) to ``sample_tokens`` codes:
    the original's ``SimplePrior.sample``. Returns [N, sample_tokens]."""
    s = (sampling or Sampling()).at_level(prior.level)
    n, c = context.shape
    if not c <= sample_tokens <= prior.hps.n_ctx:
        raise ValueError(f"a window holds up to {prior.hps.n_ctx} tokens and continues the {c} given; "
                         f"asked for {sample_tokens}")
    z_conds = [z_cond] if z_cond is not None else None
    tokens, x_cond, y_cond, encoder_kv, _ = prior.lm_inputs(context, z_conds, y)
    lead = tokens.shape[1] - c  # lyric tokens in front of the codes (1b_lyrics)
    decoder = IncrementalDecoder(prior.prior, n, x_cond, y_cond, encoder_kv, s.dtype)
    decoder.prefill(tokens)
    out = [tokens]
    token = tokens[:, -1] if tokens.shape[1] else None
    for t in range(c, sample_tokens):
        if s.cuda_graph and decoder.device.type == "cuda" and token is not None and decoder._graph is None:
            decoder.capture()
        token = draw(decoder.step(token), s.temp, s.top_k, s.top_p, s.generator)
        out.append(token[:, None])
        if bar is not None:
            bar.update(n)
    codes = torch.cat(out, dim=1)[:, lead:]
    if lead:  # back to music codes: the original subtracts the lyric vocabulary and clamps at 0
        codes = (codes - prior.hps.n_vocab).clamp_(min=0)
    return codes


def windows(total_tokens: int, n_ctx: int, hop: int, have: int = 0) -> list[tuple[int, int]]:
    """The windows (start, length) that sampling a level to ``total_tokens`` runs, in order, when
    ``have`` codes exist already (those wholly sampled are left out: continue and resume)."""
    if total_tokens >= n_ctx:
        spans = [(start, n_ctx) for start in get_starts(total_tokens, n_ctx, hop)]
    else:  # shorter than one window: the original's sample_partial_window adds total_tokens
        spans = [(0, have + total_tokens)] if have < n_ctx - total_tokens else [(have - n_ctx + total_tokens, n_ctx)]
    return [(start, length) for start, length in spans if have < start + length]


def final_tokens(total_tokens: int, n_ctx: int, have: int = 0) -> int:
    """The codes a level holds once sampled to ``total_tokens`` from ``have``: a request shorter
    than a window adds its tokens to what is there (the original's sample_partial_window)."""
    return have + total_tokens if total_tokens < n_ctx else max(have, total_tokens)


def longest_context(total_tokens: int, n_ctx: int, hop: int, have: int = 0) -> tuple[int, int]:
    """(context, length) of the window :func:`windows` runs with the most codes to continue
    (what sizes its prefill), without listing the windows (a request may ask for millions): the
    first window not sampled, the one after it, or the last, flush with the end. (0, 0): none."""
    if total_tokens < n_ctx:
        spans = windows(total_tokens, n_ctx, hop, have)
        return max(((max(0, have - start), length) for start, length in spans), default=(0, 0))
    count = len(range(0, total_tokens - n_ctx + hop, hop))

    def start(k: int) -> int:
        return min(k * hop, total_tokens - n_ctx)

    first = min((have - n_ctx) // hop + 1 if have >= n_ctx else 0, count - 1)
    if have >= total_tokens:
        return 0, 0
    best = (max(0, have - start(first)), n_ctx)
    for k in {first + 1, count - 1} - {first}:
        if k < count:
            best = max(best, (start(k - 1) + n_ctx - start(k), n_ctx))
    return best


def sample_level(prior, zs: list[torch.Tensor], song: Song, total_tokens: int, *, hop_fraction: float = 0.5,
                 sampling: Sampling | None = None, checkpoint: str | os.PathLike | None = None,
                 settings: dict | None = None) -> list[torch.Tensor]:
    """Sample level ``prior.level`` of ``zs`` (a list of per-level codes [N, t], top level last)
    up to ``total_tokens``, window by window; returns the updated list.

    Windows whose tokens are all there already are skipped, so continuing a partial ``zs`` is the
    original's ``continue`` mode. With ``checkpoint``, the codes are saved there (atomically)
    after every window, with ``settings`` (:func:`run_settings`), and if the file exists the run
    resumes from it, provided it was saved with the same settings.
    """
    level, n_ctx = prior.level, prior.hps.n_ctx
    s = (sampling or Sampling()).at_level(level)
    zs = list(zs)
    n = zs[level].shape[0]
    if checkpoint is not None and Path(checkpoint).exists():
        zs = _resume(checkpoint, zs, s, settings)
    cur = zs[level].shape[1]
    spans = windows(total_tokens, n_ctx, int(hop_fraction * n_ctx), cur)
    todo = max(0, total_tokens - cur) if total_tokens >= n_ctx else total_tokens
    with tqdm(total=todo * n, unit="tok", desc=f"level {level}", disable=not s.progress, leave=False) as bar:
        for start, length in spans:
            zs[level] = torch.cat([zs[level], _window(prior, zs, song, start, length, s, bar)], dim=1)
            if checkpoint is not None:
                atomic_save({"zs": [z.cpu() for z in zs], "level": level, "settings": settings,
                             "generator": s.generator.get_state() if s.generator is not None else None}, checkpoint)
    return zs


def _window(prior, zs, song: Song, start: int, length: int, s: Sampling, bar) -> torch.Tensor:
    """The new codes of one window [start, start + length)."""
    level, n = prior.level, zs[prior.level].shape[0]
    context = zs[level][:, start : start + length]
    z_cond = None
    if prior.x_cond:
        down = prior.cond_downsample
        if start % down:
            raise ValueError(f"an upsampler window must start on a multiple of {down} tokens, got {start}")
        z_cond = zs[level + 1][:, start // down : (start + prior.hps.n_ctx) // down]
        if z_cond.shape[1] != prior.hps.n_ctx // down:
            raise ValueError(
                f"the level-{level} window at {start} needs {prior.hps.n_ctx // down} level-{level + 1} codes "
                f"under it, but level {level + 1} has only {zs[level + 1].shape[1]}: sample at least one full "
                f"window ({prior.hps.n_ctx * prior.raw_to_tokens} samples) or upsample less")
    y = song.labels(prior, start, n)
    pieces = []
    t0 = time.perf_counter()
    for i in range(0, n, s.max_batch_size):  # sub-batches one after another, as the original
        part = slice(i, i + s.max_batch_size)
        pieces.append(sample_window(prior, context[part], length, None if z_cond is None else z_cond[part],
                                    None if y is None else y[part].to(context.device), s, bar))
    new = torch.cat(pieces)[:, context.shape[1]:]
    s.stats["tokens"] += new.numel()
    s.stats["seconds"] += time.perf_counter() - t0
    return new


def _resume(path, zs: list[torch.Tensor], s: Sampling, settings: dict | None) -> list[torch.Tensor]:
    saved = read_checkpoint(path)
    if settings is not None:
        refuse_other_settings(path, saved.get("settings"), settings, **_SAME)
    codes = saved["zs"]
    if len(codes) != len(zs) or any(a.shape[0] != b.shape[0] for a, b in zip(codes, zs)):
        raise ValueError(f"{path} holds codes for {[tuple(c.shape) for c in codes]}, which do not match this run's "
                         f"{[tuple(z.shape) for z in zs]}")
    if s.generator is not None and saved.get("generator") is not None:
        s.generator.set_state(saved["generator"])
    return [c.to(z.device) for c, z in zip(codes, zs)]


def run_settings(vqvae, priors: Sequence, song: Song, *, total_length: int, n_samples: int, levels: Sequence[int],
                 prime: list[torch.Tensor] | None, hop_fraction: Sequence[float], sampling: Sampling) -> dict:
    """Everything that decides the codes a run samples: compared before a run resumes from codes
    it finds, so that other settings never return the old run's codes as if they were new."""
    gen = sampling.generator
    return {
        "levels": [int(v) for v in levels], "seconds": round(total_length / vqvae.hps.sr, 4),
        "total_length": int(total_length), "n_samples": int(n_samples),
        "hop_fraction": [float(h) for h in hop_fraction], "temperature": (list(sampling.temp) if isinstance(sampling.temp, tuple)
                                                                            else float(sampling.temp)),
        "top_k": int(sampling.top_k), "top_p": float(sampling.top_p), "max_batch_size": int(sampling.max_batch_size),
        "dtype": str(sampling.dtype), "seed": digest(gen.get_state()) if gen is not None else None,
        "prime": digest(prime), "vqvae": fingerprint(vqvae),
        **{f"prior {level}": _fingerprint(priors[level]) for level in levels},
        **{f"labels {level}": _labels_digest(song, _spec(priors[level], vqvae.hps)) for level in levels},
    }


def _fingerprint(prior) -> str:
    return fingerprint(prior) if isinstance(prior, torch.nn.Module) else prior.fingerprint()


def _labels_digest(song: Song, prior) -> str | None:
    y = song.labels(prior, 0, 1)
    return None if y is None else digest(y)


# How sampling names what differs, and what it advises.
_SAME = dict(what="codes sampled", unrecorded="codes whose settings were not recorded",
             advice="resuming would return them as if they were this run's. Sample into a new folder, or start "
                    "over with --overwrite",
             names={"seed": "the seed", "prime": "the prime audio", "vqvae": "the VQ-VAE"}, opaque=("prior", "labels"))


def generate(vqvae, priors: Sequence, song: Song, *, seconds: float | None = None, total_length: int | None = None,
             n_samples: int = 1, levels: Sequence[int] | None = None, prime: list[torch.Tensor] | None = None,
             hop_fraction: Sequence[float] = (0.5, 0.5, 0.125), sampling: Sampling | None = None,
             out_dir: str | os.PathLike | None = None, sr: int = 44100, overwrite: bool = False,
             alignment: bool | tuple[int, int] = True, max_memory: str | int | None = None,
             weights: str = "stored") -> torch.Tensor:
    """The whole pipeline: sample the requested levels top-down, then decode the lowest to audio.

    Args:
        vqvae: the VQ-VAE whose codes the priors model.
        priors: one prior per level, indexed by level (``priors[2]`` is the top prior): a loaded
            prior, or a :class:`~jukebox_fast.checkpoint.PriorFile`, which the run loads when it
            reaches that level and frees after it (levels in turn); entries for levels not
            sampled may be None.
        song: conditioning (artist, genres, lyrics, song length, offset); each level labels it
            with its own tables (:class:`Song`).
        seconds / total_length: how much audio (rounded down to a multiple of the top hop).
        n_samples: samples drawn together.
        levels: levels to sample, top first (default: all, e.g. (2, 1, 0)). A level below the
            top needs the level above it sampled in this run or given in ``prime``.
        prime: codes to continue (primed mode: per-level [N, t] from ``vqvae.encode``), or codes
            saved by an earlier run (continue / upsample modes).
        hop_fraction: window hop per level, indexed by level (the original's 0.5, 0.5, 0.125).
        out_dir: where codes (``codes.pt``, resumable) and one wav per sample of the lowest
            level sampled are written. A ``codes.pt`` there is resumed only if it was sampled with
            the same settings, models and labels (:func:`run_settings`); otherwise this raises,
            naming what differs, unless ``overwrite`` starts over.
        alignment: with ``out_dir`` and a top prior that takes lyrics, read where its alignment
            head attends (:func:`jukebox_fast.alignment.lyric_alignment`) right after the top
            level is sampled, save it as ``alignment.npz`` (atomically; a resumed run keeps it)
            and write ``index.html`` (:func:`jukebox_fast.page.write_page`). ``(layer, head)``
            reads that head (priors whose presets name none, as the tiny ones); False skips it.
        max_memory: bytes (or "16GB") the run may hold. The run is planned before any work
            (:func:`jukebox_fast.memory.plan_generate`) and, with this, takes the first way to
            run that fits: 16-bit weights (priors given as files), 16-bit caches, fewer samples
            per window pass. What fits nowhere, or (without it) does not fit in the memory the
            device has free, is refused (:class:`~jukebox_fast.memory.MemoryPlanError`).
        weights: how priors given as files are loaded: "stored", "16-bit" or "int8"
            (weight-only, one scale per output column; :func:`~jukebox_fast.load_prior`).

    Returns:
        audio [N, T, 1] decoded from the lowest level sampled.
    """
    s = sampling or Sampling()
    if total_length is None:
        total_length = total_length_of(seconds if seconds is not None else float("nan"), vqvae, sr)
    prime_tokens = None if prime is None else [p.shape[1] for p in prime]
    levels = check_request(vqvae.hps, priors, song, levels, total_length, n_samples, prime_tokens, sr)
    plan = memory.plan_generate(vqvae, priors, levels, n_samples=n_samples, total_length=total_length,
                                hop_fraction=hop_fraction, sampling=s, max_memory=max_memory,
                                prime_tokens=prime_tokens, weights=weights)
    s = dataclasses.replace(s, dtype=plan.choice.caches, max_batch_size=plan.choice.batch)
    device = next(vqvae.parameters()).device
    zs = [torch.zeros(n_samples, 0, dtype=torch.int64, device=device) for _ in range(vqvae.hps.levels)]
    if prime is not None:
        zs = [p.to(device) for p in prime]
    out = Path(out_dir) if out_dir is not None else None
    with hold_output(out) if out is not None else contextlib.nullcontext():  # one writer per folder
        return _generate(vqvae, priors, song, zs, total_length, n_samples, levels, prime, hop_fraction, s, out, sr,
                         overwrite, alignment, plan.choice.weight_form(device))


def check_request(vqvae_hps, priors: Sequence, song: Song, levels: Sequence[int] | None, total_length: int,
                  n_samples: int, prime_tokens: Sequence[int] | None = None, sr: int = 44100) -> list[int]:
    """:func:`generate`'s checks of a request, before anything is planned or loaded (priors as
    models or :class:`~jukebox_fast.checkpoint.PriorFile`); returns the levels, top first."""
    top = vqvae_hps.levels - 1
    hop = vqvae_hps.hop_lengths[top]
    if total_length <= 0:
        raise ValueError(f"nothing to sample: {total_length} samples (at least one top-level code, {hop} samples)")
    validate.at_least(n_samples, "n_samples", 1)
    levels = check_levels(levels if levels is not None else range(vqvae_hps.levels), top)
    for level in levels:
        if level < top and level + 1 not in levels and (prime_tokens is None or prime_tokens[level + 1] == 0):
            raise ValueError(f"level {level} is conditioned on level {level + 1}'s codes: sample level {level + 1} "
                             f"too, or continue codes that hold it")
        if priors[level] is None:
            raise ValueError(f"level {level} is to be sampled but no prior was given for it")
    specs = [_spec(p, vqvae_hps) for p in priors]  # what each level's prior is, none loaded
    if song.lyrics and not specs[levels[0]].n_tokens:
        raise ValueError("this prior takes no lyrics (use a *_lyrics model)")
    check_hierarchy(vqvae_hps, specs, levels)
    first_hop = vqvae_hps.hop_lengths[levels[0]]  # the highest level sampled continues the prime's codes
    if prime_tokens is not None and prime_tokens[levels[0]] * first_hop >= total_length:
        raise ValueError(f"the prime holds {prime_tokens[levels[0]] * first_hop / sr:.2f} s at level {levels[0]}, as "
                         f"long as the {total_length / sr:.2f} s asked for or longer, so nothing would be sampled: ask "
                         "for more seconds than the prime holds")
    return levels


def _spec(prior, vqvae_hps):
    """The prior itself, or for a file its architecture built on the meta device (no memory)."""
    from .checkpoint import PriorFile

    return memory.meta_prior(prior.hparams(vqvae_hps), vqvae_hps) if isinstance(prior, PriorFile) else prior


def _align(prior, codes: torch.Tensor, song: Song, hop_fraction: float, alignment, out: Path, hop: int,
           sr: int) -> None:
    """Save the top prior's lyric alignment into ``out`` (kept if a resumed run saved it)."""
    from . import alignment as alignment_mod

    if (out / alignment_mod.FILE).exists():
        return
    layer, head = alignment if isinstance(alignment, tuple) else (None, None)
    if layer is None and prior.hps.alignment_layer is None:
        warnings.warn("no lyric alignment: this prior's preset names no alignment layer and head "
                      "(pass alignment=(layer, head), or --alignment LAYER:HEAD)", stacklevel=3)
        return
    found = alignment_mod.lyric_alignment(prior, codes, song, hop_fraction=hop_fraction, layer=layer, head=head)
    alignment_mod.save(out, found, prior, song, hop, sr)


def _generate(vqvae, priors, song, zs, total_length, n_samples, levels, prime, hop_fraction, s, out, sr, overwrite,
              alignment, weights):
    settings = None
    if out is not None:  # before any work
        settings = run_settings(vqvae, priors, song, total_length=total_length, n_samples=n_samples, levels=levels,
                                prime=prime, hop_fraction=hop_fraction, sampling=s)
        codes = out / "codes.pt"
        claim_output(out, settings, resume=None, overwrite=overwrite,
                     made=("codes.pt", "level_*_item_*.wav", "alignment.npz", "alignment_item_*.png", "index.html"),
                     recorded=lambda: read_checkpoint(codes).get("settings") if codes.exists() else None,
                     record=False, **_SAME)  # the settings are kept in codes.pt, with the codes
    device = next(vqvae.parameters()).device
    for level in levels:
        given = priors[level]
        prior = given if isinstance(given, torch.nn.Module) else given.load(vqvae, device, weights=weights)
        total = total_length // prior.raw_to_tokens
        zs = sample_level(prior, zs, song, total, hop_fraction=hop_fraction[level], sampling=s,
                          checkpoint=out / "codes.pt" if out is not None else None, settings=settings)
        if out is not None and alignment is not False and level == levels[0] and prior.n_tokens:
            # now, while this prior is loaded: a prior given as a file is freed below
            _align(prior, zs[level], song, hop_fraction[level], alignment, out, vqvae.hps.hop_lengths[level], sr)
        if not isinstance(given, torch.nn.Module):  # levels in turn: gone before the next level loads
            del prior
            release_memory(device)
    low = levels[-1]
    with torch.no_grad():
        audio = vqvae.decode(zs[low:], start_level=low, bs_chunks=n_samples).clamp(-1, 1)
    if out is not None:
        from .audio import write_wav

        for i in range(n_samples):
            write_wav(out / f"level_{low}_item_{i}.wav", audio[i].cpu().numpy(), sr)
        if (out / "alignment.npz").exists():
            from .page import write_page

            write_page(out)
    return audio
