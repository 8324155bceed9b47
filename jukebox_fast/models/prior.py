"""One level's prior (``SimplePrior`` in the original): conditioning, lyrics and the LM.

Modules, in the original's order and names: ``conditioner_blocks.0`` (upsamplers: the level
above's codes), ``y_emb`` (artist, genres, timing), the 5b_lyrics lyric encoder (``prime_prior``,
``prime_state_proj``, ``prime_state_ln``, ``prime_x_out``) and ``prior`` (the transformer LM).

Labels ``y`` [N, 4 + G + n_tokens]: total_length, offset, length (raw samples), artist id,
G genre ids (−1 for none), then the lyric tokens of this window (none for models without lyrics).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import hparams as hparams_mod
from ..hparams import PriorHparams, VQVAEHparams
from ..ops import Kind
from .checks import require_all
from .conditioners import Conditioner, LabelConditioner
from .transformer import Conv1D, ConditionalAutoregressive2D, LayerNorm, bits, cast_projections

__all__ = ["SimplePrior", "make_prior"]


class SimplePrior(nn.Module):
    """The prior of one level. ``forward(zs, y)`` is the original's training forward."""

    def __init__(self, hps: PriorHparams, vqvae_hps: VQVAEHparams):
        super().__init__()
        self.hps, self.vqvae_hps = hps, vqvae_hps
        level, w = hps.level, hps.prior_width
        if not 0 <= level < vqvae_hps.levels:
            raise ValueError(f"level {level} is not a level of a {vqvae_hps.levels}-level VQ-VAE")
        self.level = level
        self.bins = vqvae_hps.l_bins
        self.x_cond = level != vqvae_hps.levels - 1  # conditioned on the level above
        self.raw_to_tokens = vqvae_hps.hop_lengths[level]
        self.sample_length = hps.n_ctx * self.raw_to_tokens
        if self.x_cond:
            up = level + 1
            self.cond_downsample = vqvae_hps.downsamples[up]
            self.conditioner_blocks = nn.ModuleList([Conditioner(
                self.bins, w, vqvae_hps.downs_t[up], vqvae_hps.strides_t[up], hps.cond_width, hps.cond_depth,
                hps.cond_m_conv, hps.cond_dilation_growth_rate, hps.cond_dilation_cycle, hps.cond_zero_out,
                hps.cond_res_scale, hps.cond_c_res, hps.init_scale)])
        if hps.labels:
            self.y_emb = LabelConditioner(hps.y_bins, w, hps.init_scale, hps.max_bow_genre_size,
                                          include_time_signal=not self.x_cond, n_time=hps.n_ctx, t_bins=hps.t_bins,
                                          sr=hps.sr, min_duration=hps.min_duration, max_duration=hps.max_duration)
        self.n_tokens = hps.n_tokens if hps.use_tokens else 0
        self.separate_encoder = hps.use_tokens and not hps.single_enc_dec
        common = dict(m_attn=hps.m_attn, m_mlp=hps.m_mlp, emb_dropout=hps.emb_dropout,
                      resid_dropout=hps.resid_dropout)
        if self.separate_encoder:
            self.prime_prior = ConditionalAutoregressive2D(
                self.n_tokens, hps.n_vocab, hps.prime_width, hps.prime_depth, hps.prime_heads, hps.prime_attn_order,
                hps.prime_blocks, y_cond=False, only_encode=True, m_attn=hps.prime_m_attn, m_mlp=hps.prime_m_mlp,
                emb_dropout=hps.emb_dropout, resid_dropout=hps.resid_dropout, zero_out=hps.prime_zero_out,
                init_scale=hps.prime_init_scale, res_scale=hps.prime_res_scale)
            self.prime_state_proj = Conv1D(hps.prime_width, w, init_scale=hps.prime_init_scale)
            self.prime_state_ln = LayerNorm(w)
            self.prime_x_out = nn.Linear(w, hps.n_vocab, bias=False)
            nn.init.normal_(self.prime_x_out.weight, std=0.02 * hps.init_scale)
        bins = self.bins + (hps.n_vocab if hps.single_enc_dec else 0)
        self.prior = ConditionalAutoregressive2D(
            hps.seq_length, bins, w, hps.prior_depth, hps.heads, hps.attn_order, hps.blocks,
            y_cond=hps.labels, merged_decoder=hps.merged_decoder, zero_out=hps.zero_out,
            init_scale=hps.init_scale, res_scale=hps.res_scale,
            prime_len=self.n_tokens if hps.single_enc_dec else None, **common)
        if hps.fp16_params:  # the original keeps every Conv1D weight of these models in half
            cast_projections(self, torch.float16)

    # -- conditioning ---------------------------------------------------------------------------
    def check_codes(self, z: torch.Tensor, length: int, bins: int, what: str) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.dtype not in (torch.int64, torch.int32):
            got = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{what} must be integer codes [N, {length}], got {got}")
        if z.shape[1] != length:
            raise ValueError(f"{what} must be [N, {length}] for this level's context, got {tuple(z.shape)}")
        require_all((z >= 0) & (z < bins),
                    lambda: f"{what} must lie in [0, {bins}), got values in [{int(z.min())}, {int(z.max())}]")

    def split_labels(self, y: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """y -> (label part [N, 4 + G], lyric tokens [N, n_tokens] or None)."""
        if y is None:
            if self.hps.labels or self.n_tokens:
                raise ValueError("this prior is conditioned on labels: pass y")
            return None, None
        n_labels = 4 + self.hps.max_bow_genre_size
        if y.dim() != 2 or y.shape[1] != n_labels + self.n_tokens:
            raise ValueError(
                f"labels y must be [N, {n_labels + self.n_tokens}] (4 + {self.hps.max_bow_genre_size} genre slots"
                f" + {self.n_tokens} lyric tokens), got {tuple(y.shape)}")
        prime = y[:, n_labels:] if self.n_tokens else None
        if prime is not None:
            require_all((prime >= 0) & (prime < self.hps.n_vocab),
                        lambda: f"lyric tokens must lie in [0, {self.hps.n_vocab}), got [{int(prime.min())}, {int(prime.max())}]")
        return y[:, :n_labels], prime

    def get_cond(self, z_conds: list[torch.Tensor] | None, y: torch.Tensor | None):
        """-> (x_cond [N, n_ctx or 1, width] or None, y_cond [N, 1, width] or None, lyric tokens)."""
        labels, prime = self.split_labels(y)
        y_cond, timing = self.y_emb(labels) if self.hps.labels else (None, None)
        if self.x_cond:
            if not z_conds:
                raise ValueError(f"the level-{self.level} upsampler needs the codes of level {self.level + 1}")
            z_up = z_conds[0]
            self.check_codes(z_up, self.hps.n_ctx // self.cond_downsample, self.bins, f"level-{self.level + 1} codes")
            x_cond = self.conditioner_blocks[0](z_up)
        else:
            x_cond = timing
        return x_cond, y_cond, prime

    def encoder_states(self, prime: torch.Tensor, fp16: bool = False) -> torch.Tensor:
        """Lyric tokens [N, n_tokens] -> encoder_kv [N, n_tokens, width] (5b_lyrics)."""
        acts = self.prime_prior(prime, fp16=fp16)
        return self.prime_state_ln(self.prime_state_proj(acts))

    def lm_inputs(self, z: torch.Tensor, z_conds: list[torch.Tensor] | None, y: torch.Tensor | None,
                  fp16: bool = False):
        """What this level's LM reads for codes ``z`` [N, t] (t ≤ n_ctx): (tokens, x_cond,
        y_cond, encoder_kv, lyric tokens). With a single encoder-decoder (1b_lyrics) the tokens
        are the lyrics, then the codes shifted past the lyric vocabulary, and the conditioning
        is zero over the lyrics."""
        x_cond, y_cond, prime = self.get_cond(z_conds, y)
        encoder_kv = self.encoder_states(prime, fp16) if self.separate_encoder else None
        tokens = z
        if self.hps.single_enc_dec:
            tokens = torch.cat([prime, z + self.hps.n_vocab], dim=1)  # [N, n_tokens + t]
            if x_cond is not None:
                x_cond = torch.cat([x_cond.new_zeros(z.shape[0], self.n_tokens, x_cond.shape[-1]), x_cond], dim=1)
        return tokens, x_cond, y_cond, encoder_kv, prime

    # -- training forward ------------------------------------------------------------------------
    def z_forward(self, z: torch.Tensor, z_conds: list[torch.Tensor] | None = None, y: torch.Tensor | None = None,
                  fp16: bool = False, get_preds: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.check_codes(z, self.hps.n_ctx, self.bins, f"level-{self.level} codes")
        tokens, x_cond, y_cond, encoder_kv, prime = self.lm_inputs(z, z_conds, y, fp16)
        if self.separate_encoder:
            prime_loss = bits(self.prime_x_out(encoder_kv), prime)
            gen_loss, logits = self.prior(tokens, x_cond, y_cond, encoder_kv, fp16=fp16)
        elif self.hps.single_enc_dec:
            (prime_loss, gen_loss), logits = self.prior(tokens, x_cond, y_cond, fp16=fp16, get_sep_loss=True)
        else:
            prime_loss = torch.zeros((), device=z.device)
            gen_loss, logits = self.prior(tokens, x_cond, y_cond, fp16=fp16)
        total = self.n_tokens + self.hps.n_ctx
        loss = (self.hps.prime_loss_fraction * prime_loss * self.n_tokens / total
                + gen_loss * self.hps.n_ctx / total)
        metrics = dict(bpd=gen_loss.detach(), gen_loss=gen_loss.detach(), prime_loss=prime_loss.detach())
        if get_preds:
            metrics["preds"] = logits.detach()
        return loss, metrics

    def forward(self, zs, y: torch.Tensor | None = None, fp16: bool = False, get_preds: bool = False):
        """Training forward on codes: ``zs`` is this level's codes [N, n_ctx] or a list
        ``[z, z_cond]`` (an upsampler also gets the level above's codes [N, n_ctx / 4]).

        Returns ``(loss, metrics)`` as the original: loss in bits per token (with the lyric loss
        weighted in for lyrics models); metrics ``bpd``, ``gen_loss``, ``prime_loss`` (and
        ``preds``, the logits, with ``get_preds``)."""
        z, *z_conds = zs if isinstance(zs, (list, tuple)) else [zs]
        return self.z_forward(z, z_conds, y, fp16, get_preds)

    def hidden_states(self, z: torch.Tensor, layers, y: torch.Tensor | None = None,
                      z_conds: list[torch.Tensor] | None = None, dtype: torch.dtype | None = None
                      ) -> dict[int, torch.Tensor]:
        """The LM's hidden states after the blocks ``layers`` (numbered from 1, any order) for
        codes z [N, t], 1 <= t <= n_ctx: {layer: [N, t', width]}, t' = t (plus the lyric tokens
        for a single encoder-decoder). The input is the training forward's: ``x_emb(z)`` shifted
        right by one with the label embedding at position 0, plus ``pos_emb[:t]`` and the
        conditioning. Every layer is causal, so the first t positions are those of any longer
        sequence that starts with z. ``dtype`` (e.g. bf16) runs the blocks in it, LayerNorm and
        softmax staying fp32; the states come back in that dtype."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not 1 <= z.shape[1] <= self.hps.n_ctx:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"codes must be [N, t] with 1 <= t <= {self.hps.n_ctx} (n_ctx), got {got}")
        self.check_codes(z, z.shape[1], self.bins, f"level-{self.level} codes")
        tokens, x_cond, y_cond, encoder_kv, _ = self.lm_inputs(z, z_conds, y)
        h = self.prior.embed(tokens, x_cond, y_cond)  # [N, t', width] fp32
        if encoder_kv is not None and dtype is not None:
            encoder_kv = encoder_kv.to(dtype)
        return self.prior.transformer.states(h if dtype is None else h.to(dtype), layers, encoder_kv)

    def lyric_attention(self, z: torch.Tensor, y: torch.Tensor, layer: int, head: int) -> torch.Tensor:
        """How the music attends to the lyrics at block ``layer`` (from 0), head ``head``, in the
        teacher-forced forward on codes z [N, n_ctx] with labels y: fp32 [N, n_ctx, n_tokens].
        The layer must see the lyrics: a cross-attention layer (a separate lyric encoder, as
        5b_lyrics), or a prime layer of a single encoder-decoder (1b_lyrics), whose music queries
        × lyric keys are kept, as the original keeps them."""
        if not self.n_tokens:
            raise ValueError("this prior takes no lyrics: there is nothing to align")
        kind = self.prior.transformer.kinds[layer] if 0 <= layer < len(self.prior.transformer.kinds) else None
        sees = Kind.CROSS if self.separate_encoder else Kind.PRIME
        if kind != sees:
            raise ValueError(f"layer {layer} is a {kind.name.lower() if kind is not None else 'missing'} layer; the "
                             f"lyrics are seen by this prior's {sees.name.lower()} layers "
                             f"{[i for i, k in enumerate(self.prior.transformer.kinds) if k == sees]}")
        self.check_codes(z, self.hps.n_ctx, self.bins, f"level-{self.level} codes")
        tokens, x_cond, y_cond, encoder_kv, _ = self.lm_inputs(z, None, y)
        h = self.prior.embed(tokens, x_cond, y_cond)
        w = self.prior.transformer.attention_weights(h, layer, head, encoder_kv)  # [N, L, Lk]
        if self.hps.single_enc_dec:  # music queries × lyric keys
            w = w[:, self.n_tokens :, : self.n_tokens]
        return w

    def get_logits(self, zs, y: torch.Tensor | None = None, fp16: bool = False) -> torch.Tensor:
        """Logits [N, L, bins] of the training forward (L includes the lyrics for 1b_lyrics)."""
        return self.forward(zs, y, fp16, get_preds=True)[1]["preds"]


def make_prior(name_or_hparams: str | PriorHparams = "prior_5b", vqvae=None, device=None) -> SimplePrior:
    """A prior with freshly initialised weights.

    Args:
        name_or_hparams: a preset name (``prior_5b``, ``prior_5b_lyrics``, ``prior_1b_lyrics``,
            ``upsampler_level_0``, ``upsampler_level_1``, ``tiny_prior``, ...) or a
            :class:`~jukebox_fast.hparams.PriorHparams`.
        vqvae: the VQ-VAE the prior codes for (a :class:`~jukebox_fast.models.VQVAE` or
            :class:`~jukebox_fast.hparams.VQVAEHparams`); default: the preset the hparams name.
        device: where to build it; also works inside ``with torch.device("meta"):``.
    """
    hps = hparams_mod.get(name_or_hparams) if isinstance(name_or_hparams, str) else name_or_hparams
    if not isinstance(hps, PriorHparams):
        raise ValueError(f"make_prior needs prior hparams, got {type(hps).__name__}")
    if vqvae is None:
        vqvae_hps = hparams_mod.get(hps.vqvae)
    else:
        vqvae_hps = vqvae if isinstance(vqvae, VQVAEHparams) else vqvae.hps
    if device is None:
        return SimplePrior(hps, vqvae_hps)
    with torch.device(device):
        return SimplePrior(hps, vqvae_hps)
