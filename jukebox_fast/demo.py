"""The README's main job: train tiny models on music made here and sample new music, on a CPU.

Stages, each timed in the report:

1. ``data``: a deterministic synthetic music set (melodies of a plucked voice, an organ and a bass
   over a pentatonic scale, synthesised in numpy), written as wav files;
2. ``vqvae``: ``tiny_vqvae``'s levels 1 and 2 trained on it (``jukebox_fast.train``; the demo
   never plays level 0), each level apart, side by side in two processes, then joined in one
   model; a reconstruction from level 1;
3. ``priors``: ``tiny_top_prior`` (level 2, with a 256-code context) and ``tiny_upsampler``
   (level 1, twice as wide) trained on its codes, each file encoded once
   (``train_prior(cache_codes=True)``), side by side in two processes (``training_seconds`` in
   the report gives each training's own time);
4. ``sample``: new music sampled by the top prior with the cached decoder (``jukebox_fast.sample``)
   and upsampled to level 1 by the upsampler (the samples), each level at its own temperature,
   every level from the nucleus of its distribution (top-p 0.9);
5. ``cached_vs_recompute``: tokens/s of the cached decoder against recomputing the whole window
   for every token (what decoding costs without a KV cache);
6. ``measures``: :func:`jukebox_fast.audio.musicality` of every stage on its own: the training
   clips, the reconstruction from each trained level, the samples at level 1 and their top-level codes
   alone (decoded from level 2), the upsampler on a training clip's true level-2 codes, and
   white noise.

Each default was chosen by measurement (``benchmarks/results/demo_cpu.md``): more clips, because
both priors overfit eight; a 256-code top context, because 64 codes (0.19 s) is shorter than a
note and the samples droned; a wider upsampler with a higher learning rate, sampled at 0.4,
because the tiny one, and any at 0.9, turned the notes to noise; top-p, because the tiny top
prior's unlikely codes decode to noise.

Output folder: ``data/*.wav``, ``vqvae/``, ``top_prior/``, ``upsampler/`` (checkpoints),
``reconstruction.wav``, ``samples/level_1_item_<i>.wav`` (the samples),
``samples/level_2_item_<i>.wav`` (their top level alone), ``spectrogram.png``, ``report.json``
and ``report.md``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import hparams
from .audio import musicality, save_spectrogram, write_wav
from .checkpoint import load_prior, load_vqvae, save_vqvae
from .files import atomic_text
from .runs import claim_output, hold_output
from .sample import Sampling, Song, draw, generate, sample_window, total_length_of
from .train import AudioFolder, TrainConfig, train_prior, train_vqvae

__all__ = ["DemoConfig", "synth_clip", "synth_set", "run", "top_level_audio", "train_side_by_side"]

_SCALE = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # major pentatonic, semitones


def _note(freq: float, n: int, sr: int, harmonics, decay: float) -> np.ndarray:
    t = np.arange(n) / sr
    tone = sum(a * np.sin(2 * np.pi * freq * (h + 1) * t) for h, a in enumerate(harmonics))
    attack = np.minimum(1.0, t / 0.005)
    return tone * attack * np.exp(-decay * t)


def synth_clip(seconds: float, sr: int = 44100, seed: int = 0, bpm: float = 120.0) -> np.ndarray:
    """A deterministic mono clip, float32 [T] in [-1, 1]: three instruments over a pentatonic scale."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n)
    beat = int(sr * 60 / bpm / 2)  # eighth notes
    root = 220.0 * 2 ** (rng.integers(0, 5) / 12)  # a key per clip
    voices = [  # (harmonic amplitudes, decay per second, notes per step, octave, gain)
        ((1.0, 0.5, 0.3, 0.2, 0.1), 6.0, 1, 1, 0.35),  # plucked melody
        ((1.0, 0.0, 0.3, 0.0, 0.15), 1.0, 4, 0, 0.25),  # organ, one note per half bar
        ((1.0, 0.2), 2.0, 8, -1, 0.35),  # bass, one note per bar
    ]
    for harmonics, decay, every, octave, gain in voices:
        length = beat * every
        for start in range(0, n, length):
            semis = rng.choice(_SCALE)
            freq = root * 2.0 ** (octave + semis / 12)
            m = min(length, n - start)
            out[start : start + m] += gain * _note(freq, m, sr, harmonics, decay)
    return (0.9 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)


def synth_set(folder: str | Path, clips: int, seconds: float, sr: int = 44100, seed: int = 0) -> list[Path]:
    """Write ``clips`` synthetic songs of ``seconds`` each as wav files into ``folder``."""
    return [write_wav(Path(folder) / f"song_{i:02d}.wav", synth_clip(seconds, sr, seed + i), sr) for i in range(clips)]


