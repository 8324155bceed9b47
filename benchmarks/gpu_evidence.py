"""The GPU evidence in one command: device facts, kernel resources, the GPU tests and the benchmarks.

Run by ``benchmarks/gpu_evidence.sh`` on a bare GPU machine (after it installs the project), or
alone. Steps, in priority order, each under its own timeout, each teeing its output into the
output folder, none stopping the others:

1. ``facts``: the device, driver, torch and Triton, and two measured ceilings: device-to-device
   copy bandwidth and the bf16 matmul rate;
2. ``resources``: every Triton kernel configuration at the released shapes as this device's
   Triton compiles them (``python -m jukebox_fast.kernel_resources --device``);
3. ``tests``: ``pytest -m "gpu or interpret"`` on the GPU (the interpreter tests run their
   kernels on CUDA there), in parallel workers, with JUnit XML;
4. ``bench_vq``, ``bench_sparse_attention``, ``bench_decoder``, ``bench_sampling``: each writes
   a results markdown and JSON (GPU name, driver, torch and Triton versions, commit).

The sizes keep the whole run, the install included, under 540 s on an H200. Everything lands in
the output folder and, packed, in ``evidence.tar.gz`` beside ``summary.md`` (two files, as the
device tool brings back). The last line says which steps passed.

``--dry-run`` runs the same orchestration on a CPU at tiny sizes: the steps that need CUDA say
"skipped: no GPU", the others run (the CI test of this script).

    python benchmarks/gpu_evidence.py --out gpu_evidence            # on the GPU machine
    python benchmarks/gpu_evidence.py --dry-run --out /tmp/evidence  # anywhere
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    """One step: a command (argv), its timeout, whether it needs CUDA, and whether it runs in the
    background until a later step joins it (the extension build, which overlaps the first steps)."""

    name: str
    argv: list[str]
    timeout: int
    needs_cuda: bool = True
    background: bool = False
    joins: str | None = None  # the background step this one waits for before it starts


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def steps(out: Path, dry: bool, jobs: int, cuda: bool = True) -> list[Step]:
    """The steps and their sizes: the GPU sizes, or tiny ones for a dry run (``cuda``: whether
    this machine has a GPU for the resource check to compile for)."""
    py = sys.executable
    bench = lambda name: [py, str(ROOT / "benchmarks" / f"bench_{name}.py")]  # noqa: E731
    suffix = "cpu_dry" if dry else "h200"
    tiny = dict(vq=["--sizes", "2048", "--runs", "2", "--device", "cpu"],
                sparse_attention=["--models", "upsampler", "--length", "256", "--runs", "1", "--device", "cpu",
                                  "--methods", "original", "--modes", "fwd"],
                decoder=["--seconds", "0.05", "--runs", "1", "--device", "cpu", "--cond-length", "64"],
                sampling=["--dry-run"],
                embed=["--clips", "1", "--seconds", "1", "--depth", "2", "--layer", "1", "--width", "32",
                       "--methods", "jukemirlib", "extract"])
    full = dict(vq=["--sizes", "330750", "1323000", "--runs", "10"],
                sparse_attention=["--methods", "original", "sdpa", "triton", "--modes", "fwd", "bwd", "--runs", "5"],
                decoder=["--seconds", "30", "--runs", "3"],
                sampling=["--steps", "100"],
                embed=["--device", "cuda", "--clips", "8", "--batch-size", "8"])
    sizes = tiny if dry else full

    def bench_step(name: str, timeout: int) -> Step:
        return Step(f"bench_{name}", bench(name) + sizes[name] + ["--out", str(out / f"{name}_{suffix}.md")],
                    timeout, needs_cuda=not dry)

    plan = [
        # The C++/CUDA extension builds (ninja, all cores) while the first steps run.
        Step("extension", [py, "-c", "from jukebox_fast import extension; why = extension.load(); "
                                     "print(why or 'built'); raise SystemExit(1 if why else 0)"],
             240, needs_cuda=False, background=True),
        Step("facts", [py, str(ROOT / "benchmarks" / "device_facts.py"), "--out", str(out / f"facts_{suffix}.md")]
             + (["--dry-run"] if dry else []), 60, needs_cuda=False),
        Step("resources", [py, "-m", "jukebox_fast.kernel_resources", *(["--quick"] if dry else []),
                           *(["--device"] if cuda and not dry else []),
                           f"--jobs={jobs}", "--out", str(out / f"kernels_{suffix}.md"),
                           "--json", str(out / f"kernels_{suffix}.json")], 150, needs_cuda=False),
        Step("tests", [py, "-m", "pytest", "-m", "gpu or interpret", "-q", "-ra", "-p", "no:cacheprovider",
                       *([f"-n={jobs}"] if importlib.util.find_spec("xdist") else []),  # workers compile in parallel
                       f"--junitxml={out / 'tests_h200.xml'}", str(ROOT / "tests")], 210, joins="extension"),
        bench_step("vq", 45), bench_step("sparse_attention", 90), bench_step("decoder", 45),
        bench_step("sampling", 90), bench_step("embed", 90),
    ]
    if not dry:  # FlexAttention compiles per pattern: one model, last
        plan.append(Step("bench_flex", bench("sparse_attention") + [
            "--models", "upsampler", "--methods", "flex", "triton", "--modes", "fwd", "fwd+bwd", "--runs", "5",
            "--out", str(out / "flex_h200.md")], 60))
    return plan


class Running:
    """A step's process, its output teed into ``out/<name>.log`` by a thread."""

    def __init__(self, step: Step, out: Path):
        import threading

        self.step, self.t0 = step, time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = (out / f"{step.name}.log").open("w")
        print(f"[{step.name}] {' '.join(step.argv)}", flush=True)
        self.proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=env, start_new_session=True)
        self.thread = threading.Thread(target=self._tee, daemon=True)
        self.thread.start()

    def _tee(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            sys.stdout.write(f"[{self.step.name}] {line}")
            sys.stdout.flush()
        self.ended = time.perf_counter()  # the output closes when the process ends

    def finish(self) -> tuple[str, float]:
        """Wait for the step (up to its timeout); kill it past that. Returns (status, seconds)."""
        left = self.step.timeout - (time.perf_counter() - self.t0)
        try:
            self.proc.wait(timeout=max(0.1, left))
            status = "passed" if self.proc.returncode == 0 else f"failed (exit {self.proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            status = f"timed out ({self.step.timeout} s)"
        self.thread.join(timeout=5)
        self.log.write(f"\n{status}\n")
        self.log.close()
        return status, getattr(self, "ended", time.perf_counter()) - self.t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_evidence"),
                   help="output folder (default: $OUT, else ./gpu_evidence)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU; CUDA-only steps are skipped")
    p.add_argument("--steps", nargs="+", help="run only these steps")
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 16), help="compile and test workers")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    have_cuda = cuda_available() and not args.dry_run
    plan = [s for s in steps(out, args.dry_run, args.jobs, have_cuda) if not args.steps or s.name in args.steps]
    t0 = time.perf_counter()
    results, background = {}, {}

    def record(name: str, status: str, seconds: float, timeout: int) -> None:
        results[name] = {"status": status, "seconds": round(seconds, 1), "timeout": timeout}
        print(f"[{name}] {status} ({seconds:.0f} s)", flush=True)

    for step in plan:
        if step.joins in background:  # wait for it even when this step is skipped: later ones need it too
            joined = background.pop(step.joins)
            record(step.joins, *joined.finish(), joined.step.timeout)
        if step.needs_cuda and not have_cuda:
            (out / f"{step.name}.log").write_text("skipped: no GPU\n")
            record(step.name, "skipped: no GPU", 0.0, step.timeout)
            continue
        running = Running(step, out)
        if step.background:
            background[step.name] = running
        else:
            record(step.name, *running.finish(), step.timeout)
    for name, running in background.items():
        record(name, *running.finish(), running.step.timeout)
    results = {s.name: results[s.name] for s in plan}  # in the plan's order
    total = time.perf_counter() - t0
    summary = ["# GPU evidence", "", f"{'dry run on a CPU' if args.dry_run else 'run'} into {out}, "
               f"{total:.0f} s of steps.", "", "| step | status | seconds | timeout |", "|---|---|---|---|"]
    summary += [f"| {k} | {v['status']} | {v['seconds']} | {v['timeout']} |" for k, v in results.items()]
    (out / "steps.json").write_text(json.dumps(results, indent=1))
    for md in sorted(out.glob("*.md")):
        if md.name != "summary.md":
            summary += ["", md.read_text()]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    with tarfile.open(out / "evidence.tar.gz", "w:gz") as tar:
        for f in sorted(out.iterdir()):
            if f.name != "evidence.tar.gz" and f.is_file():
                tar.add(f, arcname=f.name)
    passed = [k for k, v in results.items() if v["status"] == "passed"]
    others = [f"{k} {v['status']}" for k, v in results.items() if v["status"] != "passed"]
    print(f"passed: {', '.join(passed) or 'none'}" + (f"; {'; '.join(others)}" if others else "")
          + f" ({total:.0f} s)")
    return 0 if all(v["status"] in ("passed", "skipped: no GPU") for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
