"""The GPU evidence script, checked here so it cannot rot between the sessions that are lent a GPU.

What is asserted is the orchestration, never this machine's speed: every step attempted in its
order, the three files in ``$OUT`` rewritten after each step (and never more than the device
tool's 8 files there), a kill at any moment leaving the evidence of the steps that ended, one
deadline that no step outlives, and the advice the summary derives from benchmark records.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from bench_output import bench_runs, check_bench_output

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_evidence.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import dispatch_advice  # noqa: E402
import gpu_evidence  # noqa: E402

ORDER = ["extension", "facts", "tests", "bench_sampling", "bench_sparse_attention", "bench_vq", "bench_embed",
         "bench_decoder", "bench_flex", "resources"]


def _watch(folder: Path, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        if folder.exists():
            seen.append(len(list(folder.iterdir())))
        time.sleep(0.02)


def test_the_dry_run_runs_every_step_and_never_holds_more_than_three_files_in_out(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(out, stop, seen))
    watcher.start()
    try:
        done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(work),
                               "--jobs", "2"], capture_output=True, text=True, timeout=110)
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # at every moment: the three files, and one temporary file while one of them is rewritten
    assert seen and max(seen) <= 4 <= 8
    assert sorted(p.name for p in out.iterdir()) == ["evidence.tar.gz", "steps.json", "summary.md"]
    results = json.loads((out / "steps.json").read_text())["results"]
    assert list(results) == ORDER
    assert results["tests"]["status"] == results["bench_flex"]["status"] == "skipped: no GPU"
    assert all(v["status"] == "passed" for k, v in results.items() if k not in ("tests", "bench_flex")), results
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("passed: extension, facts, bench_sampling") and "tests skipped: no GPU" in last
    for name in ("facts", "kernels", "vq", "sparse_attention", "decoder", "sampling", "embed"):
        md, js = work / f"{name}_cpu_dry.md", work / f"{name}_cpu_dry.json"
        assert md.exists() and js.exists(), name
    runs = bench_runs(gpu_evidence.steps(work, dry=True, jobs=2))
    assert len(runs) >= 6
    for script, md in runs.items():  # (test_benchmarks.py leaves these scripts to this run)
        check_bench_output(md, script)
    with tarfile.open(out / "evidence.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"evidence/summary.md", "evidence/steps.json", "evidence/tests.log", "evidence/facts_cpu_dry.md",
            "evidence/bench_decoder.log"} <= names
    summary = (out / "summary.md").read_text()
    assert "| resources | passed |" in summary and "## What the numbers say" in summary
    assert summary.count("# GPU evidence") == 1  # the last summary is not folded into the next


def test_a_killed_run_leaves_the_evidence_of_every_step_that_ended(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(work),
                             "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        ended = {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ended = json.loads((out / "steps.json").read_text())["results"]
            except (OSError, ValueError):
                ended = {}
            if "bench_sampling" in ended:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the dry run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as the device tool's limit does
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    results = json.loads((out / "steps.json").read_text())["results"]
    assert list(results)[:4] == ORDER[:4] and "resources" not in results  # the steps that ended, no more
    summary = (out / "summary.md").read_text()
    assert "| facts | passed |" in summary and "| resources | not reached yet |" in summary
    with tarfile.open(out / "evidence.tar.gz") as tar:  # whole, not half-written
        names = set(tar.getnames())
    assert {"evidence/facts.log", "evidence/facts_cpu_dry.md", "evidence/steps.json"} <= names
    # the three files whole, and at most the temporary file of a rewrite the kill cut short
    left = sorted(p.name for p in out.iterdir())
    assert [n for n in left if not n.startswith(".")] == ["evidence.tar.gz", "steps.json", "summary.md"], left
    assert len(left) <= 4 and all(n.endswith(".tmp") for n in left if n.startswith(".")), left


def test_the_plan_shows_the_480_s_deadline_and_caps_that_add_up_to_more():
    done = subprocess.run([sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, check=True)
    plan = json.loads(done.stdout)
    assert plan["budget_s"] == 480 and plan["deadline"] == pytest.approx(plan["started_at"] + 480)
    assert [s["name"] for s in plan["steps"]] == ORDER
    assert plan["caps_total_s"] > 480  # later steps take what the earlier ones leave
    assert all(s["cap"] <= 600 for s in plan["steps"])


def test_the_shell_script_keeps_every_argument_when_out_comes_from_the_environment(tmp_path):
    sh = ROOT / "benchmarks" / "gpu_evidence.sh"
    env = {**os.environ, "OUT": str(tmp_path / "from_env"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(sh), "--plan", "--dry-run"], env=env, capture_output=True, text=True, check=True)
    plan = json.loads(done.stdout)
    assert plan["out"] == str(tmp_path / "from_env")
    assert "--smoke" in plan["steps"][1]["argv"]  # --dry-run was not eaten as the folder
    env.pop("OUT")
    done = subprocess.run(["bash", str(sh), str(tmp_path / "given"), "--plan"], env=env, capture_output=True,
                          text=True, check=True)
    plan = json.loads(done.stdout)
    assert plan["out"] == str(tmp_path / "given") and "--smoke" not in plan["steps"][1]["argv"]
    assert not Path(plan["work"]).is_relative_to(tmp_path / "given")  # logs never go into $OUT
    assert plan["started_at"] <= time.time()


def test_a_run_whose_steps_all_take_their_caps_ends_by_the_deadline(tmp_path, monkeypatch):
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]

    def plan(work, dry, jobs):
        return [gpu_evidence.Step("build", sleep, 3, min_s=1, needs_cuda=False, background=True),
                gpu_evidence.Step("a", sleep, 3, min_s=1, needs_cuda=False, joins="build"),
                gpu_evidence.Step("b", sleep, 3, min_s=1, needs_cuda=False),
                gpu_evidence.Step("c", sleep, 3, min_s=1, needs_cuda=False),
                gpu_evidence.Step("d", sleep, 3, min_s=1, needs_cuda=False)]

    monkeypatch.setattr(gpu_evidence, "steps", plan)
    monkeypatch.setattr(gpu_evidence, "RESERVE_S", 0.5)
    started = time.time()
    code = gpu_evidence.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--budget", "8",
                              "--started-at", str(started)])
    took = time.time() - started
    assert code == 1 and took < 8 + 1.5, took
    results = json.loads((tmp_path / "out" / "steps.json").read_text())["results"]
    assert results["build"]["status"].startswith("timed out") and results["a"]["status"].startswith("timed out")
    assert any(v["status"].startswith("not run: budget") for v in results.values()), results
    assert all(v["status"].startswith(("timed out", "not run: budget")) for v in results.values()), results


def test_a_failing_step_does_not_stop_the_others(tmp_path, monkeypatch):
    def plan(work, dry, jobs):
        return [gpu_evidence.Step("boom", [sys.executable, "-c", "raise SystemExit(3)"], 30, min_s=1, needs_cuda=False),
                gpu_evidence.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1, min_s=0.5,
                                  needs_cuda=False),
                gpu_evidence.Step("fine", [sys.executable, "-c", "print('ok', flush=True)"], 30, min_s=1,
                                  needs_cuda=False)]

    monkeypatch.setattr(gpu_evidence, "steps", plan)
    work = tmp_path / "work"
    assert gpu_evidence.main(["--out", str(tmp_path / "out"), "--work", str(work), "--dry-run"]) == 1
    results = json.loads((tmp_path / "out" / "steps.json").read_text())["results"]
    assert results["boom"]["status"] == "failed (exit 3)"
    assert results["slow"]["status"].startswith("timed out")
    assert results["fine"]["status"] == "passed" and "ok" in (work / "fine.log").read_text()


def _records(folder: Path, name: str, rows: list[tuple], **extra) -> None:
    records = [{"op": op, "impl": "triton", "baseline": "torch", "dtype": dtype, "width": width, "batch": batch,
                "shape": f"w{width} b{batch}", "seconds": kernel, "baseline_seconds": base, "bytes": nbytes,
                "flops": 2 * nbytes, "device": "cuda"} for op, dtype, width, batch, kernel, base, nbytes in rows]
    (folder / f"{name}.json").write_text(json.dumps({"meta": {}, "tables": [], "records": records, **extra}))


def test_the_summary_turns_records_into_fractions_and_rules(tmp_path):
    _records(tmp_path, "facts_h200", [], ceilings={"bytes_per_s": 4e12, "flops_per_s": {"bf16": 8e14}})
    _records(tmp_path, "sampling_h200", [
        ("decode_layers", "bf16", 1920, 1, 1.0e-3, 3.0e-3, 2_000_000_000),
        ("decode_layers", "bf16", 1920, 16, 2.0e-3, 3.0e-3, 2_000_000_000),
        ("decode_layers", "bf16", 4800, 1, 4.0e-3, 9.0e-3, 8_000_000_000),
        ("decode_layers", "bf16", 8000, 1, 9.0e-3, 8.0e-3, 9_000_000_000),  # behind here
    ])
    found = dispatch_advice.proposals(dispatch_advice.load(tmp_path)[1])
    take, keep = found
    assert take.take and take.widths == (1920, 4800) and take.batches == (1, 16)
    assert take.speedup == pytest.approx(1.5) and take.evidence == "benchmarks/results/sampling_h200.md"
    assert not keep.take and keep.widths == (8000, 8000)
    assert take.words() == ("take triton for decode_layers at bf16, widths 1920-4800, batch 1-16: triton at 1.50x "
                            "the torch (slowest case)")
    rule = take.code()
    assert rule.startswith('Rule("decode_layers", "triton", "benchmarks/results/sampling_h200.md", dtypes=("bf16",)')
    from jukebox_fast.measured import Rule  # the line is valid Python that builds a rule

    built = eval(rule.rstrip(","), {"Rule": Rule})
    assert built.covers(__import__("torch").bfloat16, 2048, 4) and not built.covers(__import__("torch").bfloat16, 8000, 1)
    text = "\n".join(dispatch_advice.advice(tmp_path))
    assert "| decode_layers (triton) | w1920 b1 | bf16 | 1 | 1.000 | torch | 3.000 | 3.00x | 0.500 | 50% | memory |" in text
    assert "CUDA_RULES: list[Rule] = [" in text and rule in text
