"""The C++/CUDA extension in ``csrc/``: found prebuilt, or built on first use.

It registers its ops under ``torch.ops.jukebox_fast_ext``. :func:`load` finds it in this order:

1. ``jukebox_fast._C``, built by ``setup.py`` when ``JUKEBOX_FAST_BUILD_CUDA=1`` (or ``auto``, the
   default, with nvcc and a CUDA build of torch importable at install time);
2. a build with ninja on first use, cached in ``$JUKEBOX_FAST_EXT_CACHE`` (default
   ``~/.cache/jukebox_fast/ext``) under a folder named for a hash of the sources, the torch
   version and whether CUDA is compiled in. The build happens in a temporary folder that is then
   renamed into place, so a process never loads a half-written library from the cache.

``JUKEBOX_FAST_EXT=0`` turns the extension off. Nothing here raises at import time: a missing
compiler or a failed build becomes the reason the dispatch lists for the extension's
implementations (see ``python -m jukebox_fast.info``).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from .files import atomic_dir

__all__ = ["NAMESPACE", "load", "cuda_unavailable_reason", "has_kernel", "sources", "cache_dir"]

NAMESPACE = "jukebox_fast_ext"
_log = logging.getLogger(__name__)


def sources() -> list[Path]:
    """The extension's sources: every .cpp, .cu and .h under csrc/ (installed as jukebox_fast.csrc)."""
    root = Path(str(importlib.resources.files("jukebox_fast.csrc")))
    return sorted(p for p in root.iterdir() if p.suffix in (".cpp", ".cu", ".h"))


def cache_dir() -> Path:
    if os.environ.get("JUKEBOX_FAST_EXT_CACHE"):
        return Path(os.environ["JUKEBOX_FAST_EXT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jukebox_fast" / "ext"


def _want_cuda() -> str | None:
    """None when CUDA sources should be compiled, else why not."""
    if torch.version.cuda is None:
        return "torch is a CPU build"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc was not found (set CUDA_HOME)"
    return None


def _key(files: list[Path], with_cuda: bool) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|cuda={with_cuda}".encode())
    return h.hexdigest()[:16]


def _jit_build() -> Path:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (install g++ or set CXX)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    with_cuda = _want_cuda() is None
    files = sources()
    compiled = [f for f in files if f.suffix == ".cpp" or (with_cuda and f.suffix == ".cu")]
    cache = cache_dir()
    final = cache / f"{NAMESPACE}-{_key(files, with_cuda)}"
    lib = final / f"{NAMESPACE}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    # One build per cache: other processes (test workers, torchrun ranks) wait for it and load it.
    with open(cache / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():
            return lib
        return _build_into(cpp_extension, compiled, cache, final, lib, with_cuda)


def _build_into(cpp_extension, compiled: list[Path], cache: Path, final: Path, lib: Path, with_cuda: bool) -> Path:
    _log.warning("building the jukebox_fast C++ extension%s (once; cached in %s)",
                 " with CUDA" if with_cuda else "", cache)

    def build(folder: Path) -> None:
        try:
            cpp_extension.load(
                name=NAMESPACE, sources=[str(f) for f in compiled], build_directory=str(folder), with_cuda=with_cuda,
                extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                extra_cuda_cflags=["-O3", "--use_fast_math"] if with_cuda else None,
                is_python_module=False, verbose=os.environ.get("JUKEBOX_FAST_EXT_VERBOSE", "0") != "0",
            )
        except Exception as e:
            raise RuntimeError(f"building the C++ extension failed ({type(e).__name__}: {str(e)[-400:]}); "
                               "set JUKEBOX_FAST_EXT_VERBOSE=1 to see the compiler's output") from e

    atomic_dir(final, build)
    return lib


_outcome: list[str | None] = []  # load()'s result, once it has run


def load() -> str | None:
    """Load the extension into this process once. Returns None, or why it is not available (the
    reason the dispatch lists for the CPU kernels)."""
    if not _outcome:
        _outcome.append(_load())
    return _outcome[0]


def _load() -> str | None:
    if os.environ.get("JUKEBOX_FAST_EXT", "1") == "0":
        return "the C++ extension is turned off (JUKEBOX_FAST_EXT=0)"
    spec = importlib.util.find_spec("jukebox_fast._C")
    if spec is not None and spec.origin:
        try:
            torch.ops.load_library(spec.origin)
            _register_fake()
            return None
        except OSError as e:  # built against another torch: rebuild below
            _log.warning("the prebuilt extension %s does not load (%s); building it instead", spec.origin, e)
    try:
        lib = _jit_build()
        if not _registered():  # a fresh build is loaded already, a cached one is not
            torch.ops.load_library(str(lib))
    except (RuntimeError, OSError) as e:
        return str(e)
    _register_fake()
    return None


def _registered() -> bool:
    return torch._C._dispatch_has_kernel(f"{NAMESPACE}::dilated_resblock")


def _register_fake() -> None:
    """Shape functions, so torch.compile can trace through the extension's ops."""

    @torch.library.register_fake(f"{NAMESPACE}::dilated_resblock")
    def _(x, w1, b1, w2, b2, dilation, res_scale, out):
        return None

    @torch.library.register_fake(f"{NAMESPACE}::decode_layers")
    def _(x, weights, scales, k_cache, v_cache, schedule, heads, res_scale, eps, position, out):
        return None

    @torch.library.register_fake(f"{NAMESPACE}::step_logits")
    def _(h, weight, out):
        return None


def cuda_unavailable_reason() -> str | None:
    """Why the extension's CUDA kernels cannot run here at all (None when they can)."""
    why = load()
    if why is None and not has_kernel("dilated_resblock", "cuda"):
        why = f"the extension was built without CUDA: {_want_cuda() or 'rebuild it with nvcc present'}"
    return why


# torch.compile cannot trace file-system calls or dispatcher queries, so it takes these answers
# as constants, as it does the dispatch's context lookup (see dispatch._context_choice).
for _fn in (load, cuda_unavailable_reason):
    _fn._dynamo_marked_constant = True


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension has a kernel of ``op`` for a device type ('cpu' or 'cuda')."""
    if load() is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", key)
