"""Checkpoints: the original OpenAI ``.pth.tar`` files and our own, as models.

Reading and writing the files themselves (safe loading, atomic writes) is :mod:`jukebox_fast.files`;
HF transformers' key names are :mod:`jukebox_fast.hf_keys`. Both are imported here too, where
they were first defined.

Our own format is a dict ``{"format": "jukebox_fast", "version": 1, "kind": ..., "hparams": ...,
"model": state_dict, "checksum": sha256 of its tensors, ...}``; the original format is ``{"hps":
..., "model": state_dict, "opt": ..., "step": ...}``. Both load with :func:`load_vqvae`, as does a
bare state dict in either the original's or HF transformers' key names. Loading checks the kind
of model the file holds, our checksum, and that no weight is NaN or inf (the one check an
original file allows).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import hparams as hparams_mod
from .files import CheckpointError, _numpy_globals, atomic_save, atomic_write, open_checkpoint, read_checkpoint
from .hf_keys import hf_to_openai, looks_hf, openai_to_hf, openai_to_hf_key
from .hparams import PriorHparams, VQVAEHparams
from .models.prior import SimplePrior, make_prior
from .models.transformer import Conv1D, quantize_int8, weights_in
from .models.vqvae import VQVAE, make_vqvae

__all__ = [
    "CheckpointError",
    "atomic_save",
    "atomic_write",
    "read_checkpoint",
    "load_state_dict_checked",
    "tensor_checksum",
    "load_vqvae",
    "save_vqvae",
    "load_prior",
    "save_prior",
    "read_record",
    "vqvae_hparams",
    "PriorFile",
    "openai_to_hf_key",
    "openai_to_hf",
    "hf_to_openai",
]

FORMAT = "jukebox_fast"
VERSION = 1


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint, ``module.`` prefixes (DDP) stripped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        sd = obj["model"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path}: expected a dict with a 'model' state dict (the original's format) or a bare "
            f"state dict, found {what}"
        )
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def tensor_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in key order: what our files
    carry as ``checksum`` and what loading recomputes."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        _hash_tensor(h, key, t)
    return h.hexdigest()


def _hash_tensor(h, key: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the tensor


def _verify(obj: Any, state_dict: Mapping[str, Any], path: Path, kind: str) -> None:
    """The checks before any weight is used: the file holds a ``kind`` ("vqvae" or "prior"),
    its tensors match our checksum (our files) and hold no NaN or inf (every file)."""
    ours = _check_kind(obj, state_dict, path, kind)
    if ours and obj.get("checksum") and tensor_checksum(state_dict) != obj["checksum"]:
        raise _corrupt(path)
    for key, t in state_dict.items():
        _check_finite(path, key, t)


def _check_kind(obj: Any, state_dict: Mapping[str, Any], path: Path, kind: str) -> bool:
    """Raise unless the file holds a ``kind`` (our record says, else the key names tell);
    returns whether it is one of our files."""
    ours = isinstance(obj, Mapping) and obj.get("format") == FORMAT
    if ours:
        found = obj.get("kind")
    else:  # an original or bare state dict: the key names tell
        keys = list(state_dict)
        is_vqvae = any(k.startswith(("encoders.", "decoders.", "bottleneck.")) for k in keys)
        is_prior = any(k.startswith(("prior.", "y_emb.", "conditioner_blocks.", "x_emb.")) for k in keys)
        found = "vqvae" if is_vqvae and not is_prior else "prior" if is_prior and not is_vqvae else kind
    if found != kind:
        raise _wrong_kind(path, found, kind)
    return ours


def _corrupt(path: Path) -> CheckpointError:
    return CheckpointError(f"{path} is corrupt: its tensors do not match the checksum written with them "
                           "(the file was changed or damaged after saving)")


def _check_finite(path: Path, key: str, t: Any) -> None:
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        # by pieces: isfinite over a whole tensor makes several temporaries of its size
        bad = sum(int((~torch.isfinite(piece)).sum()) for piece in t.reshape(-1).split(1 << 18))
        if bad:
            raise CheckpointError(f"{path} is corrupt: {key!r} holds {bad} NaN/inf value(s) of {t.numel()}")


def _wrong_kind(path: Path, found: str, kind: str) -> CheckpointError:
    name = {"vqvae": "a VQ-VAE", "prior": "a prior"}
    return CheckpointError(f"{path} holds {name.get(found, repr(found))}, not {name[kind]} "
                           f"(pass it to load_{found} / the matching option)")


def load_state_dict_checked(model: torch.nn.Module, state_dict: Mapping[str, Any], source: str = "checkpoint",
                            *, assign: bool = False, device: torch.device | str | None = None,
                            consume: bool = False) -> None:
    """``load_state_dict(strict=True)`` after checks whose errors name the offending keys.

    Tensors are cast to the model's dtypes (fp16 weights into an fp32 model are upcast, as
    ``load_state_dict`` does in the original). ``assign=True`` adopts the tensors (moved to
    ``device``) instead of copying them, so a model built on the meta device costs no memory
    before its weights arrive. ``consume=True`` empties ``state_dict`` as it goes: a tensor that
    is cast or moved is dropped as soon as its copy exists, so a loader that read the whole
    file holds the file and one tensor, not the file and the model.
    """
    expected = model.state_dict()
    _check_matches(expected, state_dict, source)
    cast = {}
    for key, target in expected.items():
        value = state_dict.pop(key) if consume else state_dict[key]
        cast[key] = value.to(device=device if assign else None, dtype=target.dtype)
        del value
    model.load_state_dict(cast, strict=True, assign=assign)


def _check_matches(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any], source: str) -> None:
    """Raise, naming the keys, unless ``state_dict`` has exactly ``expected``'s keys, each a
    tensor of its shape."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}")
    for key, target in expected.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: key {key!r} holds {type(value).__name__}, expected a tensor")
        if value.shape != target.shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {list(value.shape)}, the model expects {list(target.shape)}"
            )


