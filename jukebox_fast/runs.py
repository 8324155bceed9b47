"""Output folders that say what made them: one way for every command to claim a folder.

Sampling, training, ``embed`` and the demo all write into a folder that may already hold an
earlier run. :func:`claim_output` decides, the same way for all of them, whether this run may
write there: it records the run's settings (``settings.json``), and on a rerun compares them
with the recorded ones.

- Other settings are refused, naming each one that differs ("temperature: 0.99 -> 0.5"; models
  and seeds by digest only: "the VQ-VAE differs"), so that an earlier run's results are never
  returned or extended as if they were this one's.
- Equal settings resume where the command resumes by default (``sample``, ``embed``), or with
  ``resume`` where it asks to be told (training, the demo: their models took minutes to make).
- ``overwrite`` removes what the earlier run made, then starts afresh.

:func:`hold_output` keeps a second run out of a folder while one writes there: an OS lock on the
folder (``flock``), which dies with the process that holds it.

:func:`fingerprint` and :func:`digest` make the short digests the settings hold.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from .files import atomic_text

__all__ = ["SETTINGS", "OutputConflict", "fingerprint", "digest", "settings_differences", "refuse_other_settings",
           "claim_output", "hold_output"]

SETTINGS = "settings.json"


class OutputConflict(FileExistsError, ValueError):
    """A folder holds an earlier run this one must not write over or continue."""


def fingerprint(model: torch.nn.Module) -> str:
    """A short digest of a model's weights (names, shapes, dtypes and each tensor's float64 sum):
    another checkpoint in the same place gives another digest."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            total = float(torch.sum(t, dtype=torch.float64)) if t.is_floating_point() else float(t.sum())
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{total!r}".encode())
    return h.hexdigest()[:16]


