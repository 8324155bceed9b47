"""The GPU evidence script runs end to end here in its dry-run mode, so it cannot rot between the
sessions that are lent a GPU: every step runs at a tiny size or says "skipped: no GPU"."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_packs_the_results(tmp_path):
    out = tmp_path / "evidence"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_evidence.py"), "--dry-run", "--out", str(out),
                           "--jobs", "2"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    steps = json.loads((out / "steps.json").read_text())
    assert list(steps) == ["extension", "facts", "resources", "tests", "bench_vq", "bench_sparse_attention",
                           "bench_decoder", "bench_sampling", "bench_embed"]
    assert steps["tests"]["status"] == "skipped: no GPU"
    assert all(v["status"] == "passed" for k, v in steps.items() if k != "tests"), steps
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("passed: extension, facts, resources, bench_vq") and "tests skipped: no GPU" in last
    for name in ("facts", "kernels", "vq", "sparse_attention", "decoder", "sampling", "embed"):
        md, js = out / f"{name}_cpu_dry.md", out / f"{name}_cpu_dry.json"
        assert md.exists() and js.exists(), name
        if name != "kernels":
            meta = json.loads(js.read_text())["meta"]
            assert {"device", "driver", "torch", "triton", "commit"} <= set(meta)
    with tarfile.open(out / "evidence.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"summary.md", "steps.json", "tests.log", "facts_cpu_dry.md"} <= names


def test_a_failing_step_does_not_stop_the_others(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_evidence

    def plan(out, dry, jobs, cuda=True):
        return [gpu_evidence.Step("boom", [sys.executable, "-c", "raise SystemExit(3)"], 30, needs_cuda=False),
                gpu_evidence.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1, needs_cuda=False),
                gpu_evidence.Step("fine", [sys.executable, "-c", "print('ok')"], 30, needs_cuda=False)]

    monkeypatch.setattr(gpu_evidence, "steps", plan)
    assert gpu_evidence.main(["--out", str(tmp_path), "--dry-run"]) == 1
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps["boom"]["status"] == "failed (exit 3)"
    assert steps["slow"]["status"].startswith("timed out")
    assert steps["fine"]["status"] == "passed" and "ok" in (tmp_path / "fine.log").read_text()
