"""Value checks on model inputs that stay out of the way of torch.compile."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["require_all"]


def require_all(ok: torch.Tensor, describe: Callable[[], str]) -> None:
    """Raise ``ValueError(describe())`` unless every element of the boolean ``ok`` is true.

    Eagerly this reads ``ok`` on the host, so a bad value fails early with a message built from
    the data. While torch.compile traces, a host read would break the graph, so the check becomes
    a device-side assert carrying the message's first line instead (no sync, no graph break).
    """
    if ok.device.type == "meta" or not ok.numel():
        return
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), "jukebox_fast: input values out of range")
        return
    if not bool(ok.all()):
        raise ValueError(describe())
