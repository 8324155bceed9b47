"""The rules for the numbers users give, written once.

The API's entry points (:func:`jukebox_fast.generate`, :class:`jukebox_fast.sample.Sampling`,
...) check their arguments with these, naming the argument; the command line builds its
argparse ``type=`` functions from the same rules, naming the option. Each returns the value.
"""
from __future__ import annotations

import math

__all__ = ["finite", "at_least", "unit_interval"]


def finite(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``allow_zero``)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def at_least(value: int, name: str, minimum: int, note: str = "") -> int:
    """An integer >= ``minimum`` (``note`` says what the bound means, e.g. " (0: off)")."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{note}, got {value}")
    return value


def unit_interval(value: float, name: str, note: str = "") -> float:
    """A number in [0, 1]."""
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1]{note}, got {value}")
    return value
