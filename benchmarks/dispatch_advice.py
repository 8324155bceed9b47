"""From benchmark records to dispatch rules: what the GPU evidence summary tells its reader to do.

Every benchmark that times a kernel against the implementation it would replace writes
``records`` into its JSON (``common.record``): the op, the dtype, width and batch as
:mod:`jukebox_fast.measured` reads them, both times from one process, and the op's unique bytes
and FLOPs (:mod:`jukebox_fast.ops.costs`). With the device's measured ceilings (``device_facts``)
this module gives, for each record, the ratio to the baseline and the fraction of the ceiling
reached, and, for each op, implementation and dtype, the widths and batches where the kernel won
every measured case: a rule in words and as the line to add to ``CUDA_RULES``.

    python benchmarks/dispatch_advice.py EVIDENCE_FOLDER     # prints the advice for a folder of results
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

# A kernel is taken only where it beat the reference by this much in every measured case: below it,
# run-to-run noise can decide, and the reference (cuBLAS, cuDNN) is the better-tested path.
WIN = 1.10
DISPATCH_OPS = ("vq_nearest", "vq_quantise", "sparse_attention", "decode_attention", "decode_layers",
                "dilated_resblock")


@dataclass(frozen=True)
class Proposal:
    op: str
    impl: str
    baseline: str
    dtype: str
    widths: tuple[int, int]
    batches: tuple[int, int]
    speedup: float  # the slowest case's ratio
    evidence: str
    take: bool  # True: a rule for auto; False: keep the baseline there

    def words(self) -> str:
        verb = f"take {self.impl}" if self.take else f"keep {self.baseline}"
        span = (f"width{'s' if self.widths[0] != self.widths[1] else ''} {_span(self.widths)}, "
                f"batch {_span(self.batches)}")
        return (f"{verb} for {self.op} at {self.dtype}, {span}: {self.impl} at {self.speedup:.2f}x the "
                f"{self.baseline} {'(slowest case)' if self.take else '(best case)'}")

    def code(self) -> str:
        return (f'Rule("{self.op}", "{self.impl}", "{self.evidence}", dtypes=("{self.dtype}",), '
                f"widths={self.widths}, batches={self.batches}, speedup={self.speedup:.2f}),")


def _span(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}-{pair[1]}"


def load(folder: Path) -> tuple[dict, list[dict]]:
    """The ceilings (from the facts JSON) and every record, each tagged with its results file."""
    ceilings, records = {}, []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        ceilings = data.get("ceilings") or ceilings
        for r in data.get("records", []):
            records.append({**r, "evidence": f"benchmarks/results/{path.with_suffix('.md').name}"})
    return ceilings, records


def proposals(records: list[dict]) -> list[Proposal]:
    """Per (op, impl, dtype): contiguous runs of measured widths where every case won (a rule)
    and where some case lost (keep the baseline)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["op"] in DISPATCH_OPS and r["seconds"] > 0:
            groups.setdefault((r["op"], r["impl"], r["baseline"], r["dtype"]), []).append(r)
    out = []
    for (op, impl, baseline, dtype), rows in sorted(groups.items()):
        by_width: dict[int, list[dict]] = {}
        for r in rows:
            by_width.setdefault(r["width"], []).append(r)
        runs: list[tuple[bool, list[int]]] = []
        for width in sorted(by_width):
            won = all(r["baseline_seconds"] / r["seconds"] >= WIN for r in by_width[width])
            if runs and runs[-1][0] == won:
                runs[-1][1].append(width)
            else:
                runs.append((won, [width]))
        for won, widths in runs:
            cases = [r for w in widths for r in by_width[w]]
            ratios = [r["baseline_seconds"] / r["seconds"] for r in cases]
            batches = [r["batch"] for r in cases]
            out.append(Proposal(op, impl, baseline, dtype, (widths[0], widths[-1]), (min(batches), max(batches)),
                                min(ratios) if won else max(ratios), cases[0]["evidence"], won))
    return out


def fraction(record: dict, ceilings: dict) -> tuple[str, str, str]:
    """(floor ms, fraction of the ceiling reached, what bounds it) for one record."""
    bw = ceilings.get("bytes_per_s")
    rate = (ceilings.get("flops_per_s") or {}).get(record["dtype"])
    if not bw or not rate or not record.get("bytes"):
        return "–", "–", "–"
    memory, compute = record["bytes"] / bw, record["flops"] / rate
    floor = max(memory, compute)
    return f"{floor * 1e3:.3f}", f"{floor / record['seconds']:.0%}", "memory" if memory >= compute else "compute"


def advice(folder: Path, dry: bool = False) -> list[str]:
    """The summary's section: every record against its baseline and its ceiling, then the rules."""
    ceilings, records = load(folder)
    lines = ["## What the numbers say", ""]
    if not records:
        return lines + ["No benchmark recorded a kernel against its baseline in this run.", ""]
    bw = ceilings.get("bytes_per_s")
    rates = ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in (ceilings.get("flops_per_s") or {}).items())
    lines += [f"Ceilings measured in this run: copy {bw / 1e9:.0f} GB/s; matmul {rates or '–'}." if bw else
              "No ceilings were measured (the facts step did not finish): fractions are not given.", "",
              "Bytes and FLOPs: `jukebox_fast/ops/costs.py` (the unique bytes the op must move). Floor = the larger "
              "of bytes / bandwidth and FLOPs / matmul rate; 'of ceiling' = floor / kernel time.", "",
              "| op | shape | dtype | batch | kernel ms | baseline | baseline ms | ratio | floor ms | of ceiling | bound |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        floor, frac, bound = fraction(r, ceilings)
        lines.append(f"| {r['op']} ({r['impl']}) | {r['shape']} | {r['dtype']} | {r['batch']} | {r['seconds'] * 1e3:.3f} "
                     f"| {r['baseline']} | {r['baseline_seconds'] * 1e3:.3f} | {r['baseline_seconds'] / r['seconds']:.2f}x "
                     f"| {floor} | {frac} | {bound} |")
    found = proposals(records)
    lines += ["", "### Dispatch rules these numbers support", ""]
    if dry:
        lines += ["(A dry run on a CPU: these lines show the form only; no rule comes from them.)", ""]
    lines += [f"- {p.words()}" for p in found] or ["- none: no kernel was measured against its baseline"]
    takes = [p for p in found if p.take]
    if takes:
        lines += ["", f"The change to `jukebox_fast/measured.py` (a kernel must win every case by {WIN:.2f}x), "
                  "committed with the results files it names:", "", "```python", "CUDA_RULES: list[Rule] = ["]
        lines += [f"    {p.code()}" for p in takes] + ["]", "```"]
    return lines + [""]


if __name__ == "__main__":
    print("\n".join(advice(Path(sys.argv[1]))))
