"""CPU threads from the idle cores (jukebox_fast.threads)."""
from __future__ import annotations

import os

import pytest
import torch

from jukebox_fast import threads


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_idle_cores_is_a_share_of_this_machines_cores():
    idle = threads.idle_cores(0.05)
    if idle is None:
        pytest.skip("no /proc/stat on this machine")
    assert 0.0 <= idle <= (os.cpu_count() or 1) + 1e-6


def test_the_users_choice_wins_and_the_idle_cores_decide_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("JUKEBOX_FAST_THREADS", "1")
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("JUKEBOX_FAST_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.configure_threads() is None  # left alone
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "idle_cores", lambda seconds=0.2: 0.2)  # every core busy: still one
    assert threads.configure_threads() == 1
    monkeypatch.setattr(threads, "idle_cores", lambda seconds=0.2: 64.0)  # never more than usable
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads.configure_threads() == usable
