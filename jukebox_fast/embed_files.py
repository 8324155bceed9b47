"""``jukebox-fast embed``: representations of whole datasets, resumable, over many GPUs.

Each audio file under the inputs gives ``OUT/<its path under the input folder>.npy``, float32
(float16 with ``fp16_out``): ``[layers, positions, width]``, or ``[layers, width]`` with meanpool,
the layers in ascending order. Each is written atomically, so a file is either done or absent.
``OUT/settings.json`` records what the features are (layers, meanpool, rate, the models'
fingerprints); a rerun into OUT with other settings is refused unless ``overwrite``, which
removes every feature file of the earlier run. A rerun with the same settings skips every file
already done, where done means its header promises the settings' form and its size matches (a
truncated or foreign file is made again). ``OUT/index-<rank>.jsonl`` lists the files each
process finished (source, npy, shape), rebuilt from the folder at the start of every run;
``OUT/failed-<rank>.log`` lists those it could not read, with the reason. One run writes into a
folder at a time (an OS lock per rank); a second gets one line naming the process.

Under ``torchrun`` each process takes every WORLD_SIZE-th file from its RANK and its own GPU
(LOCAL_RANK); nothing is exchanged between processes, and every one checks the settings.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import AUDIO_SUFFIXES, AudioError, read_audio
from .files import atomic_text, atomic_write
from .embed import extract
from .runs import claim_output, fingerprint, hold_output

__all__ = ["find_inputs", "embed_files", "EmbedResult"]


def find_inputs(inputs: list[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(audio file, its npy path relative to OUT) for files and folders given, sorted; two
    inputs that would land on the same npy are an error."""
    found: dict[Path, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            pairs = [(p, p.relative_to(item)) for p in sorted(item.rglob("*"))
                     if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
        elif item.is_file():
            pairs = [(item, Path(item.name))]
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
        for path, rel in pairs:
            npy = rel.with_suffix(".npy")
            if npy in found and found[npy] != path:
                raise ValueError(f"{found[npy]} and {path} would both be written to {npy}: embed them into "
                                 "separate --out folders")
            found[npy] = path
    if not found:
        raise FileNotFoundError(f"no audio files in {', '.join(map(str, inputs))} "
                                f"(looked for {', '.join(AUDIO_SUFFIXES)})")
    return sorted(((path, npy) for npy, path in found.items()), key=lambda pair: str(pair[1]))


@dataclass
class EmbedResult:
    done: int  # files written in this run
    skipped: int  # already there from an earlier run
    failed: list[str]  # files that could not be read, with the reason


def _finished(path: Path, dtype: np.dtype, ndim: int, n_layers: int, width: int) -> tuple[int, ...] | None:
    """The shape of ``path`` if it is a whole feature file of the promised form (dtype, rank,
    layers, width; its size what its header says), else None: read from the header alone."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, found = read(f)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError, EOFError):
        return None
    whole = size == offset + int(np.prod(shape, dtype=np.int64)) * found.itemsize
    ok = (found == dtype and not fortran and len(shape) == ndim and shape[0] == n_layers and shape[-1] == width
          and whole)
    return tuple(shape) if ok else None


def embed_files(vqvae, prior, inputs, out: str | os.PathLike, layers, meanpool: bool = False, *,
                downsample_target_rate: float | None = None, dtype: torch.dtype | None = None,
                batch_size: int = 8, fp16_out: bool = False, overwrite: bool = False,
                rank: int = 0, world_size: int = 1, progress: bool = True) -> EmbedResult:
    """Embed every audio file in ``inputs`` (files and folders) into ``out``; see the module."""
    out = Path(out)
    layers = sorted({int(n) for n in layers})
    files = find_inputs(inputs)
    settings = {"layers": layers, "meanpool": bool(meanpool), "downsample_target_rate": downsample_target_rate,
                "fp16_out": bool(fp16_out), "dtype": str(dtype), "vqvae": fingerprint(vqvae),
                "prior": fingerprint(prior)}
    with hold_output(out, rank if world_size > 1 else None):  # one writer per folder (per rank)
        # Every process checks and records the same settings (rank 0 may have died).
        claim_output(out, settings, resume=None, overwrite=overwrite, what="features made",
                     advice="use another --out, or --overwrite to make them anew")
        return _embed(vqvae, prior, files, out, layers, meanpool, downsample_target_rate, dtype, batch_size, fp16_out,
                      overwrite, rank, world_size, progress)


def _embed(vqvae, prior, files, out: Path, layers, meanpool, downsample_target_rate, dtype, batch_size, fp16_out,
           overwrite, rank, world_size, progress) -> EmbedResult:
    from tqdm.auto import tqdm

    mine = files[rank::world_size]
    index = out / f"index-{rank}.jsonl"
    failed_log = out / f"failed-{rank}.log"
    if overwrite:  # each process removes what it will write again; rank 0 what no process will
        stale = [out / npy for _, npy in mine]
        if rank == 0:
            current = {npy for _, npy in files}
            stale += [p for p in out.rglob("*.npy") if p.relative_to(out) not in current]
            stale += [p for p in (*out.glob("index-*.jsonl"), *out.glob("failed-*.log"))
                      if int(p.stem.split("-")[1]) >= world_size]
        for old in stale:
            old.unlink(missing_ok=True)
    out_type = np.float16 if fp16_out else np.float32
    done = {}  # a file is done only when it holds what the settings promise; anything else is redone
    for path, npy in mine:
        shape = _finished(out / npy, np.dtype(out_type), 2 if meanpool else 3, len(layers), prior.prior.width)
        if shape is not None:
            done[npy] = (path, shape)
        else:
            (out / npy).unlink(missing_ok=True)
    # The index lists exactly the finished files: rebuilt here, so a run killed between a file
    # and its line leaves no file unlisted.
    atomic_text(index, "".join(json.dumps({"file": str(p), "npy": str(n), "shape": list(sh)}) + "\n"
                               for n, (p, sh) in done.items()))
    atomic_text(failed_log, "")  # this run tries every unfinished file again
    todo = [(path, npy) for path, npy in mine if npy not in done]
    failed: list[str] = []
    sr = vqvae.hps.sr
    with tqdm(total=len(todo), unit="clip", desc="embed", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            clips, names = [], []
            for path, npy in todo[start : start + batch_size]:
                try:
                    audio = read_audio(path, sr, peak=1.0)
                    if len(audio) < vqvae.hps.hop_lengths[-1]:
                        raise AudioError(f"{path} holds {len(audio)} samples, under one top-level code")
                except (AudioError, OSError, RuntimeError) as e:
                    failed.append(f"{path}: {e}")
                    with failed_log.open("a") as f:
                        f.write(f"{path}\t{e}\n")
                    bar.update(1)
                    continue
                clips.append(audio)
                names.append((path, npy))
            if not clips:
                continue
            reps = extract(vqvae, prior, clips, layers, meanpool, downsample_target_rate=downsample_target_rate,
                           dtype=dtype, batch_size=batch_size)
            for (path, npy), r in zip(names, reps):
                array = torch.stack([r[n] for n in layers]).cpu().numpy().astype(out_type)  # [layers, (t,) width]
                atomic_write(out / npy, lambda f, a=array: np.save(f, a))
                with index.open("a") as f:
                    f.write(json.dumps({"file": str(path), "npy": str(npy), "shape": list(array.shape)}) + "\n")
            bar.update(len(names))
    return EmbedResult(done=len(todo) - len(failed), skipped=len(mine) - len(todo), failed=failed)
