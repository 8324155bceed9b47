"""Files written whole or not at all, and checkpoints read without running their code.

Every file this package writes (checkpoints, sampled codes, feature files, settings records)
goes through :func:`atomic_write`: a temporary file in the same folder, fsync, rename. Folders
built in one go (the C++ extension's build, a Triton version installed for the resource check)
go through :func:`atomic_dir`. :func:`read_checkpoint` loads ``torch.save`` files
``weights_only`` (no arbitrary code runs), with numpy scalars and arrays allowed, since the
original stores its hparams with numpy numbers; ``trust_pickle=True`` lifts that limit for
files you trust. :func:`open_checkpoint` reads the same files one tensor at a time.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["CheckpointError", "atomic_write", "atomic_text", "atomic_save", "atomic_dir", "read_checkpoint",
           "open_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model; the message says why."""


# -- files --------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    The file gets the permissions a plain ``open`` would give (the user's umask), not the 0600
    of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` into ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_dir(final: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """A folder made whole or not at all: ``build(tmp)`` fills a temporary folder beside
    ``final``, which is then renamed to ``final``. If another process renamed its own first,
    ours is discarded and theirs kept (they hold the same thing). ``final`` existing already
    returns at once."""
    final = Path(final)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _numpy_globals() -> list:
    core = np._core if hasattr(np, "_core") else np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    # Files written with numpy 1 name these under numpy.core; numpy 2 under numpy._core.
    allowed = [np.dtype, np.ndarray, scalar, reconstruct,
               (scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return allowed


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
    """Load a checkpoint file onto the CPU, with errors that name the file and the problem."""
    path = _checkpoint_file(path)
    with _read_errors(path, trust_pickle):
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)


def open_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False
                    ) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]]:
    """:func:`read_checkpoint` with the tensors left in the file (:mod:`jukebox_fast.lazy_load`):
    (the file's object, its tensors on the meta device; a function that reads the CPU tensor one
    of them stands for). The same checks and errors; reading raises CheckpointError for a tensor
    the file does not hold whole."""
    from .lazy_load import open_lazily

    path = _checkpoint_file(path)
    with _read_errors(path, trust_pickle):
        lazy = open_lazily(path, trusted=trust_pickle)

    def load(meta: torch.Tensor) -> torch.Tensor:
        with _read_errors(path, trust_pickle):
            return lazy.load(meta)

    return lazy.obj, load


def _checkpoint_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; expected a checkpoint such as vqvae.pth.tar")
    return path


@contextlib.contextmanager
def _read_errors(path: Path, trust_pickle: bool):
    """Unpickling ``path`` (numpy scalars and arrays allowed when loading safely), with what the
    unpickler raises turned into a CheckpointError that names the file and the problem."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            yield
    except pickle.UnpicklingError as e:
        # (torch lists a zip file's globals; a legacy file's first refused one is in the message)
        unsafe = [] if trust_pickle else (_unsafe_globals(path)
                                          or re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e)))
        if unsafe:
            raise CheckpointError(
                f"{path} holds Python objects that safe loading refuses ({', '.join(unsafe)}); "
                "if you trust the file, pass trust_pickle=True"
            ) from None
        raise _unreadable(path, e) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError, IndexError, KeyError) as e:
        # (the unpickler meets arbitrary bytes with whatever its stack machine trips on)
        raise _unreadable(path, e) from None


def _unsafe_globals(path: Path) -> list:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []  # not even a readable pickle


def _unreadable(path: Path, cause: Exception | None = None) -> CheckpointError:
    detail = f": {cause}" if cause is not None else ""
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint (corrupt, truncated, or not written by torch.save){detail}"
    )
