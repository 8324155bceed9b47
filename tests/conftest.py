"""Shared fixtures: seeding, data paths, and the tolerance rule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where PyTorch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this PyTorch sees none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
