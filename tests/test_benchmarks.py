"""Every benchmark script runs at its ``--smoke`` size and writes what it promises: a markdown
table, and beside it JSON with the run's metadata, the table's rows and the kernel-against-
baseline records. This checks the scripts, never the machine's speed: released sizes stay in
``benchmarks/``, outside the test command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bench_output import bench_runs, check_bench_output

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("bench_*.py")) + ["device_facts"]
sys.path.insert(0, str(BENCH))
import gpu_evidence  # noqa: E402

# The GPU-evidence dry run (tests/test_gpu_evidence.py) runs these at the smoke size on the CPU and
# checks their output there.
IN_THE_DRY_RUN = set(bench_runs(gpu_evidence.steps(Path("work"), dry=True, jobs=1)))
# tests/test_cli.py tabulates the demo run it has already (``bench_demo.py --reports``) and
# samples its models again (``bench_demo_sampling.py``).
ELSEWHERE = IN_THE_DRY_RUN | {"bench_demo", "bench_demo_sampling"}


def test_every_benchmark_script_is_checked_here_or_elsewhere():
    # A new script is covered by the parametrised test below without anyone listing it.
    assert {"bench_decoder", "bench_vq", "bench_sampling", "bench_sparse_attention", "bench_embed",
            "bench_prior_cpu", "bench_vqvae_cpu", "bench_threads", "device_facts"} <= set(SCRIPTS)
    assert {"bench_vq", "device_facts"} <= IN_THE_DRY_RUN <= set(SCRIPTS)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in ELSEWHERE])
def test_the_smoke_size_writes_a_table_and_its_json(script, tmp_path):
    if script in ("bench_prior_cpu", "bench_vqvae_cpu"):
        pytest.importorskip("transformers", reason="these compare with HF's port")
    out = tmp_path / f"{script}.md"
    done = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=100)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    check_bench_output(out, script)


def test_a_cpu_without_bf16_skips_the_bf16_rows_and_says_so(monkeypatch):
    sys.path.insert(0, str(BENCH))
    import common
    import torch

    from jukebox_fast import cpu_features

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    monkeypatch.setattr(cpu_features, "no_native_16bit_reason",
                        lambda d: "no bf16 instructions on this CPU" if d == torch.bfloat16 else None)
    kept, notes = common.cpu_dtypes(["fp32", "bf16"], "cpu", False, dtypes)
    assert kept == ["fp32"] and notes == ["bf16 rows skipped: no bf16 instructions on this CPU "
                                          "(pass --dtypes bf16 to run them anyway)"]
    assert common.cpu_dtypes(["fp32", "bf16"], "cpu", True, dtypes) == (["fp32", "bf16"], [])  # asked for
    assert common.cpu_dtypes(["fp32", "bf16"], "cuda", False, dtypes) == (["fp32", "bf16"], [])
    monkeypatch.setattr(cpu_features, "no_native_16bit_reason", lambda d: None)
    assert common.cpu_dtypes(["fp32", "bf16"], "cpu", False, dtypes) == (["fp32", "bf16"], [])