# What a prior's codes depend on in its VQ-VAE: the levels, their hops and the codebook.
VQVAE_STRUCTURE = ("levels", "downs_t", "strides_t", "l_bins", "sr")


def _agree(path: Path, recorded, given, what: str, fields: tuple[str, ...] | None = None) -> None:
    """Raise CheckpointError naming each field where the hyper-parameters given contradict the
    ones ``path`` records (all fields, or ``fields``)."""
    rec, giv = dataclasses.asdict(recorded), dataclasses.asdict(given)
    names = fields or tuple(rec)
    diff = [f"{k}: {giv.get(k)!r} given, {rec.get(k)!r} recorded" for k in names if rec.get(k) != giv.get(k)]
    if diff:
        raise CheckpointError(f"{path} records other hyper-parameters for {what} than those given ({'; '.join(diff)}): "
                              "the file's are the truth; leave them out to use them")


# -- the VQ-VAE ----------------------------------------------------------------------------------
def _hparams_from(obj: Any, override: VQVAEHparams | None, path: Path) -> VQVAEHparams:
    if override is not None:
        if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
            _agree(path, hparams_mod.from_dict(VQVAEHparams, obj["hparams"]), override, "the VQ-VAE")
        return override
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return hparams_mod.from_dict(VQVAEHparams, obj["hparams"])
    if isinstance(obj, Mapping) and isinstance(obj.get("hps"), Mapping):
        # An original checkpoint: its hps dict holds the VQ-VAE fields among many others.
        # None is meaningful for some fields (hvqvae_multipliers, dilation_cycle), so it is kept.
        known = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in obj["hps"].items()}
        known.pop("sample_length", None)  # 0 or a prior's length in many originals; not structural
        try:
            return hparams_mod.from_dict(VQVAEHparams, known, strict=False)
        except (ValueError, TypeError):
            pass  # not a VQ-VAE's hps: the released architecture, checked key by key on load
    return hparams_mod.get("vqvae")


