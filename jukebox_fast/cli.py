"""The ``jukebox-fast`` command."""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from . import validate

EXAMPLES = """examples:
  jukebox-fast demo --out demo_out               train tiny models on synthetic music, sample, write wav + PNG
  jukebox-fast info                              what runs on this machine, op by op
  jukebox-fast train-vqvae songs/ --out runs/vq --preset tiny_vqvae --steps 2000
  jukebox-fast train-prior songs/ --vqvae runs/vq/vqvae.pth.tar --out runs/top --preset tiny_top_prior
  jukebox-fast encode song.flac --vqvae vqvae.pth.tar --out song_codes.pt
  jukebox-fast decode song_codes.pt --vqvae vqvae.pth.tar --out decoded/ --level 1
  jukebox-fast sample --checkpoints models/5b --model prior_5b --artist 0 --genre 0 --seconds 20 --out sample/
  jukebox-fast embed songs/ --checkpoints models/5b --model prior_5b --layers 36 --meanpool --out features/
  jukebox-fast bench decoder -- --seconds 2
  torchrun --nproc_per_node 8 -m jukebox_fast.cli train-prior ...   data-parallel training
  torchrun --nproc_per_node 8 -m jukebox_fast.cli embed ...         files split across 8 GPUs
"""

UPSAMPLERS = {0: "upsampler_level_0", 1: "upsampler_level_1"}
BAD_FILE_CHOICES = ("skip", "stop")  # jukebox_fast.train.data's, restated so --help needs no torch


def _info(args) -> int:
    from .info import report

    print(report())
    return 0


