"""Run one sampling job in a fresh process and report its peak resident memory above the
baseline after imports (``ru_maxrss``): what tests/test_memory.py holds the memory plan to.

    python tests/memory_run.py JOB.json   ->   prints {"baseline": bytes, "peak": bytes}

JOB (sampling): {"vqvae": path, "priors": {level: path}, "levels": [...], "n_samples": n,
"total_length": samples, "warmup_length": samples, "song_length": samples, "prime_tokens": top-level codes
to continue, "in_turn": bool, "weights": "stored" | "16-bit", "max_memory": "16GB"}.
JOB (embedding): {"embed": true, "vqvae": path, "prior": path, "layers": n, "clips": n, "seconds": s}.
"""
import importlib
import json
import pkgutil
import resource
import sys

import torch
import torch._dynamo  # (torch imports its compiler stack on first use of many ops: 150 MB of code)

import jukebox_fast
import jukebox_fast.sample as sample
from jukebox_fast import extension
from jukebox_fast.checkpoint import PriorFile, load_prior, load_vqvae


def status(field: str) -> int:
    """VmRSS (resident now) or VmHWM (its peak: what ru_maxrss reports) in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(path: str) -> None:
    job = json.loads(open(path).read())
    for module in pkgutil.walk_packages(jukebox_fast.__path__, "jukebox_fast."):  # every import, before the baseline
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    extension.load()
    # A process pays once for library set-up and first-use code (oneDNN's kernels, thread pools):
    # a small run of the same job pays it, then the peak is reset (clear_refs 5: VmHWM = VmRSS).
    if job.get("embed"):
        embed(job, 1, 0.1)
    else:
        run(job, job["warmup_length"], 1, primed=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = status("VmRSS")
    if job.get("embed"):
        embed(job, job["clips"], job["seconds"])
    else:
        run(job, job["total_length"], job["n_samples"])
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "ru_maxrss": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024}))


def embed(job: dict, clips: int, seconds: float) -> None:
    """Load the VQ-VAE and the prior cut to ``layers`` blocks, then extract: one batch of clips."""
    from jukebox_fast.embed import extract

    vqvae = load_vqvae(job["vqvae"])
    prior = load_prior(job["prior"], layers=job["layers"])
    audio = [0.1 * torch.randn(int(seconds * vqvae.hps.sr)).numpy() for _ in range(clips)]
    extract(vqvae, prior, audio, layers=[job["layers"]], batch_size=clips)


def run(job: dict, total_length: int, n_samples: int, primed: bool = True) -> None:
    vqvae = load_vqvae(job["vqvae"])
    priors = [None] * vqvae.hps.levels
    for level, file in job["priors"].items():
        level = int(level)
        priors[level] = (PriorFile(file) if job["in_turn"]
                         else load_prior(file, vqvae=vqvae, weights=job.get("weights", "stored")))
    song = sample.Song(0, [0], job.get("song_length", job["total_length"]))
    prime = None
    if primed and job.get("prime_tokens"):  # codes to continue: the first window prefills them
        top = vqvae.hps.levels - 1
        prime = [torch.zeros(n_samples, 0, dtype=torch.int64) for _ in range(top)]
        prime.append(torch.randint(0, vqvae.hps.l_bins, (n_samples, job["prime_tokens"])))
    sample.generate(vqvae, priors, song, total_length=total_length, n_samples=n_samples, levels=job["levels"],
                    prime=prime, sampling=sample.Sampling(progress=False), max_memory=job.get("max_memory"))


if __name__ == "__main__":
    main(sys.argv[1])
