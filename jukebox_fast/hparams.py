"""Hyper-parameter presets, as dataclasses with the original Jukebox field names.

    >>> from jukebox_fast import hparams
    >>> hp = hparams.get("vqvae")
    >>> hp.hop_lengths
    (8, 32, 128)
    >>> small = hparams.get("tiny_vqvae", l_bins=128)

Field names are those of the original ``hparams.py`` (``levels``, ``downs_t``, ``emb_width``,
``l_bins``, ``hvqvae_multipliers``, ...), so a user of the original finds them. An unknown
override is an error that names the closest fields.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["VQVAEHparams", "get", "names", "from_dict", "CODEBOOK_MODES", "LOSS_FNS"]

CODEBOOK_MODES = ("ema", "vqvae1")
LOSS_FNS = ("l1", "l2", "linf", "lmix")


@dataclass(frozen=True)
class VQVAEHparams:
    """Hyper-parameters of the hierarchical VQ-VAE (the original ``vqvae`` set and relatives)."""

    sr: int = 44100
    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    emb_width: int = 64
    l_bins: int = 2048
    l_mu: float = 0.99
    commit: float = 0.02
    spectral: float = 0.0
    multispectral: float = 1.0
    hvqvae_multipliers: tuple[int, ...] | None = (2, 1, 1)
    loss_fn: str = "lmix"
    lmix_l1: float = 0.0
    lmix_l2: float = 1.0
    lmix_linf: float = 0.02
    linf_k: int = 2048
    width: int = 32
    depth: int = 4
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    dilation_cycle: int | None = None
    vqvae_reverse_decoder_dilation: bool = True
    revival_threshold: float = 1.0
    # Only fixes the code shapes (z_shapes); the convolutions take any multiple of the top hop.
    # 1,048,576 = 8192 top-level tokens x 128, the top prior's context (the original Colab's value).
    sample_length: int = 1_048_576
    use_nonrelative_specloss: bool = True
    multispec_loss_n_fft: tuple[int, ...] = (2048, 1024, 512)
    multispec_loss_hop_length: tuple[int, ...] = (240, 120, 50)
    multispec_loss_window_size: tuple[int, ...] = (1200, 600, 240)
    # Not in the original: "ema" is the released EMA codebook with random restarts; "vqvae1" is a
    # codebook learned by gradient with the loss ‖sg[E(x)] − e‖² + commit·‖sg[e] − E(x)‖² (the
    # VQ-VAE paper uses commit=0.25; the released 0.02 lets the encoder drift from the codebook).
    codebook_mode: str = "ema"

    def __post_init__(self) -> None:
        # Lists from JSON or a user become tuples, so presets stay hashable and comparable.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        n = self.levels
        if n < 1:
            raise ValueError(f"levels must be >= 1, got {n}")
        for name in ("downs_t", "strides_t") + (("hvqvae_multipliers",) if self.hvqvae_multipliers else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per level ({n}), got {getattr(self, name)}")
        if self.codebook_mode not in CODEBOOK_MODES:
            raise ValueError(f"codebook_mode must be one of {CODEBOOK_MODES}, got {self.codebook_mode!r}")
        if self.loss_fn not in LOSS_FNS:
            raise ValueError(f"loss_fn must be one of {LOSS_FNS}, got {self.loss_fn!r}")
        if self.sample_length % self.hop_lengths[-1]:
            raise ValueError(
                f"sample_length must be a multiple of the top hop {self.hop_lengths[-1]}, "
                f"got {self.sample_length}"
            )
        if not (len(self.multispec_loss_n_fft) == len(self.multispec_loss_hop_length)
                == len(self.multispec_loss_window_size)):
            raise ValueError("the three multispec_loss_* tuples must have the same length")

    @property
    def downsamples(self) -> tuple[int, ...]:
        """Down-sampling factor of each level's new part: stride ** downs (8, 4, 4 released)."""
        return tuple(s**d for s, d in zip(self.strides_t, self.downs_t))

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Audio samples per code at each level (8, 32, 128 released)."""
        return tuple(math.prod(self.downsamples[: i + 1]) for i in range(self.levels))

    @property
    def z_shapes(self) -> tuple[tuple[int], ...]:
        """Code shape of each level for ``sample_length`` samples."""
        return tuple((self.sample_length // h,) for h in self.hop_lengths)

    def multipliers(self) -> tuple[int, ...]:
        return self.hvqvae_multipliers or (1,) * self.levels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TINY_VQVAE = dict(
    emb_width=32,
    l_bins=256,
    width=16,
    depth=3,
    sample_length=32_768,
)

_PRESETS: dict[str, Callable[[], Any]] = {
    # The released VQ-VAE (5b/vqvae.pth.tar, shared by 5b, 5b_lyrics and 1b_lyrics).
    "vqvae": lambda: VQVAEHparams(),
    # Same structure (3 levels, hops 8/32/128, per-level multipliers, growing dilations), small
    # widths: trains on a CPU in minutes.
    "tiny_vqvae": lambda: VQVAEHparams(**_TINY_VQVAE),
}


def names() -> list[str]:
    """The preset names :func:`get` knows."""
    return sorted(_PRESETS)


def _close(word: str, options) -> str:
    near = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""


def _replace(hp, overrides: dict[str, Any], what: str):
    fields = {f.name for f in dataclasses.fields(hp)}
    for key in overrides:
        if key not in fields:
            raise ValueError(f"{what} has no hyper-parameter {key!r}{_close(key, fields)}")
    return dataclasses.replace(hp, **overrides)


def get(name: str, **overrides: Any):
    """A preset by name, with fields overridden by keyword (original hparam names).

    Raises ValueError for an unknown preset or an unknown field, naming the closest matches.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown hparams preset {name!r}{_close(name, _PRESETS)} (known: {', '.join(names())})")
    return _replace(_PRESETS[name](), overrides, f"preset {name!r}")


def from_dict(cls, values: dict[str, Any], *, strict: bool = True):
    """Build ``cls`` from a dict such as a checkpoint's; ``strict=False`` ignores unknown keys."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if strict:
        return _replace(cls(), values, cls.__name__)
    return cls(**{k: v for k, v in values.items() if k in fields})
