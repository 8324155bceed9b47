"""``python -m jukebox_fast.info``: which implementation of each op can run here, and why not."""
from __future__ import annotations

import importlib.util
import os
import platform

import torch

from . import dispatch, ops  # noqa: F401  (importing ops registers them)


def _versions() -> list[tuple[str, str]]:
    import jukebox_fast

    rows = [("jukebox_fast", jukebox_fast.__version__), ("python", platform.python_version()),
            ("torch", torch.__version__)]
    if importlib.util.find_spec("triton"):
        import triton

        rows.append(("triton", triton.__version__))
    else:
        rows.append(("triton", "not installed"))
    cuda = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
            if torch.cuda.is_available() else "none")
    rows.append(("GPU", cuda))
    rows.append(("TRITON_INTERPRET", "on" if dispatch.interpreter_on() else "off"))
    return rows


def report() -> str:
    """The text ``info`` prints: versions, then ops x implementations x status."""
    lines = [f"{k:<17} {v}" for k, v in _versions()]
    lines.append("")
    probe = torch.empty(0)  # a CPU tensor: what a CPU call would get
    header = ("op", "impl", "status", "CPU tensors")
    rows = []
    for op in dispatch.ops():
        choice, source, _ = dispatch.REGISTRY.requested(op.name)
        for impl in op.ranked():
            why = impl.unavailable_reason()
            status = "available" if why is None else f"unavailable: {why}"
            try:  # supports() may look at shapes the empty probe lacks
                cpu_reasons = impl.reasons((probe,) * 2, {})
                cpu = "yes" if not cpu_reasons else "no (" + "; ".join(cpu_reasons) + ")"
            except Exception:
                cpu = "depends on the inputs"
            rows.append((op.name, impl.name, status + (f" [{impl.note}]" if impl.note else ""), cpu))
        rows.append((op.name, "-> choice", f"{choice} (from {source})", ""))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines.append(fmt.format(*header))
    lines.extend(fmt.format(*r) for r in rows)
    env = {k: v for k, v in os.environ.items() if k.startswith(dispatch.ENV_GLOBAL)}
    lines.append("")
    lines.append("backend environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "none set"))
    from .measured import CUDA_RULES

    wins = ", ".join(f"{r.op}/{r.impl} at {'/'.join(r.dtypes) or 'any dtype'}, widths {r.widths or 'any'}, "
                     f"batch {r.batches or 'any'} ({r.speedup:.2f}x, {r.evidence})" for r in CUDA_RULES)
    lines.append("on CUDA, auto takes a kernel only where a GPU benchmark measured it ahead of the reference: "
                 + (wins or "none measured yet, so the references run unless a kernel is asked for"))
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
