"""Shared fixtures: seeding, data paths, and the tolerance rule."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


def pytest_configure(config):
    """Under pytest-xdist each worker takes one intra-op thread: two workers on two cores with
    two spinning OpenMP threads each run several times slower than one thread each (see
    ``benchmarks/results/threads_cpu.md``)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def data_dir() -> Path:
    return DATA


def read_keys_tsv(path: Path) -> list[tuple[str, list[int], str]]:
    """A reference key listing: one ``key<TAB>[shape]<TAB>dtype`` per line."""
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s], dtype))
    return rows


@pytest.fixture
def dev() -> str | None:
    """The device kernel tests run on (see :func:`kernel_device`)."""
    return kernel_device()


@pytest.fixture
def poisoned(monkeypatch):
    """Every op output starts as NaN (int64.min for integers), so an element a kernel leaves
    unwritten fails its checks."""
    from jukebox_fast.ops import buffers
    from vq_check import poison

    monkeypatch.setattr(buffers, "new_empty", poison)


@pytest.fixture
def prime_early(monkeypatch):
    """attn_order 12 (1b_lyrics) reaches its prime-attention layer only at depth 15, and every
    layer costs seconds in the interpreter: here it cycles block, column, previous-block, prime,
    so four layers hold every type of the structure."""
    from jukebox_fast.ops import patterns

    monkeypatch.setitem(patterns.ATTN_ORDERS, 12, lambda d: [1, 2, 3, 7][d % 4])


def kernel_device() -> str | None:
    """Where Triton kernel tests run: the GPU if there is one, else the CPU through the
    interpreter when ``TRITON_INTERPRET=1`` is set, else nowhere."""
    if importlib.util.find_spec("triton") is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    from jukebox_fast.dispatch import interpreter_on

    return "cpu" if interpreter_on() else None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where PyTorch sees no CUDA device; tests
    marked ``interpret`` (Triton kernels) where neither a GPU nor the interpreter is there."""
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA device; this PyTorch sees none")
    if kernel_device() is None:
        skips["interpret"] = pytest.mark.skip(
            reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1 "
            "(TRITON_INTERPRET=1 python -m pytest -m interpret)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
