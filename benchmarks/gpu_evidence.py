"""The GPU evidence in one command, sized for one lease of a bare GPU machine.

Run by ``benchmarks/gpu_evidence.sh`` (which installs the project first and passes on the moment
it started), or alone. One deadline covers the whole run, the install and the extension build
included: ``--budget`` seconds (480 by default) from ``--started-at``. The steps run in order of
value, each under ``min(its cap, time left)``; a step that cannot get its minimum is recorded as
"not run: budget" and never started. The caps add up to more than the deadline on purpose: the
later steps take what the earlier ones leave.

1. ``facts``: the device, driver, versions and the measured ceilings (copy bandwidth, matmul
   rates) every fraction is taken of;
2. ``tests``: the GPU tests (correctness before speed), after the extension build (which runs in
   the background from the start) has ended;
3. the benchmarks that decide dispatch rules: ``bench_sampling`` (the decode step at the
   1b_lyrics and 5b widths), ``bench_sparse_attention`` (forward and backward at the released
   head widths), ``bench_vq``, ``bench_embed``, ``bench_decoder``;
4. ``bench_flex``: FlexAttention against the kernels;
5. ``resources``: the Triton resource check, if time is left (the GPU's own compiler has proved
   the fit by then).

What comes back: the device tool returns at most 8 files from ``$OUT``. This script writes
exactly three there, after every step, each through a temporary file and a rename, so a kill at
any moment leaves the evidence of every step that ended:

- ``summary.md``: each step's status, the kernels' times against their baselines, the fraction of
  the measured ceiling, and the dispatch rules the numbers support (``dispatch_advice.py``);
- ``steps.json``: the steps, their statuses, seconds and caps;
- ``evidence.tar.gz``: the working folder (logs, every results table and JSON, the install log).

Logs, tables and JSON live in the working folder (``--work``), never in ``$OUT``. Logs are
written line by line, so a killed step keeps its last lines.

``--dry-run`` runs the same orchestration on a CPU at smoke sizes in well under a minute: the
steps that need CUDA say "skipped: no GPU". ``--plan`` prints the steps, their order, caps and
the deadline as JSON and runs nothing.

    bash benchmarks/gpu_evidence.sh                                   # on the GPU machine
    python benchmarks/gpu_evidence.py --dry-run --out /tmp/evidence     # anywhere
    python benchmarks/gpu_evidence.py --plan
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch_advice import advice  # noqa: E402

from jukebox_fast.files import atomic_text, atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0
RESERVE_S = 8.0  # kept back from the deadline for the last rewrite of the three files
OUT_FILES = ("summary.md", "steps.json", "evidence.tar.gz")


@dataclass
class Step:
    """One step: a command (argv), its cap in seconds, the least time worth starting it with,
    whether it needs CUDA, and whether it runs in the background until a later step joins it
    (the extension build, which overlaps the first steps)."""

    name: str
    argv: list[str]
    cap: float
    min_s: float = 15.0
    needs_cuda: bool = True
    background: bool = False
    joins: str | None = None  # the background step this one waits for before it starts


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def steps(work: Path, dry: bool, jobs: int) -> list[Step]:
    """The steps in order of value, at the GPU sizes or (``dry``) at smoke sizes."""
    py = sys.executable
    suffix = "cpu_dry" if dry else "h200"

    def bench(name: str, full: list[str], cap: float, out: str | None = None, **kw) -> Step:
        sizes = ["--smoke", "--device", "cpu"] if dry else full
        if dry and name == "sampling":
            sizes = ["--smoke"]
        kw.setdefault("needs_cuda", not dry)
        return Step(kw.pop("step", f"bench_{name}"), [py, str(ROOT / "benchmarks" / f"bench_{name}.py"), *sizes,
                                                       "--out", str(work / f"{out or name}_{suffix}.md")], cap, **kw)

    if dry:  # the dry run checks that the build can start, not the compiler's speed
        build = "from jukebox_fast import extension; print([p.name for p in extension.sources()], extension.cache_dir())"
    else:
        build = ("from jukebox_fast import extension; why = extension.load(); print(why or 'built'); "
                 "raise SystemExit(1 if why else 0)")
    return [
        Step("extension", [py, "-c", build], 240, min_s=30, needs_cuda=False, background=True),
        Step("facts", [py, str(ROOT / "benchmarks" / "device_facts.py"), *(["--smoke"] if dry else []),
                       "--out", str(work / f"facts_{suffix}.md")], 45, min_s=10, needs_cuda=False),
        Step("tests", [py, "-m", "pytest", "-m", "gpu or interpret", "-q", "-ra", "-p", "no:cacheprovider",
                       *([f"-n={jobs}"] if importlib.util.find_spec("xdist") else []),  # workers compile in parallel
                       f"--junitxml={work / 'tests_h200.xml'}", str(ROOT / "tests")], 150, min_s=30, joins="extension"),
        bench("sampling", ["--models", "prior_1b_lyrics", "prior_5b", "--steps", "50"], 120, min_s=30),
        bench("sparse_attention", ["--methods", "original", "reference", "triton", "--modes", "fwd", "bwd",
                                   "--runs", "5"], 100, min_s=30),
        bench("vq", ["--sizes", "330750", "1323000", "--runs", "10"], 45),
        bench("embed", ["--device", "cuda", "--clips", "8", "--batch-size", "8"], 75, min_s=30),
        bench("decoder", ["--seconds", "30", "--runs", "3"], 45),
        # FlexAttention compiles per pattern (and would take minutes on a CPU): one model, GPU only
        Step("bench_flex", [py, str(ROOT / "benchmarks" / "bench_sparse_attention.py"), "--models", "upsampler",
                            "--methods", "flex", "triton", "--modes", "fwd", "fwd+bwd", "--runs", "5",
                            "--out", str(work / f"flex_{suffix}.md")], 60, min_s=30),
        Step("resources", [py, str(ROOT / "benchmarks" / "kernel_resources.py"), *(["--smoke"] if dry else ["--device"]),
                           f"--jobs={jobs}", "--out", str(work / f"kernels_{suffix}.md"),
                           "--json", str(work / f"kernels_{suffix}.json")], 150, min_s=30, needs_cuda=False),
    ]


class Running:
    """A step's process group, its output written line by line into ``work/<name>.log`` (and to
    this process's stdout) by a thread."""

    def __init__(self, step: Step, work: Path, timeout: float):
        self.step, self.timeout, self.t0 = step, timeout, time.monotonic()
        self.log = (work / f"{step.name}.log").open("w", buffering=1)  # line-buffered: a kill keeps the last lines
        self.log.write(f"$ {' '.join(step.argv)}\n(timeout {timeout:.0f} s)\n")
        print(f"[{step.name}] {' '.join(step.argv)} (timeout {timeout:.0f} s)", flush=True)
        self.proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._tee, daemon=True)
        self.thread.start()

    def _tee(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            sys.stdout.write(f"[{self.step.name}] {line}")
            sys.stdout.flush()
        self.ended = time.monotonic()  # the output closes when the process ends

    def finish(self) -> tuple[str, float]:
        """Wait for the step, up to its timeout; kill its process group past that."""
        left = self.timeout - (time.monotonic() - self.t0)
        try:
            self.proc.wait(timeout=max(0.1, left))
            status = "passed" if self.proc.returncode == 0 else f"failed (exit {self.proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            status = f"timed out ({self.timeout:.0f} s)"
        self.thread.join(timeout=5)
        self.log.write(f"\n{status}\n")
        self.log.close()
        return status, (self.ended or time.monotonic()) - self.t0


class Evidence:
    """The run's record, published into ``out`` after every step."""

    def __init__(self, out: Path, work: Path, plan: list[Step], dry: bool, deadline: float, started: float):
        self.out, self.work, self.plan, self.dry = out, work, plan, dry
        self.deadline, self.started = deadline, started  # time.time() values
        self.results: dict[str, dict] = {}

    def record(self, step: Step, status: str, seconds: float, timeout: float | None = None) -> None:
        self.results[step.name] = {"status": status, "seconds": round(seconds, 1), "cap": step.cap,
                                   "timeout": None if timeout is None else round(timeout, 1)}
        self.results = {s.name: self.results[s.name] for s in self.plan if s.name in self.results}  # plan order
        print(f"[{step.name}] {status} ({seconds:.0f} s)", flush=True)
        self.publish()

    def summary(self) -> str:
        elapsed = time.time() - self.started
        lines = ["# GPU evidence", "",
                 f"{'Dry run on a CPU' if self.dry else 'Run'}: {elapsed:.0f} s of a {self.deadline - self.started:.0f} s "
                 "budget (from the start of gpu_evidence.sh, the install included).", "",
                 "| step | status | seconds | timeout | cap |", "|---|---|---|---|---|"]
        for step in self.plan:
            r = self.results.get(step.name)
            lines.append(f"| {step.name} | {r['status']} | {r['seconds']} | {r['timeout'] or '–'} | {step.cap:.0f} |"
                         if r else f"| {step.name} | not reached yet | | | {step.cap:.0f} |")
        lines += ["", *advice(self.work, self.dry)]
        for md in sorted(self.work.glob("*.md")):
            if md.name != "summary.md":  # its own copy in the working folder
                lines += ["", f"<!-- {md.name} -->", md.read_text()]
        return "\n".join(lines) + "\n"

    def publish(self) -> None:
        """Rewrite the three files in ``out`` (temporary file, then rename)."""
        summary = self.summary()
        steps_json = json.dumps({"budget_s": round(self.deadline - self.started), "results": self.results}, indent=1)
        (self.work / "summary.md").write_text(summary)
        (self.work / "steps.json").write_text(steps_json)
        atomic_text(self.out / "summary.md", summary)
        atomic_text(self.out / "steps.json", steps_json)

        def pack(f) -> None:
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                for path in sorted(self.work.iterdir()):
                    if path.is_file():
                        tar.add(path, arcname=f"evidence/{path.name}")
        atomic_write(self.out / "evidence.tar.gz", pack)


def plan_json(plan: list[Step], budget: float, started: float, out: Path, work: Path) -> str:
    return json.dumps({"budget_s": budget, "started_at": started, "deadline": started + budget, "out": str(out),
                       "work": str(work), "caps_total_s": sum(s.cap for s in plan), "steps": [asdict(s) for s in plan]},
                      indent=1)


def run(plan: list[Step], ev: Evidence, have_cuda: bool) -> dict[str, dict]:
    background: dict[str, Running] = {}

    def left() -> float:
        return ev.deadline - time.time() - RESERVE_S

    def join(name: str) -> None:
        joined = background.pop(name)
        status, seconds = joined.finish()
        ev.record(joined.step, status, seconds, joined.timeout)

    for step in plan:
        if step.joins in background:  # wait for it even when this step is skipped: later ones need it too
            join(step.joins)
        if step.needs_cuda and not have_cuda:
            (ev.work / f"{step.name}.log").write_text("skipped: no GPU\n")
            ev.record(step, "skipped: no GPU", 0.0)
            continue
        timeout = min(step.cap, left())
        if timeout < step.min_s:
            (ev.work / f"{step.name}.log").write_text(f"not run: {max(0, left()):.0f} s left, needs {step.min_s:.0f}\n")
            ev.record(step, f"not run: budget ({max(0, left()):.0f} s left, needs {step.min_s:.0f})", 0.0)
            continue
        running = Running(step, ev.work, timeout)
        if step.background:
            background[step.name] = running
        else:
            ev.record(step, *running.finish(), timeout)
    for name in list(background):
        join(name)
    return ev.results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_evidence"),
                   help="where the three files go (default: $OUT, else ./gpu_evidence)")
    p.add_argument("--work", type=Path, help="working folder for logs and tables (default: a new temporary folder)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run (default %(default)s)")
    p.add_argument("--started-at", type=float, default=None,
                   help="the run's start (seconds since the epoch; gpu_evidence.sh passes its own); default now")
    p.add_argument("--dry-run", action="store_true", help="smoke sizes on a CPU; CUDA-only steps are skipped")
    p.add_argument("--plan", action="store_true", help="print the steps, caps and deadline as JSON; run nothing")
    p.add_argument("--steps", nargs="+", help="run only these steps")
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 16), help="compile and test workers")
    args = p.parse_args(argv)
    started = args.started_at or time.time()
    out = args.out.resolve()
    if args.plan:  # nothing made: a stand-in for the working folder
        work = args.work.resolve() if args.work else Path(tempfile.gettempdir()) / "gpu_evidence_work.XXXXXX"
    else:
        work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_evidence_work."))).resolve()
    plan = [s for s in steps(work, args.dry_run, args.jobs) if not args.steps or s.name in args.steps]
    if args.plan:
        print(plan_json(plan, args.budget, started, out, work))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if work == out or out in work.parents:
        raise SystemExit(f"--work {work} must lie outside --out {out}: only {', '.join(OUT_FILES)} go there")
    ev = Evidence(out, work, plan, args.dry_run, started + args.budget, started)
    ev.publish()  # from the first second, $OUT says what is planned
    results = run(plan, ev, cuda_available() and not args.dry_run)
    passed = [k for k, v in results.items() if v["status"] == "passed"]
    others = [f"{k} {v['status']}" for k, v in results.items() if v["status"] != "passed"]
    print(f"passed: {', '.join(passed) or 'none'}" + (f"; {'; '.join(others)}" if others else "")
          + f" ({time.time() - started:.0f} s of {args.budget:.0f}); evidence in {out}, work in {work}")
    return 0 if all(v["status"] in ("passed", "skipped: no GPU") for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