def load_vqvae(path: str | os.PathLike, device: torch.device | str | None = None, *,
               hparams: VQVAEHparams | None = None, trust_pickle: bool = False) -> VQVAE:
    """A VQ-VAE from an original ``vqvae.pth.tar``, one of our checkpoints, or a bare state dict.

    The architecture comes from ``hparams`` if given, else from the file (ours, or the
    original's ``hps``), else the released ``vqvae`` preset. Keys with HF transformers' names are
    converted. The model is returned in eval mode with its codebooks marked initialised (ours
    keep the saved state: a level never trained, ``train_vqvae(start_level=...)``, stays so, and
    ``encode``/``decode`` refuse it).
    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for an unreadable
    one or one whose keys or shapes do not fit (the message names the key).
    """
    path = Path(path)
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    state_dict = _state_dict_of(obj, path)
    if looks_hf(state_dict):
        state_dict = hf_to_openai(state_dict)
    _verify(obj, state_dict, path, "vqvae")
    with torch.device("meta"):  # no memory until the file's tensors are adopted
        model = make_vqvae(_hparams_from(obj, hparams, path))
    load_state_dict_checked(model, state_dict, str(path), assign=True, device=device or "cpu", consume=True)
    ema = obj.get("ema") if isinstance(obj, Mapping) and obj.get("format") == FORMAT else None
    for level, block in enumerate(model.bottleneck.level_blocks):
        if ema:
            state = ema[level]
            block.k_sum, block.k_elem = (None if t is None else t.to(block.k.device)
                                         for t in (state["k_sum"], state["k_elem"]))
            block.threshold, block.init = state["threshold"], state["init"]
        else:
            block.init = True  # a loaded codebook is never re-initialised from data
    if isinstance(obj, Mapping) and obj.get("bandwidth"):
        model.bandwidth = type(model.bandwidth)(**obj["bandwidth"])
    return model.eval()