@dataclass
class DemoConfig:
    """Sizes of the demo. The defaults take 4.3-5.4 minutes on a 2-core AVX2 CPU, and each choice
    is measured (``benchmarks/results/demo_cpu.md``); :meth:`small` is the CI size (well under a
    minute)."""

    clips: int = 128  # the priors overfit 8 clips; writing and reading 128 takes seconds
    clip_seconds: float = 6.0
    vqvae_steps: int = 500  # per level; at 300 the level-2 reconstruction kept 9 of 12 notes in 2 seeds of 3
    vqvae_window: int = 16_384  # samples per training window: twice the steps of 32768 in the same time
    # Levels 1 and 2 only: the demo never plays level 0, whose stack (twice as wide and deep, the
    # original's multipliers) is 54 % of the VQ-VAE's step on a 2-core CPU.
    vqvae_start_level: int = 1
    top_prior_steps: int = 5000  # 3000 left level-2 samples of 2 seeds in 3 under 8 notes; its loss still fell
    top_prior_context: int = 256  # codes (0.74 s): longer than a note, so the samples change notes
    # Wider learns more per step and samples cleaner level-2 audio that changes note more often,
    # but on fewer notes, and costs more per step: 48 and 64 missed more note targets than 32.
    top_prior_width: int = 32
    upsampler_steps: int = 5500
    upsampler_width: int = 64  # the tiny preset's 32 (and conditioner 16) stays near noise
    upsampler_cond_width: int = 32
    upsampler_cond_depth: int = 4
    # The VQ-VAE's levels, then the two priors, train two at once in two processes (given 2+ threads)
    side_by_side: bool = True
    vqvae_batch_size: int = 2
    batch_size: int = 8  # the priors'
    vqvae_lr: float = 1e-3  # 2e-3 once left level 2 a one-note buzz (seed 2)
    top_prior_lr: float = 1e-3  # 2e-3 and 3e-3 learnt faster but sampled drones more often
    upsampler_lr: float = 3e-3  # 1e-3 left it a whole bit per code behind at 4000 steps
    sample_seconds: float = 6.0  # as long as the training songs: 4 s held too few notes to count
    n_samples: int = 2
    temperature: float = 0.9  # the top level's: 0.95 left more samples noisy or on too few notes (demo_cpu.md)
    upsampler_temperature: float = 0.4  # level 1's: hotter, errors pile up into noise
    # Nucleus sampling at every level: the tiny top prior leaves probability on codes that decode
    # to noise. Three seeds' trained models, each redrawn 6 times (benchmarks/bench_demo_sampling.py,
    # demo_cpu.md): every target of a sample met in 30 of 36 at 0.9, 24 at 0.8, 23 at 0.7 and 22
    # without a nucleus; narrower nuclei make a droning prior hold fewer notes.
    top_p: float = 0.9
    compare_tokens: int = 48
    seed: int = 0

    @classmethod
    def quality(cls) -> "DemoConfig":
        """Longer training for every stage, whose loss still falls where the defaults stop
        (``benchmarks/results/demo_cpu.md``)."""
        return cls(vqvae_steps=600, top_prior_steps=6000, upsampler_steps=8000)

    @classmethod
    def small(cls) -> "DemoConfig":
        return cls(clips=2, clip_seconds=2.0, vqvae_steps=3, top_prior_steps=3, upsampler_steps=3, vqvae_batch_size=1,
                   batch_size=2, sample_seconds=1.0, n_samples=1, compare_tokens=8, top_prior_context=64)

    def vqvae(self) -> hparams.VQVAEHparams:
        return hparams.get("tiny_vqvae", sample_length=self.vqvae_window)

    def top_prior(self) -> hparams.PriorHparams:
        return hparams.get("tiny_top_prior", n_ctx=self.top_prior_context, prior_width=self.top_prior_width)

    def upsampler(self) -> hparams.PriorHparams:
        return hparams.get("tiny_upsampler", prior_width=self.upsampler_width, cond_width=self.upsampler_cond_width,
                           cond_depth=self.upsampler_cond_depth)

    def song(self, vqvae) -> tuple[int, Song]:
        """The samples' length (whole top-level codes of ``vqvae``) and the labels they are drawn
        with: the timing says "a song as long as the training songs", as in training."""
        sr = vqvae.hps.sr
        total = total_length_of(self.sample_seconds, vqvae, sr)
        return total, Song(artist=0, genres=(0,), total_length=max(total, int(self.clip_seconds * sr)))

    def sampling(self, progress: bool = False) -> Sampling:
        """How the demo draws every level: a temperature per level (0, 1, 2) and the nucleus, from
        a generator seeded with :attr:`seed`."""
        return Sampling(temp=(self.upsampler_temperature, self.upsampler_temperature, self.temperature),
                        top_p=self.top_p, generator=torch.Generator().manual_seed(self.seed), progress=progress)


