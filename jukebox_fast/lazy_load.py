"""A ``torch.save`` file read one tensor at a time.

:func:`open_lazily` unpickles the file's object with every tensor on the meta device (shape,
dtype, strides: no bytes), and :meth:`LazyFile.load` reads one tensor's bytes from the file when
asked. A loader that converts each tensor as it arrives (int8 weights from an fp32 file) then
holds what it has converted and one tensor of the file, never the whole file.

Both formats ``torch.save`` writes are read this way: the zip format (torch >= 1.6; our files),
whose storages are records of the archive, and the legacy format (the original Jukebox
checkpoints, saved with torch 1.4), whose storages follow the pickle one after another, each an
8-byte element count and its bytes: a storage's place follows from the sizes of those before it.
The unpickling is the one ``torch.load`` does, ``weights_only`` unless the caller trusts the
file, with the storages replaced by placeholders that remember where their bytes are.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["LazyFile", "open_lazily"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass
class LazyFile:
    """A checkpoint whose tensors stay in the file until :meth:`load` reads them."""

    path: Path
    obj: Any  # the file's object, its tensors on the meta device
    zip_reader: Any = None  # torch._C.PyTorchFileReader for the zip format, else None (legacy)
    # per placeholder storage (its _cdata): (the file's storage key, byte offset into it)
    places: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # storage key -> (bytes, bytes an element)
    legacy_start: dict = field(default_factory=dict)  # legacy: storage key -> offset of its bytes
    placeholders: list = field(default_factory=list)  # alive as long as their _cdata are keys

    def load(self, meta: torch.Tensor) -> torch.Tensor:
        """The CPU tensor that ``meta`` (one of ``obj``'s) stands for, read from the file now. It
        owns its bytes: a tensor viewing part of a larger storage is copied out of it."""
        key, offset = self.places[meta.untyped_storage()._cdata]
        raw = self._storage(key)
        elem = meta.element_size()
        t = torch.empty(0, dtype=meta.dtype).set_(raw, offset // elem + meta.storage_offset(), meta.shape,
                                                   meta.stride())
        return t.clone() if raw.nbytes() > t.numel() * elem else t

    def _storage(self, key: str) -> torch.UntypedStorage:
        nbytes, elem = self.sizes[key]
        if self.zip_reader is not None:
            return self.zip_reader.get_storage_from_record(f"data/{key}", nbytes, torch.UntypedStorage).untyped_storage()
        with open(self.path, "rb") as f:
            f.seek(self.legacy_start[key] - 8)
            count = f.read(8)
            buf = torch.empty(nbytes, dtype=torch.uint8)
            got = f.readinto(memoryview(buf.numpy()))
        if len(count) != 8 or got != nbytes:
            raise EOFError(f"storage {key} ends past the end of the file (truncated?)")
        if struct.unpack("<q", count)[0] * elem != nbytes:
            raise pickle.UnpicklingError(f"storage {key}: the file says {struct.unpack('<q', count)[0]} elements of "
                                         f"{elem} bytes, its tensors {nbytes} bytes")
        return buf.untyped_storage()


def _unpickler(file, trusted: bool, persistent_load):
    """torch.load's unpickler: weights only (no code runs) unless the file is trusted."""
    if trusted:
        class Trusting(pickle.Unpickler):
            def persistent_load(self, saved_id):
                return persistent_load(saved_id)

        return Trusting(file, encoding="utf-8")
    from torch import _weights_only_unpickler

    unpickler = _weights_only_unpickler.Unpickler(file, encoding="utf-8")
    unpickler.persistent_load = persistent_load
    return unpickler


def _text(x) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else x


def _dtype(storage_type) -> torch.dtype:
    # (``_dtype``: ``dtype`` of a typed storage class warns that TypedStorage is deprecated)
    return torch.uint8 if storage_type is torch.UntypedStorage else storage_type._dtype


def open_lazily(path: str | os.PathLike, trusted: bool = False) -> LazyFile:
    """The object of the ``torch.save`` file at ``path`` with its tensors on the meta device.
    Raises what the unpickler or the format check raises for a file it cannot read (the caller
    names the file); a tar-format file (torch < 0.4) raises ValueError."""
    path = Path(path)
    with open(path, "rb") as f:
        zipped = torch.serialization._is_zipfile(f)
    lazy = LazyFile(path, None)

    def placeholder(key: str, dtype: torch.dtype, nbytes: int, offset: int = 0, view: int | None = None):
        """A meta storage standing for bytes [offset, offset + view) of storage ``key`` (nbytes)."""
        lazy.sizes.setdefault(key, (nbytes, torch._utils._element_size(dtype)))
        storage = torch.UntypedStorage(nbytes if view is None else view, device="meta")
        lazy.places[storage._cdata] = (key, offset)
        lazy.placeholders.append(storage)
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    if zipped:
        lazy.zip_reader = torch._C.PyTorchFileReader(str(path))
        made: dict[str, Any] = {}

        def persistent_load(saved_id):
            if _text(saved_id[0]) != "storage":
                raise pickle.UnpicklingError(f"unsupported persistent id {_text(saved_id[0])!r}")
            storage_type, key, _location, numel = saved_id[1:]
            dtype = _dtype(storage_type)
            if key not in made:
                made[key] = placeholder(key, dtype, numel * torch._utils._element_size(dtype))
            return made[key]

        lazy.obj = _unpickler(io.BytesIO(lazy.zip_reader.get_record("data.pkl")), trusted, persistent_load).load()
        return lazy

    if tarfile.is_tarfile(path):
        raise ValueError("a tar-format checkpoint (written by torch < 0.4) is not read here: load it with "
                         "torch.load and save it again")
    with open(path, "rb") as f:
        head = [_unpickler(f, trusted, None).load() for _ in range(3)]  # magic number, protocol, system info
        if head[0] != _LEGACY_MAGIC or head[1] != _LEGACY_PROTOCOL:
            raise pickle.UnpicklingError("not a torch.save file (no magic number)")
        roots: dict[str, Any] = {}
        views: dict[str, Any] = {}

        def persistent_load(saved_id):
            if not isinstance(saved_id, tuple) or _text(saved_id[0]) != "storage":
                raise pickle.UnpicklingError("unsupported persistent id (a pickled module?)")
            storage_type, key, _location, numel, view_metadata = saved_id[1:]
            dtype = _dtype(storage_type)
            elem = torch._utils._element_size(dtype)
            if key not in roots:
                roots[key] = placeholder(key, dtype, numel * elem)
            if view_metadata is None:
                return roots[key]
            view_key, offset, view_numel = view_metadata
            if view_key not in views:
                views[view_key] = placeholder(key, dtype, numel * elem, offset * elem, view_numel * elem)
            return views[view_key]

        lazy.obj = _unpickler(f, trusted, persistent_load).load()
        keys = _unpickler(f, trusted, None).load()
        at = f.tell()
        for key in keys:  # each storage: an 8-byte element count, then its bytes
            if key not in lazy.sizes:
                raise pickle.UnpicklingError(f"storage {key} is listed but no tensor uses it")
            lazy.legacy_start[key] = at + 8
            at += 8 + lazy.sizes[key][0]
        if at > os.path.getsize(path):
            raise EOFError(f"the file is {os.path.getsize(path)} bytes, its storages end at {at} (truncated?)")
    return lazy