def save_vqvae(model: VQVAE, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` (weights, hparams, EMA state, bandwidth) atomically in our format."""
    ema = [
        dict(k_sum=b.k_sum, k_elem=b.k_elem, threshold=b.threshold, init=b.init)
        for b in model.bottleneck.level_blocks
    ]
    sd = model.state_dict()
    return atomic_save(dict(
        format=FORMAT, version=VERSION, kind="vqvae",
        hparams=model.hps.to_dict(), model=sd, checksum=tensor_checksum(sd), ema=ema,
        bandwidth=model.bandwidth.to_dict(), **extra,
    ), path)


# -- priors ---------------------------------------------------------------------------------------
def load_prior(path: str | os.PathLike, name_or_hparams: str | PriorHparams | None = None, vqvae=None,
               device: torch.device | str | None = None, *, layers: int | None = None,
               weights: str = "stored", trust_pickle: bool = False) -> SimplePrior:
    """A prior from an original ``prior_level_N.pth.tar`` (or one of ours, or a bare state dict).

    Args:
        path: the file. The original's dict holds ``model`` and maybe ``hps``, ``step``, ``opt``;
            ``module.`` prefixes are stripped.
        name_or_hparams: the architecture (``"prior_1b_lyrics"``, ``"upsampler_level_0"``, ... or
            a :class:`~jukebox_fast.hparams.PriorHparams`); may be left out for our own files.
        vqvae: the VQ-VAE the prior codes for (model or hparams); default: the preset's.
        device: where the weights go (default CPU). The model is built on the meta device and
            adopts the file's tensors, cast to its dtypes (fp16 Conv1D weights stay fp16 where
            the released model keeps them so).
        layers: keep only the LM's first ``layers`` blocks; the others are never built or
            loaded (layer 36 of the 5b prior: half its weights). Such a prior gives hidden
            states (:meth:`~jukebox_fast.models.prior.SimplePrior.hidden_states`), not logits.
        weights: "stored" (each tensor in the dtype the architecture keeps it), "16-bit" (every
            projection matrix in 16 bits: fp16 stays fp16, fp32 becomes bf16), "bf16" or "fp16"
            (every projection matrix in that dtype), or "int8" (weight-only int8, one scale per
            output column: :func:`~jukebox_fast.models.transformer.quantize_int8`; embeddings,
            LayerNorms and biases stay), converted tensor by tensor as it loads
            (:func:`~jukebox_fast.models.transformer.weights_in`).

    Loading reads the file one tensor at a time (:func:`~jukebox_fast.files.open_checkpoint`):
    each is checked, converted to the model's form and dropped, so loading holds the converted
    tensors and one of the file's with its conversion, never the whole file (what the memory
    plan counts). Our files' checksum is checked once every tensor has been read, before the
    model is returned.

    Raises FileNotFoundError, or :class:`CheckpointError` naming the file and the key when the
    file is unreadable, does not fit the architecture, or unties a tied output projection.
    """
    weights_in(torch.nn.Module(), weights)  # an unknown form fails before the file is read
    if not isinstance(name_or_hparams, (str, PriorHparams, type(None))):
        raise TypeError(f"name_or_hparams must be a preset name or PriorHparams, got {type(name_or_hparams).__name__} "
                        "(the VQ-VAE goes in vqvae=)")
    path = Path(path)
    obj, read = open_checkpoint(path, trust_pickle=trust_pickle)  # tensors on the meta device until read
    state_dict = _state_dict_of(obj, path)
    ours = _check_kind(obj, state_dict, path, "prior")
    if name_or_hparams is None:
        if not ours:
            raise CheckpointError(f"{path} does not say which prior it holds: pass name_or_hparams "
                                  "(e.g. 'prior_5b', 'prior_1b_lyrics' or 'upsampler_level_0'; --model on the "
                                  "command line)")
        name_or_hparams = hparams_mod.from_dict(PriorHparams, obj["hparams"])
        if vqvae is None:
            vqvae = hparams_mod.from_dict(VQVAEHparams, obj["vqvae_hparams"])
    elif ours:  # the file's record of what it is wins over what the caller says
        given = hparams_mod.get(name_or_hparams) if isinstance(name_or_hparams, str) else name_or_hparams
        _agree(path, hparams_mod.from_dict(PriorHparams, obj["hparams"]), given, "the prior")
    if ours and vqvae is not None:
        given_vq = vqvae if isinstance(vqvae, VQVAEHparams) else getattr(vqvae, "hps", None)
        if given_vq is not None:
            _agree(path, hparams_mod.from_dict(VQVAEHparams, obj["vqvae_hparams"]), given_vq, "the VQ-VAE",
                   fields=VQVAE_STRUCTURE)
    checksum = obj.get("checksum") if ours else None
    del obj
    with torch.device("meta"):
        model = make_prior(name_or_hparams, vqvae)
    weights_in(model, weights)
    kept = dict(state_dict)  # the model's tensors: the file's placeholders until each is read
    if layers is not None:
        depth = len(model.prior.transformer._attn_mods)
        if not isinstance(layers, int) or not 1 <= layers <= depth:
            raise ValueError(f"layers must be an integer in 1..{depth} (this prior's blocks), got {layers!r}")
        model.prior.transformer.keep_first(layers)
        dropped = re.compile(r"prior\.transformer\._attn_mods\.(\d+)\.")
        kept = {k: v for k, v in state_dict.items() if not ((m := dropped.match(k)) and int(m.group(1)) >= layers)}
    expected = model.state_dict()
    _check_matches(expected, kept, str(path))  # before any tensor is read
    # One tensor of the file at a time: read, checked, converted to the model's form, and the
    # file's copy dropped; so loading holds the converted tensors and one of the file's.
    int8 = {f"{name}.w" for name, m in model.named_modules() if isinstance(m, Conv1D) and m.w.dtype == torch.int8}
    digest = hashlib.sha256() if checksum else None
    scales = {}
    for key in list(state_dict):
        placeholder = state_dict.pop(key)
        if key not in kept and digest is None:
            continue  # a dropped layer, with no checksum to read it for
        t = read(placeholder)
        if digest is not None:
            _hash_tensor(digest, key, t)
        _check_finite(path, key, t)
        if key in int8:
            q, scale = quantize_int8(t)
            kept[key], scales[key[:-2]] = q.to(device or "cpu"), scale
        elif key in kept:  # (on a GPU, moved as it comes: the host holds one tensor of the file)
            kept[key] = t.to(device or "cpu", expected[key].dtype)
        del t
    if digest is not None and digest.hexdigest() != checksum:
        raise _corrupt(path)
    load_state_dict_checked(model, kept, str(path), assign=True, device=device or "cpu", consume=True)
    for name, scale in scales.items():
        model.get_submodule(name).w_scale = scale.to(device or "cpu")
    lm = model.prior
    if not model.hps.merged_decoder:  # x_out is x_emb in this architecture: keep it one tensor
        if not torch.equal(lm.x_out.weight, lm.x_emb.weight):
            raise CheckpointError(f"{path}: prior.x_out.weight differs from prior.x_emb.weight, but this "
                                  "architecture ties them (merged_decoder=False)")
        lm.x_out.weight = lm.x_emb.weight
    return model.eval()


def read_record(path: str | os.PathLike) -> Mapping[str, Any] | None:
    """What one of our checkpoints records about itself (``kind``, ``hparams``, ...) without
    reading its weights (the file is memory-mapped; no tensor is touched). None for a file in
    another format (the original's: its architecture comes from a preset)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    st = path.stat()
    return _record(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _record(path: str, size: int, mtime_ns: int) -> Mapping[str, Any] | None:
    """read_record's reading, once per file version (a run asks for each prior's record
    several times: its checks, its plan, its settings)."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the legacy (non-zip) format cannot be mapped: an original file
        return None
    if not (isinstance(obj, Mapping) and obj.get("format") == FORMAT):
        return None
    return {k: v for k, v in obj.items() if k not in ("model", "ema")}


def vqvae_hparams(path: str | os.PathLike) -> VQVAEHparams:
    """The architecture of the VQ-VAE in ``path`` without loading it: ours record it, an
    original file is the released ``vqvae``."""
    record = read_record(path)
    if record is None:
        return hparams_mod.get("vqvae")
    if record.get("kind") != "vqvae":
        raise _wrong_kind(Path(path), record.get("kind"), "vqvae")
    return hparams_mod.from_dict(VQVAEHparams, record["hparams"])


@dataclasses.dataclass(frozen=True)
class PriorFile:
    """A prior checkpoint that is loaded only when a run reaches its level.

    Given to :func:`~jukebox_fast.sample.generate` in place of a loaded prior, it lets the run
    be planned before any weight loads (:mod:`jukebox_fast.memory`) and each level be loaded
    in turn and freed after it. ``preset`` as :func:`load_prior` takes it (None for our files).
    """

    path: Path
    preset: str | PriorHparams | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")

    def hparams(self, vqvae: VQVAEHparams | None = None) -> PriorHparams:
        """The prior's architecture; with ``vqvae``, our file's record of the VQ-VAE it was trained
        with must agree with it (as :func:`load_prior` checks, but before anything loads)."""
        record = read_record(self.path) if self.preset is None or vqvae is not None else None
        if record is not None and vqvae is not None and record.get("vqvae_hparams"):
            _agree(self.path, hparams_mod.from_dict(VQVAEHparams, record["vqvae_hparams"]), vqvae, "the VQ-VAE",
                   fields=VQVAE_STRUCTURE)
        if self.preset is not None:
            return hparams_mod.get(self.preset) if isinstance(self.preset, str) else self.preset
        if record is not None and record.get("kind") != "prior":
            raise _wrong_kind(self.path, record.get("kind"), "prior")
        if record is None:
            raise CheckpointError(f"{self.path} does not say which prior it holds: name its preset (e.g. "
                                  "'prior_5b', 'upsampler_level_0'; --model on the command line)")
        return hparams_mod.from_dict(PriorHparams, record["hparams"])

    def fingerprint(self) -> str:
        """Which file this is, for a run's settings: its path, size and modification time."""
        st = self.path.stat()
        return hashlib.sha256(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]

    def load(self, vqvae=None, device: torch.device | str | None = None, weights: str = "stored") -> SimplePrior:
        return load_prior(self.path, self.preset, vqvae, device, weights=weights)


def save_prior(model: SimplePrior, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` (weights and both hparams) atomically in our format."""
    sd = model.state_dict()
    return atomic_save(dict(
        format=FORMAT, version=VERSION, kind="prior", hparams=model.hps.to_dict(),
        vqvae_hparams=model.vqvae_hps.to_dict(), model=sd, checksum=tensor_checksum(sd), **extra,
    ), path)