def _recompute_rate(prior, n_tokens: int, y, gen: torch.Generator) -> float:
    """Tokens/s sampling without a cache: one full forward over the window per token."""
    z = torch.zeros(1, prior.hps.n_ctx, dtype=torch.int64)
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in range(n_tokens):
            logits = prior.get_logits([z], y)  # [1, n_ctx, bins]; position t sees only z[:, :t]
            z[:, t] = draw(logits[:, t], 1.0, generator=gen)
    return n_tokens / (time.perf_counter() - t0)


def _cached_rate(prior, n_tokens: int, y, gen: torch.Generator) -> float:
    t0 = time.perf_counter()
    sample_window(prior, torch.zeros(1, 0, dtype=torch.int64), n_tokens, y=y,
                  sampling=Sampling(temp=1.0, generator=gen, progress=False))
    return n_tokens / (time.perf_counter() - t0)


def run(out: str | Path, cfg: DemoConfig | None = None, progress: bool = True, resume: bool = False,
        overwrite: bool = False) -> dict:
    """Run every stage into ``out``; returns the report (also in ``report.json`` / ``report.md``).

    With two threads or more, trainings run two at a time in spawned processes
    (:func:`train_side_by_side`), which import the calling script again: in a script, call this
    under ``if __name__ == "__main__":``.

    A folder that holds an earlier run is refused (its models took minutes to train) unless
    ``resume`` (finish it: each stage goes on from its checkpoint, samples from their codes) or
    ``overwrite`` (start over) is given.
    """
    cfg = cfg or DemoConfig()
    out = Path(out)
    with hold_output(out):  # one writer per folder
        return _run(out, cfg, progress, resume, overwrite)


