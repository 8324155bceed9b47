"""The README's main job: a VQ-VAE round trip on audio made here, no download needed.

Synthesises a short deterministic piece (a plucked melody, an organ chord line and a bass),
fits ``tiny_vqvae`` to it for a number of steps on the CPU, encodes it to codes at all three
levels, decodes each level back to audio, and writes into the output folder:

- ``input.wav`` and ``recon_level{0,1,2}.wav``
- ``spectrogram.png`` (input and the three reconstructions)
- ``codes.pt`` (the codes), ``vqvae.pth.tar`` (the fitted model, our checkpoint format)
- ``report.json`` (losses, codebook usage, timings)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import hparams
from .audio import save_spectrogram, write_wav
from .checkpoint import atomic_save, save_vqvae
from .models.losses import calculate_bandwidth
from .models.vqvae import make_vqvae

__all__ = ["synth_clip", "run"]

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
    root = 220.0
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
    return (0.9 * out / np.abs(out).max()).astype(np.float32)


def _windows(clip: torch.Tensor, length: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, clip.shape[0] - length + 1, (batch,), generator=gen)
    return torch.stack([clip[s : s + length] for s in starts.tolist()]).unsqueeze(-1)  # [B, L, 1]


def run(out: str | Path, seconds: float = 8.0, steps: int = 200, batch: int = 4, lr: float = 1e-3,
        seed: int = 0, preset: str = "tiny_vqvae", progress: bool = True) -> dict:
    """Run the demo and return its report (also written to ``out/report.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hps = hparams.get(preset)
    top_hop = hps.hop_lengths[-1]
    n = max(int(seconds * hps.sr) // top_hop * top_hop, top_hop)
    window = min(hps.sample_length, n)
    clip = torch.from_numpy(synth_clip(n / hps.sr, hps.sr, seed)[:n])
    report: dict = {"preset": preset, "seconds": n / hps.sr, "steps": steps, "batch": batch}
    timings: dict[str, float] = {}

    vqvae = make_vqvae(hps)
    vqvae.bandwidth = calculate_bandwidth([clip.numpy()])
    opt = torch.optim.AdamW(vqvae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    vqvae.train()
    t0 = time.perf_counter()
    losses = []
    bar = tqdm(range(steps), desc="fitting tiny_vqvae", disable=not progress, unit="step")
    for _ in bar:
        _, loss, metrics = vqvae(_windows(clip, window, batch, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", usage=f"{float(metrics['usage']):.0f}")
    timings["fit_s"] = time.perf_counter() - t0
    report["loss_first"] = losses[0] if losses else None
    report["loss_last"] = losses[-1] if losses else None

    vqvae.eval()
    audio = clip.view(1, n, 1)
    with torch.no_grad():
        t0 = time.perf_counter()
        codes = vqvae.encode(audio)
        timings["encode_s"] = time.perf_counter() - t0
        recons = []
        for level in range(hps.levels):
            t0 = time.perf_counter()
            recons.append(vqvae.decode(codes[level:], start_level=level)[0, :, 0])
            timings[f"decode_level{level}_s"] = time.perf_counter() - t0
    report["timings"] = timings
    report["codes"] = {f"level{lvl}": {"length": int(z.shape[1]), "distinct": int(z.unique().numel())}
                       for lvl, z in enumerate(codes)}
    report["recon_l2"] = {f"level{lvl}": float((r - clip).square().mean()) for lvl, r in enumerate(recons)}
    report["input_l2"] = float(clip.square().mean())

    write_wav(out / "input.wav", clip, hps.sr)
    for level, r in enumerate(recons):
        write_wav(out / f"recon_level{level}.wav", r, hps.sr)
    save_spectrogram(out / "spectrogram.png", [clip] + recons,
                     ["input"] + [f"decoded from level {lvl} (hop {hps.hop_lengths[lvl]})" for lvl in range(hps.levels)],
                     hps.sr)
    atomic_save({"codes": codes, "hop_lengths": hps.hop_lengths, "sr": hps.sr}, out / "codes.pt")
    save_vqvae(vqvae, out / "vqvae.pth.tar")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
