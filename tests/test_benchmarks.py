"""Every benchmark script runs at its ``--smoke`` size and writes what it promises: a markdown
table, and beside it JSON with the run's metadata, the table's rows and the kernel-against-
baseline records. This checks the scripts, never the machine's speed: released sizes stay in
``benchmarks/``, outside the test command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("bench_*.py")) + ["device_facts"]


def test_every_benchmark_script_is_checked_here():
    # A new script is covered by the parametrised test below without anyone listing it.
    assert {"bench_decoder", "bench_vq", "bench_sampling", "bench_sparse_attention", "bench_embed",
            "bench_prior_cpu", "bench_vqvae_cpu", "bench_threads", "device_facts"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_smoke_size_writes_a_table_and_its_json(script, tmp_path):
    if script in ("bench_prior_cpu", "bench_vqvae_cpu"):
        pytest.importorskip("transformers", reason="these compare with HF's port")
    out = tmp_path / f"{script}.md"
    done = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=100)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# ") and "|---" in text, text[:500]
    data = json.loads(out.with_suffix(".json").read_text())
    assert {"device", "driver", "torch", "triton", "commit"} <= set(data["meta"])
    assert data["tables"] and all(data["tables"]), "a table with no rows"
    assert isinstance(data["records"], list)
    if script == "device_facts":
        assert data["ceilings"]["bytes_per_s"] > 0 and data["ceilings"]["flops_per_s"]["fp32"] > 0


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