def _run(out: Path, cfg: DemoConfig, progress: bool, resume: bool, overwrite: bool) -> dict:
    claim_output(out, dataclasses.asdict(cfg), resume=resume, overwrite=overwrite,
                 made=("report.json", "report.md", "vqvae", "top_prior", "upsampler", "samples", "*.png", "*.wav"),
                 run="a demo run", what="a demo run made")
    torch.manual_seed(cfg.seed)
    sr = hparams.get("tiny_vqvae").sr
    report: dict = {"config": cfg.__dict__.copy(), "seconds": {}}
    clock = report["seconds"]

    def train_cfg(steps: int, batch: int, lr: float, warmup: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(warmup, steps),
                           checkpoint_every=max(1, steps), seed=cfg.seed)

    t0 = time.perf_counter()
    synth_set(out / "data", cfg.clips, cfg.clip_seconds, sr, cfg.seed)
    data = AudioFolder(out / "data", sr)
    clock["data"] = time.perf_counter() - t0

    threads = torch.get_num_threads()
    apart = threads // 2 if cfg.side_by_side and threads >= 2 else None  # threads per process
    report["losses"], report["training_seconds"] = {}, {}

    def train(fn, jobs: dict[str, dict]) -> None:  # jobs by name: fn's keyword arguments
        rows = [{**job, "progress_row": row} for row, job in enumerate(jobs.values())]
        for name, summary in zip(jobs, train_side_by_side(fn, rows, apart)):
            report["losses"][name] = [summary["losses"][0], summary["losses"][-1]]
            report["training_seconds"][name] = summary["seconds"]

    t0 = time.perf_counter()
    # Each level is its own encoder, codebook and decoder, so the levels train apart (each one's
    # gradients clipped on their own) and are joined after.
    first = cfg.vqvae_start_level
    levels = {f"vqvae level {level}": level for level in range(first, cfg.vqvae().levels)}
    train(train_vqvae, {name: dict(data=str(out / "data"), out_dir=str(out / "vqvae" / f"level_{level}"),
                                   preset=cfg.vqvae(), start_level=level, end_level=level + 1,
                                   cfg=train_cfg(cfg.vqvae_steps, cfg.vqvae_batch_size, cfg.vqvae_lr, 20),
                                   resume=resume, device="cpu", progress=progress, overwrite=overwrite)
                        for name, level in levels.items()})
    vqvae = None
    for level in levels.values():
        part = load_vqvae(out / "vqvae" / f"level_{level}" / "vqvae.pth.tar")
        vqvae = part if vqvae is None else vqvae.take_levels(part, [level])
    save_vqvae(vqvae, out / "vqvae" / "vqvae.pth.tar")
    clip = data.clips[0]
    n = clip.shape[0] // 128 * 128
    with torch.no_grad():  # every trained level's codes (None below), for the stage measures too
        clip_codes = [None] * first + vqvae.encode(clip[:n].view(1, n, 1), start_level=first)
        recon = vqvae.decode(clip_codes[first:], start_level=first)[0, :, 0].clamp(-1, 1)
    write_wav(out / "reconstruction.wav", recon, sr)
    clock["vqvae"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stages = {"top_prior": (cfg.top_prior(), cfg.top_prior_steps, cfg.top_prior_lr, 20),
              "upsampler": (cfg.upsampler(), cfg.upsampler_steps, cfg.upsampler_lr, 100)}
    train(train_prior, {stage: dict(data=str(out / "data"), out_dir=str(out / stage),
                                    vqvae=str(out / "vqvae" / "vqvae.pth.tar"), preset=hps,
                                    cfg=train_cfg(steps, cfg.batch_size, lr, warmup), resume=resume, device="cpu",
                                    progress=progress, overwrite=overwrite, cache_codes=True)
                        for stage, (hps, steps, lr, warmup) in stages.items()})
    priors: list = [None, None, None]
    for stage, (hps, *_) in stages.items():
        priors[hps.level] = load_prior(out / stage / f"prior_level_{hps.level}.pth.tar", vqvae=vqvae)
    clock["priors"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sampling = cfg.sampling(progress)
    total, song = cfg.song(vqvae)
    upsampled = generate(vqvae, priors, song, total_length=total, n_samples=cfg.n_samples, levels=(2, 1),
                         sampling=sampling, out_dir=out / "samples", sr=sr, overwrite=overwrite)
    audio = top_level_audio(vqvae, out / "samples")
    for i, a in enumerate(audio):
        write_wav(out / "samples" / f"level_2_item_{i}.wav", a[:, 0], sr)
    clock["sample"] = time.perf_counter() - t0
    report["sampled_tokens"] = sampling.stats["tokens"]
    report["sampling_tokens_per_s"] = sampling.stats["tokens"] / max(sampling.stats["seconds"], 1e-9)

    t0 = time.perf_counter()
    top = priors[2]
    y = song.labels(top, 0, 1)
    report["cached_tokens_per_s"] = _cached_rate(top, cfg.compare_tokens, y, torch.Generator().manual_seed(1))
    report["recompute_tokens_per_s"] = _recompute_rate(top, cfg.compare_tokens, y, torch.Generator().manual_seed(1))
    clock["cached_vs_recompute"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    clips = _stage_clips(vqvae, priors, clip[:n], clip_codes, recon, audio, upsampled, song, total, cfg)
    report["musicality"] = {name: musicality(a.numpy(), sr) for name, a in clips.items()}
    report["musicality"]["training clips (all)"] = _mean_measure([musicality(c.numpy(), sr) for c in data.clips])
    clock["measures"] = time.perf_counter() - t0
    shown = (["training clip", f"reconstruction (level {first})"] + [f"sample {i} (level 1)" for i in range(len(audio))]
             + ["sample 0 (level 2)", "white noise"])
    save_spectrogram(out / "spectrogram.png", [clips[k] for k in shown],
                     [f"{k}: {_label(report['musicality'][k])}" for k in shown], sr)
    report["outputs"] = sorted(str(p.relative_to(out)) for p in out.rglob("*.wav") if "data" not in p.parts)
    atomic_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_text(out / "report.md", _markdown(report))
    return report


def top_level_audio(vqvae, samples: str | Path) -> torch.Tensor:
    """The top prior's codes alone (``samples/codes.pt``, as ``generate`` saved them), decoded
    from level 2: [N, T, 1] in [-1, 1]."""
    with torch.no_grad():
        return vqvae.decode([torch.load(Path(samples) / "codes.pt")["zs"][2]], start_level=2).clamp(-1, 1)


def train_side_by_side(train: Callable, jobs: list[dict], threads: int | None) -> list[dict]:
    """Run ``train(**job)`` for each job (``train_vqvae`` or ``train_prior``, or any module-level
    function that returns (model, summary)); their summaries, each with the whole run's seconds
    (setup included) as ``seconds``.

    With ``threads``, the jobs run at once, each in a process of its own with that many torch
    threads; with None, one after the other in this process. At the demo's widths a training
    step is many small ops that gain little from a second thread, so two one-thread trainings side
    by side finish well before two two-thread ones in turn (``benchmarks/results/demo_cpu.md``).
    """
    if threads is None:
        return [_timed(train, job) for job in jobs]
    spawn = multiprocessing.get_context("spawn")  # not fork: this process has run OpenMP threads
    with ProcessPoolExecutor(len(jobs), mp_context=spawn, initializer=_train_process,
                             initargs=(threads, spawn.RLock())) as pool:
        try:
            return list(pool.map(functools.partial(_timed, train), jobs))
        except BrokenProcessPool as e:
            raise RuntimeError(
                "a training process stopped before it finished. A spawned process imports the script that "
                "started it again: in a script, call this under `if __name__ == \"__main__\":`, or train in "
                "turn (DemoConfig(side_by_side=False))") from e


def _train_process(threads: int, bar_lock) -> None:
    torch.set_num_threads(threads)
    tqdm.set_lock(bar_lock)  # the progress bars share the terminal


def _timed(train: Callable, job: dict) -> dict:
    t0 = time.perf_counter()
    _, summary = train(**job)
    return {**summary, "seconds": time.perf_counter() - t0}


def _stage_clips(vqvae, priors, clip, zs, recon, audio, upsampled, song, total, cfg) -> dict[str, torch.Tensor]:
    """Every clip the report measures, by name: the training clip and its reconstruction from
    each trained level (``zs``: its codes at every level, None where untrained; ``recon``: from
    the lowest), each sample (decoded from level 2) and its
    upsampled version (level 1), the upsampler on the clip's true level-2 codes, and white noise
    of a sample's length."""
    with torch.no_grad():
        first = cfg.vqvae_start_level
        out = {"training clip": clip, f"reconstruction (level {first})": recon}
        for level in range(first + 1, 3):
            out[f"reconstruction (level {level})"] = vqvae.decode(zs[level:], start_level=level)[0, :, 0].clamp(-1, 1)
        for i, a in enumerate(audio):
            out[f"sample {i} (level 2)"] = a[:, 0]
        for i, a in enumerate(upsampled):
            out[f"sample {i} (level 1)"] = a[:, 0]
        t2 = total // vqvae.hps.hop_lengths[2]
        true_top = zs[2][:, :t2]
        prime = [true_top.new_zeros(1, 0), true_top.new_zeros(1, 0), true_top]
        up = generate(vqvae, priors, song, total_length=t2 * vqvae.hps.hop_lengths[2], n_samples=1, levels=(1,),
                      prime=prime, sampling=cfg.sampling())
        out["upsampler on the true level-2 codes"] = up[0, :, 0]
        noise = torch.Generator().manual_seed(cfg.seed)
        out["white noise"] = (0.3 * torch.randn(audio.shape[1], generator=noise)).clamp(-1, 1)
    return out


def _mean_measure(measures: list[dict]) -> dict:
    return {k: float(np.nanmean([m[k] for m in measures])) for k in measures[0]}


def _label(m: dict) -> str:
    return (f"pitched {m['pitched']:.0%}, HNR {m['hnr_db']:.1f} dB, flatness {m['flatness']:.3f}, {m['notes']:.0f} notes, "
            f"{m['changes_per_s']:.1f} changes/s")


def _markdown(r: dict) -> str:
    lines = ["# jukebox-fast demo", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["seconds"].items()]
    lines += ["", "| model | first loss | last loss |", "|---|---|---|"]
    lines += [f"| {k} | {a:.3f} | {b:.3f} |" for k, (a, b) in r["losses"].items()]
    lines += ["", f"Sampled {r['sampled_tokens']} tokens at {r['sampling_tokens_per_s']:.0f} tokens/s.",
              f"Top prior, one window: cached decoder {r['cached_tokens_per_s']:.0f} tokens/s, recomputing "
              f"the window per token {r['recompute_tokens_per_s']:.0f} tokens/s "
              f"({r['cached_tokens_per_s'] / r['recompute_tokens_per_s']:.1f}x).", "",
              "Musicality (`jukebox_fast.audio.musicality`): pitched = fraction of frames with a clear pitch "
              "(50-1000 Hz), HNR = harmonic-to-noise ratio, flatness = spectral flatness (0 tone, 0.56 white noise), "
              "notes = semitones holding 2 % or more of the pitched frames (a one-pitch buzz has 1), "
              "changes/s = moves to another semitone held 35 ms or more, per second (a drone near 0).",
              "", "| clip | pitched | HNR dB | flatness | notes | changes/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {m['pitched']:.1%} | {m['hnr_db']:.1f} | {m['flatness']:.3f} | {m['notes']:.1f} "
              f"| {m['changes_per_s']:.1f} |" for k, m in r["musicality"].items()]
    return "\n".join(lines) + "\n"