def digest(obj) -> str | None:
    """A short digest of a tensor's bytes, or of a sequence of tensors (None for None)."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return hashlib.sha256(obj.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return hashlib.sha256(b"".join(bytes(digest(o) or "-", "ascii") for o in obj)).hexdigest()[:16]


def settings_differences(saved: dict, wanted: dict, names: Mapping[str, str] | None = None,
                         opaque: tuple[str, ...] = ()) -> list[str]:
    """Each setting that differs, as "key: old -> new"; digests (the keys in ``names``, which
    name them, and those starting with ``opaque``) only as "... differs"."""
    names = names or {}
    out = []
    for k in sorted(set(saved) | set(wanted)):
        if saved.get(k) == wanted.get(k):
            continue
        if k in names or k.startswith(opaque):
            out.append(f"{names.get(k, k)} differs")
        else:
            out.append(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}")
    return out


def refuse_other_settings(where, saved: dict | None, wanted: dict, what: str, *, unrecorded: str | None = None,
                          advice: str = "use another --out, or --overwrite to start over",
                          names: Mapping[str, str] | None = None, opaque: tuple[str, ...] = ()) -> None:
    """Raise :class:`OutputConflict` unless ``saved`` equals ``wanted``: "{where} holds {what}
    with other settings (...)". ``saved`` None (nothing recorded) is refused with ``unrecorded``
    ("codes whose settings were not recorded"), or passes when ``unrecorded`` is None."""
    if saved == wanted:
        return
    if saved is None:
        if unrecorded is None:
            return
        raise OutputConflict(f"{where} holds {unrecorded}, so they cannot be resumed safely; {advice}")
    diff = settings_differences(saved, wanted, names, opaque)
    raise OutputConflict(f"{where} holds {what} with other settings ({'; '.join(diff)}): {advice}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def claim_output(folder: str | os.PathLike, settings: dict, *, resume: bool | None, overwrite: bool,
                 made: Sequence[str] = (), run: str = "a run", what: str = "a run made",
                 advice: str = "use another --out, or --overwrite to start over",
                 unrecorded: str | None = None, recorded: Callable[[], dict | None] | None = None,
                 names: Mapping[str, str] | None = None, opaque: tuple[str, ...] = (), record: bool = True) -> bool:
    """Claim ``folder`` for a run with these ``settings``; True when it goes on with an earlier run.

    Args:
        made: glob patterns (in ``folder``) of what a run leaves there: listed when a run is
            found, removed by ``overwrite``.
        resume: True to go on with an earlier run of equal settings, False to refuse one, None to
            go on with it unasked (a rerun of the same command resumes).
        run / what: how messages name an earlier run ("a run", "a demo run") and what it made
            ("codes sampled", "features made").
        unrecorded: refuse an earlier run whose settings were not recorded, in these words
            ("codes whose settings were not recorded"); None lets it go on when asked to.
        recorded: where an earlier run's settings are, if not in ``settings.json`` (older files).
        names, opaque: settings shown by name only (digests), as :func:`settings_differences`.
        record: write ``settings.json`` (one process of a distributed run does; a command that
            keeps its settings with its results, as ``sample`` does in ``codes.pt``, does not).
    """
    folder = Path(folder)
    settings = json.loads(json.dumps(settings))  # as it will read back (tuples become lists)
    held = sorted({p.name for pattern in made for p in folder.glob(pattern)})
    record_path = folder / SETTINGS
    if overwrite:
        for name in held:
            _remove(folder / name)
        record_path.unlink(missing_ok=True)
        held = []
    saved = json.loads(record_path.read_text()) if record_path.exists() else (recorded() if recorded and held else None)
    found = bool(held) or saved is not None
    if found:
        differ = saved is not None and saved != settings
        if resume is False:  # said the same way whatever the settings, naming those that differ
            listed = ", ".join(held or [SETTINGS])
            if differ:
                diff = "; ".join(settings_differences(saved, settings, names, opaque))
                raise OutputConflict(f"{folder} already holds {run} ({listed}), {what} with other settings ({diff}): "
                                     "pass --overwrite to start over, or choose another --out")
            raise OutputConflict(f"{folder} already holds {run} ({listed}): pass --resume to go on with it, "
                                 "--overwrite to start over, or choose another --out")
        if differ:
            refuse_other_settings(folder, saved, settings, what, advice=advice, names=names, opaque=opaque)
        if saved is None and (unrecorded is not None or resume is None):
            refuse_other_settings(folder, None, settings, what, unrecorded=unrecorded or f"{run} whose settings were "
                                  "not recorded", advice=advice)
    folder.mkdir(parents=True, exist_ok=True)
    if record:
        atomic_text(record_path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return found


@contextlib.contextmanager
def hold_output(folder: str | os.PathLike, rank: int | None = None) -> Iterator[Path]:
    """Hold ``folder`` (made if missing) for this process while the block runs; another
    process holding it is an :class:`OutputConflict` naming it. The lock is the kernel's: a
    killed run leaves no stale lock. A single process locks the folder itself (no file is left);
    one rank of a distributed run (``rank``) locks ``.rank-<rank>.lock`` there, so the ranks of one
    run share the folder and each rank of another run is kept out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder if rank is None else folder / f".rank-{rank}.lock"
    fd = os.open(target, os.O_RDONLY) if rank is None else os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputConflict(f"{folder} is being written by another run ({_holder(fd)}): wait for it to end, "
                                 "or choose another --out") from None
        yield folder
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _holder(fd: int) -> str:
    """The process that holds an flock on ``fd``'s file, from /proc/locks (Linux)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "FLOCK" in parts and parts[-3] == inode and parts[4].isdigit():
                    pid = int(parts[4])
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as c:
                            cmd = " ".join(c.read().replace(b"\0", b" ").decode(errors="replace").split())
                    except OSError:
                        cmd = ""
                    return f"process {pid}" + (f": {cmd[:120]}" if cmd else "")
    except OSError:
        pass
    return "another process"