def _demo(args) -> int:
    from .demo import DemoConfig, run

    cfg = DemoConfig.small() if args.small else DemoConfig.quality() if args.quality else DemoConfig()
    for name in ("vqvae_steps", "top_prior_steps", "upsampler_steps", "sample_seconds", "temperature",
                 "upsampler_temperature", "top_p", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    report = run(args.out, cfg, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/: samples/*.wav, reconstruction.wav, spectrogram.png, report.md, checkpoints; "
          f"{sum(report['seconds'].values()):.0f} s in all")
    return 0


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                       grad_clip=args.grad_clip, precision=args.precision, checkpoint_every=args.checkpoint_every,
                       seed=args.seed, fsdp=getattr(args, "fsdp", False), recompute=getattr(args, "recompute", "auto"),
                       compile=args.compile)


def _train_vqvae(args) -> int:
    from .train import train_vqvae

    _, summary = train_vqvae(args.data, args.out, args.preset, _train_config(args), args.resume,
                             _device(args.device), not args.quiet, args.bad_files, args.overwrite,
                             start_level=args.start_level)
    print(f"{summary['steps']} steps, loss {summary['losses'][-1]:.4f}; wrote {args.out}/vqvae.pth.tar"
          + _skipped(summary))
    return 0


def _skipped(summary: dict) -> str:
    skipped = summary.get("skipped") or []
    return f"; skipped {len(skipped)} file(s) (the warnings above say why)" if skipped else ""


def _train_prior(args) -> int:
    from .train import train_prior

    model, summary = train_prior(args.data, args.out, args.vqvae, args.preset, _train_config(args), args.resume,
                                 _device(args.device), args.artist, tuple(args.genre), not args.quiet, args.bad_files,
                                 args.overwrite)
    print(f"{summary['steps']} steps, loss {summary['losses'][-1]:.4f}; "
          f"wrote {args.out}/prior_level_{model.hps.level}.pth.tar" + _skipped(summary))
    return 0


def _read_clip(path, sr: int, hop: int, seconds: float | None = None):
    """An audio file's first ``seconds``, trimmed to whole top-level codes (``hop`` samples)."""
    from .audio import read_audio

    audio = read_audio(path, sr)
    if seconds is not None:
        audio = audio[: int(seconds * sr)]
    n = len(audio) // hop * hop
    if n == 0:
        raise ValueError(f"{path} gives less than one top-level code ({hop} samples)")
    return audio[:n]


def _encode_clip(vqvae, audio, copies: int = 1, start_level: int = 0):
    """The codes of a clip from :func:`_read_clip`, ``copies`` rows of them: per level
    [copies, T_level], one encoding seen ``copies`` times (a view: the sizes are checked before
    anything is allocated for them). Levels below ``start_level`` (none sampled there; maybe
    never trained) get no codes: [copies, 0]."""
    import torch

    x = torch.from_numpy(audio).view(1, len(audio), 1)  # [1, n, 1]
    device = next(vqvae.parameters()).device
    zs = vqvae.encode(x.to(device), start_level=start_level)
    return [torch.zeros(copies, 0, dtype=torch.int64, device=device)] * start_level + [z.expand(copies, -1) for z in zs]


def _encode(args) -> int:
    from .checkpoint import load_vqvae
    from .files import atomic_save

    vqvae = load_vqvae(args.vqvae, device=args.device)
    clip = _read_clip(args.audio, vqvae.hps.sr, vqvae.hps.hop_lengths[-1])
    codes = [z.cpu() for z in _encode_clip(vqvae, clip, start_level=vqvae.first_trained_level)]
    atomic_save({"codes": codes, "hop_lengths": vqvae.hps.hop_lengths, "sr": vqvae.hps.sr,
                 "source": str(args.audio)}, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"level {lvl} {tuple(z.shape)}" for lvl, z in enumerate(codes)))
    return 0


def _decode(args) -> int:
    import torch

    from .audio import save_spectrogram, write_wav
    from .checkpoint import load_vqvae
    from .files import CheckpointError, read_checkpoint

    vqvae = load_vqvae(args.vqvae, device=args.device)
    saved = read_checkpoint(args.codes)
    codes = saved.get("codes", saved.get("zs")) if isinstance(saved, dict) else None
    if not isinstance(codes, list) or not all(isinstance(z, torch.Tensor) for z in codes):
        raise CheckpointError(f"{args.codes} holds no list of code tensors (write one with `jukebox-fast encode` "
                              "or `sample`)")
    level = args.level
    if not 0 <= level < len(codes) or codes[level].numel() == 0:
        raise ValueError(f"{args.codes} has no codes at level {level}")
    device = next(vqvae.parameters()).device
    with torch.no_grad():
        audio = vqvae.decode([z.to(device) for z in codes[level:]], start_level=level).clamp(-1, 1).cpu()
    out = Path(args.out)
    paths = [write_wav(out / f"level_{level}_item_{i}.wav", audio[i, :, 0], vqvae.hps.sr) for i in range(len(audio))]
    save_spectrogram(out / f"level_{level}.png", [a[:, 0] for a in audio],
                     [f"item {i}, decoded from level {level}" for i in range(len(audio))], vqvae.hps.sr)
    print(f"wrote {len(paths)} wav file(s) and level_{level}.png into {out}/")
    return 0


def _checked(convert, rule, flag: str, *args):
    """An argparse ``type=``: the text converted, then held to the API's own rule
    (:mod:`jukebox_fast.validate`). A value the rule refuses is reported by ``main`` on one line
    naming the option (exit 2); text that is not a number is argparse's to report."""
    def parse(text: str):
        value = convert(text)  # ValueError: argparse's "invalid float value"
        try:
            return rule(value, flag, *args)
        except ValueError as e:
            raise _UsageError(str(e)) from None

    parse.__name__ = convert.__name__  # what argparse calls the type in its own messages
    return parse


def _non_negative(value: float, flag: str) -> float:
    return validate.finite(value, flag, allow_zero=True)


class _UsageError(Exception):
    """An option value the API's rules refuse (raised while argparse converts it)."""


def _device(name: str | None):
    """The device for --device, or an error naming what this machine has."""
    import torch

    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this PyTorch sees no CUDA device (use --device cpu)")
    return device


def _checkpoint_files(folder: Path) -> tuple[Path | None, dict[int, Path]]:
    """The VQ-VAE and the priors (by level) in ``folder`` or one folder below it: a folder of
    original checkpoints, or the demo's output (vqvae/, top_prior/, upsampler/)."""
    def found(pattern: str) -> list[Path]:
        return sorted(folder.glob(pattern)) or sorted(folder.glob(f"*/{pattern}"))

    vqvaes = found("vqvae.pth.tar")
    if len(vqvaes) > 1:
        raise ValueError(f"{folder} holds several VQ-VAEs ({', '.join(map(str, vqvaes))}): pass --vqvae")
    priors: dict[int, Path] = {}
    for path in found("prior_level_*.pth.tar"):
        level = int(path.name[len("prior_level_"):].split(".")[0])
        if level in priors:
            raise ValueError(f"{folder} holds two level-{level} priors ({priors[level]}, {path})")
        priors[level] = path
    return (vqvaes[0] if vqvaes else None), priors


def _sample(args) -> int:
    import torch

    from .checkpoint import PriorFile, load_vqvae, vqvae_hparams
    from .memory import plan_generate
    from .sample import Sampling, Song, check_levels, check_request, generate, total_length_of

    device = _device(args.device)
    ckpt = Path(args.checkpoints) if args.checkpoints else None
    found_vqvae, found = _checkpoint_files(ckpt) if ckpt else (None, {})
    vqvae_path = args.vqvae or found_vqvae
    if vqvae_path is None:
        raise ValueError("give --vqvae, or --checkpoints with a vqvae.pth.tar" + (f" (none in {ckpt})" if ckpt else ""))
    vqvae_hps = vqvae_hparams(vqvae_path)  # the architecture only: nothing loads before the plan
    top = vqvae_hps.levels - 1
    if args.levels:
        try:
            levels = [int(v) for v in args.levels.split(",")]
        except ValueError:
            raise ValueError(f"--levels takes levels separated by commas, e.g. 2,1,0; got {args.levels!r}") from None
    else:
        levels = sorted(found, reverse=True)
        if not levels:
            raise ValueError(f"no prior_level_<L>.pth.tar under {ckpt or '--checkpoints'}")
    levels = check_levels(levels, top)
    priors: list = [None] * vqvae_hps.levels
    for level in levels:
        path = found.get(level)
        if path is None:
            raise FileNotFoundError(f"no prior for level {level}: expected prior_level_{level}.pth.tar under "
                                    f"{ckpt or '--checkpoints'}")
        preset = args.model if level == top else UPSAMPLERS.get(level) if args.model else None
        priors[level] = PriorFile(path, preset)  # loaded when the run reaches its level
    artist = int(args.artist) if args.artist.lstrip("-").isdigit() else args.artist
    names = args.genre or ["unknown" if args.ids else "0"]
    if all(g.lstrip("-").isdigit() for g in names):
        genres = [int(g) for g in names]
    elif len(names) == 1:
        genres = names[0]
    else:
        raise ValueError(f"--genre takes one genre name, or ids; got {names}")
    for name, value in (("--artist", artist), *(("--genre", g) for g in (genres if isinstance(genres, list) else []))):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"{name} ids are >= 0, got {value}")
    level_ids = {}
    for spec in args.level_ids or []:
        try:
            level, a, g = spec.split(":")
            level_ids[int(level)] = (int(a), tuple(int(x) for x in g.split(",")))
        except ValueError:
            raise ValueError(f"--level-ids takes LEVEL:ARTIST:GENRE[,GENRE...] ids, got {spec!r}") from None
    top_hps = priors[levels[0]].hparams()
    sr = vqvae_hps.sr
    total = total_length_of(args.seconds, vqvae_hps, sr)
    # The timing conditioning's song length: at least the shortest song the prior was trained on.
    min_total = math.ceil((top_hps.min_duration or 0) * sr)
    song_total = int(args.song_seconds * sr) if args.song_seconds else max(total, min_total)
    song = Song(artist, genres, song_total, args.lyrics or (), ids=args.ids, level_ids=level_ids)
    gen = torch.Generator(device=device or "cpu").manual_seed(args.seed)
    sampling = Sampling(temp=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=gen,
                        progress=not args.quiet)
    clip = _read_clip(args.prime, sr, vqvae_hps.hop_lengths[-1], args.prime_seconds) if args.prime else None
    prime_tokens = None if clip is None else [len(clip) // hop for hop in vqvae_hps.hop_lengths]
    check_request(vqvae_hps, priors, song, levels, total, args.n_samples, prime_tokens, sr)
    plan = plan_generate(vqvae_hps, priors, levels, n_samples=args.n_samples, total_length=total, sampling=sampling,
                         prime_tokens=prime_tokens, max_memory=args.max_memory, device=device or "cpu",
                         weights=args.weights)
    if args.plan:
        print(plan.table())
        return 0
    vqvae = load_vqvae(vqvae_path, device=device)
    prime = None if clip is None else _encode_clip(vqvae, clip, args.n_samples, min(levels))
    try:
        generate(vqvae, priors, song, total_length=total, n_samples=args.n_samples, levels=levels, prime=prime,
                 sampling=sampling, out_dir=args.out, sr=sr, overwrite=args.overwrite,
                 alignment=False if args.no_alignment else args.alignment or True, max_memory=args.max_memory,
                 weights=args.weights)
    except KeyboardInterrupt:
        print(f"jukebox-fast sample: interrupted; the codes sampled so far are in {Path(args.out) / 'codes.pt'}: "
              "run the same command to resume", file=sys.stderr)
        return 130
    rate = sampling.stats["tokens"] / max(sampling.stats["seconds"], 1e-9)
    page = Path(args.out) / "index.html"
    print(f"wrote {args.n_samples} sample(s) into {args.out}/ ({sampling.stats['tokens']} tokens, {rate:.0f} tokens/s)"
          + (f"; open {page} to follow the lyrics" if page.exists() else ""))
    return 0


def _layer_head(text: str) -> tuple[int, int]:
    try:
        layer, head = (int(v) for v in text.split(":"))
    except ValueError:
        raise _UsageError(f"--alignment takes LAYER:HEAD (two integers), got {text!r}") from None
    if layer < 0 or head < 0:
        raise _UsageError(f"--alignment takes a layer and head >= 0, got {text!r}")
    return layer, head


def _page(args) -> int:
    from .page import write_page

    print(f"wrote {write_page(args.folder)}")
    return 0


def _embed(args) -> int:
    import os

    import torch

    from .checkpoint import PriorFile, load_prior, load_vqvae, vqvae_hparams
    from .devices import process_device
    from .embed_files import embed_files
    from .memory import plan_embed

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = process_device(_device(args.device))
    if min(args.layers) < 1:
        raise ValueError(f"--layers are numbered from 1, got {args.layers}")
    found_vqvae, priors = _checkpoint_files(Path(args.checkpoints)) if args.checkpoints else (None, {})
    vqvae_path = args.vqvae or found_vqvae
    if vqvae_path is None:
        raise ValueError("give --vqvae and --prior, or --checkpoints with vqvae.pth.tar and prior_level_2.pth.tar")
    vqvae_hps = vqvae_hparams(vqvae_path)  # the architectures only: nothing loads before the plan
    prior_path = args.prior or priors.get(vqvae_hps.levels - 1)
    if prior_path is None:
        raise ValueError(f"no top prior (prior_level_{vqvae_hps.levels - 1}.pth.tar) under {args.checkpoints}: "
                         "pass --prior")
    prior_file = PriorFile(prior_path, args.model)
    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    plan = plan_embed(vqvae_hps, prior_file, layers=max(args.layers), batch_size=args.batch_size, dtype=dtype,
                      max_memory=args.max_memory, device=device)
    if args.plan:
        print(plan.table())
        return 0
    vqvae = load_vqvae(vqvae_path, device=device)
    prior = load_prior(prior_path, args.model, vqvae.hps if args.model else None, device=device,
                       layers=max(args.layers), weights=plan.choice.weight_form(device))
    try:
        result = embed_files(vqvae, prior, args.inputs, args.out, args.layers, args.meanpool,
                             downsample_target_rate=args.downsample_rate, dtype=dtype, batch_size=plan.choice.batch,
                             fp16_out=args.fp16_out, overwrite=args.overwrite, rank=rank, world_size=world,
                             progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"jukebox-fast embed: interrupted; the files finished so far are in {args.out}/: run the same "
              "command to go on from there", file=sys.stderr)
        return 130
    for line in result.failed:
        print(f"jukebox-fast embed: skipped {line}", file=sys.stderr)
    print(f"embedded {result.done} file(s) into {args.out}/ ({result.skipped} done before, "
          f"{len(result.failed)} unreadable){f' as rank {rank} of {world}' if world > 1 else ''}")
    return 0


def _bench(args) -> int:
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the benchmarks ship with a source checkout of jukebox_fast")
    if args.suite == "gpu":  # the GPU evidence: install-free orchestration of facts, resources, tests, benchmarks
        cmd = [sys.executable, str(root / "gpu_evidence.py"), "--out", str(Path(args.out).resolve()), *args.extra]
        print(f"+ {' '.join(cmd)}", flush=True)
        return subprocess.run(cmd).returncode
    known = sorted(p.stem[len("bench_"):] for p in root.glob("bench_*.py"))
    names = args.names or ["decoder"]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(known)}")
    out_dir = Path(args.out).resolve()  # the scripts run in benchmarks/: a relative path would land there
    failed = []
    for name in names:
        cmd = [sys.executable, str(root / f"bench_{name}.py"), "--out", str(out_dir / f"{name}.md"), *args.extra]
        print(f"+ {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=root).returncode:
            failed.append(name)
    if failed:
        raise RuntimeError(f"benchmark(s) failed: {', '.join(failed)} (the others' tables are in {out_dir}/)")
    return 0


def _add_training(p) -> None:
    p.add_argument("data", help="folder of audio files (any format soundfile reads)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt (resumable) and the final model")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="train a new model over the run in OUT")
    p.add_argument("--bad-files", choices=BAD_FILE_CHOICES, default="skip",
                   help="files that are unreadable, hold NaN/inf or are shorter than the training window: "
                        "skip them with a warning, or stop")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block: the first steps wait for the compiler (about a minute "
                        "for a tiny prior on 2 cores, seconds with a warm cache); later prior steps run 1.3-1.6x faster "
                        "on a CPU (benchmarks/results/prior_cpu.md)")


def _add_memory(p) -> None:
    p.add_argument("--plan", action="store_true",
                   help="print the memory plan (bytes by phase, before any weight loads) and exit")
    p.add_argument("--max-memory", type=_checked(str, _size, "--max-memory"), metavar="SIZE",
                   help="run within SIZE (e.g. 16GB): levels in turn, 16-bit weights and caches, smaller batches, "
                        "as the plan needs; refused before any weight loads when nothing fits")


def _size(text: str, flag: str) -> str:
    from .memory import parse_size

    try:
        parse_size(text)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="jukebox-fast", epilog=EXAMPLES,
                                     description="OpenAI's Jukebox with fast kernels and original-compatible checkpoints.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jukebox_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    defaults = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("info", help="print ops x implementations x available or why not")
    p.set_defaults(func=_info)

    p = sub.add_parser("demo", help="train tiny models on synthetic music and sample (the README's main job)",
                       formatter_class=defaults)
    p.add_argument("--out", default="jukebox_fast_demo", help="output folder")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="the CI size: a few steps, one short sample")
    size.add_argument("--quality", action="store_true",
                      help="train every stage longer (VQ-VAE 600, top prior 6000, upsampler 8000 steps)")
    p.add_argument("--vqvae-steps", type=int, help="override the VQ-VAE's training steps (each level's)")
    p.add_argument("--top-prior-steps", type=int, help="override the top prior's training steps")
    p.add_argument("--upsampler-steps", type=int, help="override the upsampler's training steps")
    p.add_argument("--temperature", type=float, help="override the top level's sampling temperature")
    p.add_argument("--upsampler-temperature", type=float, help="override level 1's sampling temperature")
    p.add_argument("--top-p", type=_checked(float, validate.unit_interval, "--top-p", " (0: off)"),
                   help="override the nucleus every level samples from (0: off; the demo's default 0.9)")
    p.add_argument("--sample-seconds", type=float, help="override the length sampled")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true", help="finish the run in OUT (each stage from its checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds a run")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train-vqvae", help="train a VQ-VAE on a folder of audio", formatter_class=defaults)
    _add_training(p)
    p.add_argument("--preset", default="tiny_vqvae", help="hparams preset (vqvae, tiny_vqvae)")
    p.add_argument("--start-level", type=int, default=0,
                   help="train only this level and those above it (the levels the priors will use; "
                        "level 0 is more than half of the tiny VQ-VAE's step)")
    p.set_defaults(func=_train_vqvae)

    p = sub.add_parser("train-prior", help="train a prior or upsampler on a VQ-VAE's codes", formatter_class=defaults)
    _add_training(p)
    p.add_argument("--vqvae", required=True, help="the VQ-VAE checkpoint whose codes the prior models")
    p.add_argument("--preset", default="tiny_top_prior", help="hparams preset (e.g. tiny_upsampler, prior_1b_lyrics)")
    p.add_argument("--artist", type=int, default=0, help="artist id of the training songs")
    p.add_argument("--genre", type=int, action="append", default=None, help="genre id (repeatable)")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights (big priors)")
    p.add_argument("--recompute", choices=("auto", "on", "off"), default="auto",
                   help="recompute the upsampler conditioner's blocks in backward (the original's checkpointing): "
                        "auto does it only where the step would not fit in memory otherwise")
    p.set_defaults(func=_train_prior, genre=None)

    p = sub.add_parser("encode", help="audio file -> codes file", formatter_class=defaults)
    p.add_argument("audio")
    p.add_argument("--vqvae", required=True)
    p.add_argument("--out", required=True, help="codes file (.pt)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="codes file -> wav + spectrogram PNG", formatter_class=defaults)
    p.add_argument("codes")
    p.add_argument("--vqvae", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--level", type=int, default=0, help="decode from this level's codes")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_decode)

    p = sub.add_parser("sample", help="sample music with trained or original checkpoints (resumable)",
                       formatter_class=defaults)
    p.add_argument("--checkpoints", help="folder with vqvae.pth.tar and prior_level_<L>.pth.tar, there or one "
                                         "folder down (a demo's output folder works as it is)")
    p.add_argument("--vqvae", help="VQ-VAE checkpoint (default: CHECKPOINTS/vqvae.pth.tar)")
    p.add_argument("--model", help="top prior preset of original checkpoints (prior_5b, prior_5b_lyrics, "
                                   "prior_1b_lyrics); ours describe themselves")
    p.add_argument("--artist", default="0", help="artist id, or name with --ids (each level maps it with its own "
                                                 "tables; 'unknown' for the unknown artist)")
    p.add_argument("--genre", action="append", help="genre name (with --ids), or ids (repeatable)")
    p.add_argument("--ids", help="folder with the released v2/v3 artist and genre id lists")
    p.add_argument("--level-ids", action="append", metavar="LEVEL:ARTIST:GENRE[,GENRE]",
                   help="ids for one level, in place of the names (repeatable)")
    p.add_argument("--lyrics", help="lyrics text (lyrics models)")
    p.add_argument("--seconds", type=_checked(float, validate.finite, "--seconds"), default=20.0, help="length to sample")
    p.add_argument("--song-seconds", type=_checked(float, validate.finite, "--song-seconds"),
                   help="the song's length for the timing labels "
                                                      "(default: --seconds, at least the prior's min_duration)")
    p.add_argument("--n-samples", type=_checked(int, validate.at_least, "--n-samples", 1), default=1)
    p.add_argument("--temperature", type=_checked(float, _non_negative, "--temperature"), default=0.99)
    p.add_argument("--top-k", type=_checked(int, validate.at_least, "--top-k", 0, " (0: off)"), default=0)
    p.add_argument("--top-p", type=_checked(float, validate.unit_interval, "--top-p", " (0: off)"), default=0.0)
    p.add_argument("--prime", help="audio file to continue")
    p.add_argument("--prime-seconds", type=_checked(float, validate.finite, "--prime-seconds"), default=5.0)
    p.add_argument("--levels", help="levels to sample, comma-separated (default: every level with a prior)")
    p.add_argument("--out", required=True, help="output folder (codes.pt there makes the run resume, if it was "
                                                "sampled with the same settings)")
    p.add_argument("--overwrite", action="store_true", help="start over where OUT holds codes of other settings")
    p.add_argument("--no-alignment", action="store_true",
                   help="with a lyrics prior, skip the lyric alignment and the page (index.html)")
    p.add_argument("--alignment", type=_layer_head, metavar="LAYER:HEAD",
                   help="the lyrics prior's layer (from 0) and head to align with (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--weights", choices=("stored", "16-bit", "int8"), default="stored",
                   help="the priors' projection weights: as stored, 16-bit, or int8 (weight-only, per output "
                        "channel: a quarter of fp32's bytes; the decode step reads them on the CPU)")
    _add_memory(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("page", help="write FOLDER/index.html again from a sampling folder's alignment and wavs",
                       formatter_class=defaults)
    p.add_argument("folder", help="a folder `sample` wrote with a lyrics prior (alignment.npz, level_*_item_*.wav)")
    p.set_defaults(func=_page)

    p = sub.add_parser("embed", help="top-prior representations of audio files (jukemirlib's features), resumable",
                       formatter_class=defaults)
    p.add_argument("inputs", nargs="+", help="audio files and folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for one .npy per file, settings.json and index-<rank>.jsonl")
    p.add_argument("--checkpoints", help="folder with vqvae.pth.tar and prior_level_2.pth.tar (there or one down)")
    p.add_argument("--vqvae", help="VQ-VAE checkpoint")
    p.add_argument("--prior", help="top prior checkpoint")
    p.add_argument("--model", help="the prior's preset for original files (prior_5b); ours describe themselves")
    p.add_argument("--layers", type=int, nargs="+", default=[36], help="blocks to read after, numbered from 1")
    p.add_argument("--meanpool", action="store_true", help="the mean over positions of each file")
    p.add_argument("--downsample-rate", type=_checked(float, validate.finite, "--downsample-rate"),
                   help="resample the frames to this rate in Hz (before meanpool)")
    p.add_argument("--batch-size", type=_checked(int, validate.at_least, "--batch-size", 1), default=8,
                   help="files per forward of the prior")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--fp16-out", action="store_true", help="write float16 arrays")
    p.add_argument("--overwrite", action="store_true", help="make the features anew where OUT holds other settings")
    p.add_argument("--device", default=None, help="default: this process's GPU (LOCAL_RANK under torchrun), else cpu")
    p.add_argument("--quiet", action="store_true")
    _add_memory(p)
    p.set_defaults(func=_embed)

    p = sub.add_parser("bench", help="run benchmark scripts (source checkout) and print their tables",
                       formatter_class=defaults)
    p.add_argument("names", nargs="*", help="benchmarks, e.g. decoder vq sampling (default: decoder); "
                                            "arguments after -- go to each script")
    p.add_argument("--out", default="bench_results", help="folder for the markdown tables")
    p.add_argument("--suite", choices=("gpu",), help="gpu: the GPU evidence run (benchmarks/gpu_evidence.py)")
    p.set_defaults(func=_bench)  # arguments after `--` go to the scripts (split off in main)
    return parser


# What a user's request can end in, said in one line with exit 2: bad input, paths, checkpoints,
# a loss that diverged. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if argv[:1] == ["bench"] and "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"jukebox-fast {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    args.extra = extra
    if args.command == "train-prior" and args.genre is None:
        args.genre = [0]
    if args.command not in ("info", "bench"):
        from .threads import configure_threads

        configure_threads()
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"jukebox-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
