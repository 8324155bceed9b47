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

__all__ = ["VQVAEHparams", "PriorHparams", "get", "names", "from_dict", "CODEBOOK_MODES", "LOSS_FNS"]

CODEBOOK_MODES = ("ema", "vqvae1")
LOSS_FNS = ("l1", "l2", "linf", "lmix")


def _lists_to_tuples(hp) -> None:
    """Lists from JSON or a user become tuples, so presets stay hashable and comparable."""
    for f in dataclasses.fields(hp):
        value = getattr(hp, f.name)
        if isinstance(value, list):
            object.__setattr__(hp, f.name, tuple(value))


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
        _lists_to_tuples(self)
        n = self.levels
        if n < 1:
            raise ValueError(f"levels must be >= 1, got {n}")
        for name, low in (("sr", 1), ("emb_width", 1), ("l_bins", 1), ("width", 1), ("depth", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 < self.l_mu <= 1.0:
            raise ValueError(f"l_mu (the codebook's EMA decay) must be in (0, 1], got {self.l_mu}")
        if not (math.isfinite(self.commit) and self.commit >= 0.0):
            raise ValueError(f"commit must be a finite number >= 0, got {self.commit}")
        for name in ("downs_t", "strides_t") + (("hvqvae_multipliers",) if self.hvqvae_multipliers else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per level ({n}), got {getattr(self, name)}")
        if any(s < 1 for s in self.strides_t) or any(d < 0 for d in self.downs_t):
            raise ValueError(f"strides_t must be >= 1 and downs_t >= 0 at every level, got strides_t="
                             f"{self.strides_t}, downs_t={self.downs_t}")
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


# PriorHparams fields that nothing reads, kept so that recorded hyper-parameters still load.
COMPAT_ONLY = ("spread", "pos_init", "c_res", "prime_spread", "prime_c_res")


@dataclass(frozen=True)
class PriorHparams:
    """Hyper-parameters of one level's prior (top-level prior or upsampler), original names.

    ``vqvae`` names the VQ-VAE preset the prior codes for (its codebook size, hops and, for an
    upsampler, the upper level's up-sampling); :func:`jukebox_fast.make_prior` can be given the
    VQ-VAE itself instead.
    """

    level: int = 2
    vqvae: str = "vqvae"
    n_ctx: int = 8192
    prior_width: int = 4800
    prior_depth: int = 72
    heads: int = 8
    attn_order: int = 2
    blocks: int = 128
    spread: int | None = None
    init_scale: float = 0.1
    m_attn: float = 0.25
    m_mlp: float = 1.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    emb_dropout: float = 0.0
    zero_out: bool = False
    res_scale: bool = False
    # spread, pos_init, c_res, prime_spread and prime_c_res are kept because the original's
    # checkpoints (and ours) record them: nothing reads them. The c_res fields only chose where
    # the original recomputed activations to save memory; the others must keep their released
    # values, which __post_init__ checks (see COMPAT_ONLY).
    pos_init: bool = False
    c_res: int = 0
    # Labels: artist and genre start embedding, and (top level only) the timing embedding.
    labels: bool = True
    labels_v3: bool = False
    y_bins: tuple[int, int] = (120, 4111)  # (genres, artists)
    max_bow_genre_size: int = 5
    t_bins: int = 128
    min_duration: float | None = 60.0
    max_duration: float | None = 600.0
    sr: int = 44100
    # Lyrics.
    n_vocab: int = 80
    use_tokens: bool = False
    n_tokens: int = 0
    prime_loss_fraction: float = 0.0
    merged_decoder: bool = True
    single_enc_dec: bool = False
    fp16_params: bool = True
    # The separate lyric encoder (5b_lyrics).
    prime_width: int = 1280
    prime_depth: int = 18
    prime_heads: int = 4
    prime_attn_order: int = 2
    prime_blocks: int = 32
    prime_spread: int | None = None
    prime_init_scale: float = 0.7
    prime_m_attn: float = 0.25
    prime_m_mlp: float = 1.0
    prime_zero_out: bool = False
    prime_res_scale: bool = False
    prime_c_res: int = 1
    # The upper-level conditioner (upsamplers).
    cond_width: int = 1024
    cond_depth: int = 16
    cond_m_conv: float = 1.0
    cond_zero_out: bool = False
    cond_res_scale: bool = False
    cond_dilation_growth_rate: int = 3
    cond_dilation_cycle: int | None = 8
    cond_c_res: int = 1
    # Lyric alignment (sampling only).
    alignment_layer: int | None = None
    alignment_head: int | None = None

    def __post_init__(self) -> None:
        _lists_to_tuples(self)
        from . import validate
        from .ops.patterns import layer_kinds

        validate.at_least(self.level, "level", 0)
        for name in ("n_ctx", "prior_width", "prior_depth", "heads", "blocks", "t_bins", "n_vocab", "prime_width",
                     "prime_depth", "prime_heads", "prime_blocks", "cond_width", "cond_depth", "sr"):
            validate.at_least(getattr(self, name), name, 1)
        for name in ("m_attn", "m_mlp", "init_scale", "prime_m_attn", "prime_m_mlp", "prime_init_scale", "cond_m_conv"):
            validate.finite(getattr(self, name), name)
        layer_kinds(self.attn_order, self.prior_depth)  # an unknown attn_order fails here, early
        if self.attn_dropout:
            raise ValueError("attn_dropout is not supported (every released prior uses 0)")
        for name, released in (("spread", None), ("pos_init", False), ("prime_spread", None)):
            if getattr(self, name) != released:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported: every released prior uses "
                                 f"{released!r}, and the field is kept only to read checkpoints that record it")
        if self.prior_width % self.heads or int(self.m_attn * self.prior_width) % self.heads:
            raise ValueError(
                f"prior_width {self.prior_width} (and m_attn·width) must divide into heads={self.heads}")
        length = self.n_ctx + (self.n_tokens if self.single_enc_dec else 0)
        if length % self.blocks:
            raise ValueError(f"blocks={self.blocks} must divide the sequence length {length}")
        if self.use_tokens and not self.single_enc_dec and self.n_tokens % self.prime_blocks:
            raise ValueError(f"prime_blocks={self.prime_blocks} must divide n_tokens={self.n_tokens}")

    @property
    def is_top(self) -> bool:
        """The top level has timing conditioning; every other level an upper-level conditioner."""
        return self.level == 2

    @property
    def seq_length(self) -> int:
        """Transformer positions: the music context, plus the lyrics in the single model."""
        return self.n_ctx + (self.n_tokens if self.single_enc_dec else 0)

    @property
    def block_ctx(self) -> int:
        return self.seq_length // self.blocks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_UPSAMPLER = dict(
    n_ctx=8192, prior_width=1920, prior_depth=72, heads=1, attn_order=2, blocks=128, init_scale=0.4,
    t_bins=128, min_duration=None, max_duration=None, merged_decoder=False, fp16_params=False,
)
_PRIOR_5B_LYRICS = dict(
    prior_depth=79, attn_order=10, min_duration=23.8, use_tokens=True, n_tokens=512, prime_loss_fraction=0.4,
    alignment_layer=68, alignment_head=2,
)
_PRIOR_1B_LYRICS = dict(
    n_ctx=6144, prior_width=2048, prior_depth=72, heads=2, attn_order=12, blocks=64, init_scale=0.2,
    labels_v3=True, y_bins=(604, 7898), max_bow_genre_size=1, t_bins=64, min_duration=17.84, n_vocab=79,
    use_tokens=True, n_tokens=384, prime_loss_fraction=0.4, merged_decoder=False, single_enc_dec=True,
    fp16_params=False, alignment_layer=63, alignment_head=0,
)
# Shared by the CPU-sized presets below (which keep the released structures at width 32).
_TINY = dict(vqvae="tiny_vqvae", prior_width=32, heads=2, blocks=8, init_scale=1.0)

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
    # The released priors (jukebox-reference.md §3.1).
    "prior_5b": lambda: PriorHparams(),
    "prior_5b_lyrics": lambda: PriorHparams(**_PRIOR_5B_LYRICS),
    "prior_1b_lyrics": lambda: PriorHparams(**_PRIOR_1B_LYRICS),
    "upsampler_level_0": lambda: PriorHparams(level=0, **_UPSAMPLER),
    "upsampler_level_1": lambda: PriorHparams(level=1, cond_res_scale=True, **_UPSAMPLER),
    # CPU-sized: every attention type in the order the originals cycle them.
    # tiny_prior: 1b_lyrics structure (single encoder-decoder, attn_order 12: block, column,
    # previous-block, prime at layers 15 and 31, dense at 47 -> 48 layers), v3 labels, timing.
    "tiny_prior": lambda: PriorHparams(**{**_PRIOR_1B_LYRICS, **_TINY, "n_ctx": 64, "n_tokens": 16,
                                          "prior_depth": 48, "alignment_layer": None, "alignment_head": None}),
    # tiny_prior_5b_lyrics: separate lyric encoder and cross-attention (attn_order 10 reaches its
    # first cross-attention layer at 18), v2 labels, timing. fp32 weights: plain optimisers cannot
    # train the released fp16 Conv1D weights (the original kept fp32 master copies for that).
    "tiny_prior_5b_lyrics": lambda: PriorHparams(**{**_PRIOR_5B_LYRICS, **_TINY, "n_ctx": 64, "n_tokens": 16,
                                                    "prior_depth": 19, "prime_width": 16, "prime_depth": 3,
                                                    "prime_heads": 2, "prime_blocks": 4, "prime_init_scale": 1.0,
                                                    "min_duration": 1.0, "fp16_params": False, "alignment_layer": None,
                                                    "alignment_head": None}),
    # tiny_top_prior: the 5b top prior's structure without lyrics (attn_order 2: block and column
    # layers), artist/genre/timing labels; the demo's top level.
    "tiny_top_prior": lambda: PriorHparams(**{**_TINY, "level": 2, "n_ctx": 64, "prior_depth": 4, "attn_order": 2,
                                              "min_duration": 1.0}),
    # tiny_upsampler: level-1 upsampler structure (conditioner with checkpoint names and residual
    # scale), attn_order 2.
    "tiny_upsampler": lambda: PriorHparams(**{**_UPSAMPLER, **_TINY, "level": 1, "cond_res_scale": True,
                                              "n_ctx": 64, "prior_depth": 3, "cond_width": 16, "cond_depth": 3}),
}


def names(cls: type | None = None) -> list[str]:
    """The preset names :func:`get` knows; with ``cls`` (``VQVAEHparams`` or ``PriorHparams``),
    only the presets of that kind."""
    return sorted(n for n, make in _PRESETS.items() if cls is None or isinstance(make(), cls))


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
