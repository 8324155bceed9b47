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
