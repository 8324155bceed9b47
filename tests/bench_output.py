"""What every benchmark script writes (shared by the smoke-size test and the GPU-evidence dry
run, which runs several of the same scripts at the same size, so each is run once)."""
from __future__ import annotations

import json
from pathlib import Path


def check_bench_output(md: Path, script: str) -> None:
    """A markdown table, and beside it JSON with the run's metadata, the table's rows and the
    kernel-against-baseline records."""
    text = md.read_text()
    assert text.startswith("# ") and "|---" in text, f"{script}: {text[:500]}"
    data = json.loads(md.with_suffix(".json").read_text())
    assert {"device", "driver", "torch", "triton", "commit"} <= set(data["meta"]), script
    assert data["tables"] and all(data["tables"]), f"{script}: a table with no rows"
    assert isinstance(data["records"], list), script
    if script == "device_facts":
        assert data["ceilings"]["bytes_per_s"] > 0 and data["ceilings"]["flops_per_s"]["fp32"] > 0


def bench_runs(steps) -> dict[str, Path]:
    """Benchmark script name -> the table it writes, for the GPU-evidence steps (``Step``) that
    run one without CUDA."""
    runs = {}
    for argv in (s.argv for s in steps if not s.needs_cuda):
        scripts = [Path(a) for a in argv if a.endswith(".py") and Path(a).parent.name == "benchmarks"]
        if scripts and (scripts[0].stem.startswith("bench_") or scripts[0].stem == "device_facts"):
            runs[scripts[0].stem] = Path(argv[argv.index("--out") + 1])
    return runs
