"""The prior's transformer: pre-LN layers of factorised attention and an MLP, and the
autoregressive wrapper around them (``ConditionalAutoregressive2D`` in the original).

Activations are [N, L, width]. Attribute names follow the original (``_attn_mods``, ``c_attn``,
``c_enc_kv``, ``c_proj``, ``c_fc``, ``ln_0``, ``ln_1``, ``x_emb``, ``pos_emb.pos_emb``,
``start_token``, ``x_out``), so released checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops import AttentionPattern, Kind, layer_kinds, prime_window

__all__ = ["Conv1D", "LayerNorm", "MLP", "FactoredAttention", "ResAttnBlock", "Transformer",
           "PositionEmbedding", "ConditionalAutoregressive2D", "cast_projections", "WEIGHT_FORMS", "weights_in",
           "quantize_int8"]


class Conv1D(nn.Module):
    """The original's projection: weight ``w`` stored [in, out], bias ``b`` [out]; both are cast
    to the activation dtype on every call (so fp16-stored weights run in fp32 when asked). An int8
    ``w`` (:func:`quantize_int8`) has one scale per output column, ``w_scale`` [out], and is
    dequantised for each call, one layer at a time."""

    def __init__(self, n_in: int, n_out: int, zero_out: bool = False, init_scale: float = 1.0):
        super().__init__()
        w = torch.empty(n_in, n_out)
        if w.device.type == "meta":
            pass  # nothing to fill (a model built for its shapes; meta's normal_ takes milliseconds each)
        elif zero_out:
            nn.init.zeros_(w)
        else:
            nn.init.normal_(w, std=0.02 * init_scale)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("w_scale", None, persistent=False)  # [out] fp32 when w is int8

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """w [in, out] in ``dtype`` (dequantised when int8)."""
        w = self.w.to(dtype)
        return w if self.w_scale is None else w * self.w_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.b.to(x.dtype), x.reshape(-1, x.shape[-1]), self.weight(x.dtype))  # [N·L, out]
        return out.view(*x.shape[:-1], out.shape[-1])


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric weight-only int8 of a Conv1D weight [in, out]: one fp32 scale per output column
    (its largest magnitude / 127), values rounded to [-127, 127]. Returns (int8 [in, out], scale [out])."""
    w = w.detach()
    if w.device.type == "meta":
        return torch.empty(w.shape, dtype=torch.int8, device="meta"), torch.empty(w.shape[1], device="meta")
    # By blocks of rows, so that the temporaries stay small beside the weight (loading converts a
    # file tensor by tensor and holds only one of them).
    rows = max(1, (1 << 20) // max(1, w.shape[1]))
    scale = torch.zeros(w.shape[1], dtype=torch.float32, device=w.device)
    for block in w.split(rows):
        torch.maximum(scale, block.abs().amax(dim=0).float(), out=scale)
    scale.div_(127.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero column stays zero
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    for block, out in zip(w.split(rows), q.split(rows)):
        out.copy_(torch.round(block.float() / scale).clamp_(-127, 127))
    return q, scale


def _to_int8(m: "Conv1D") -> None:
    q, scale = quantize_int8(m.w)
    m.w = nn.Parameter(q, requires_grad=False)
    m.w_scale = scale


WEIGHT_FORMS = {"stored": None, "16-bit": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def cast_projections(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Every Conv1D weight of ``model`` in 16 bits, in place: ``dtype``, or (None) fp16 weights
    kept and the others bf16 (fp32's range: no overflow). The original keeps the 5b priors'
    weights in fp16 so; the memory plan's "16-bit weights" do it to any prior, in the decode
    step's dtype where that is 16-bit (so the step reads them as they are, with no copy)."""
    for m in model.modules():
        if isinstance(m, Conv1D) and m.w.element_size() > 2:
            m.w.data = m.w.data.to(dtype or torch.bfloat16)
        elif isinstance(m, Conv1D) and dtype is not None:
            m.w.data = m.w.data.to(dtype)
    return model


def weights_in(model: nn.Module, form: str) -> nn.Module:
    """``model`` with its projection weights in ``form`` (a key of ``WEIGHT_FORMS``: "stored"
    leaves them, "16-bit" is :func:`cast_projections` with no dtype, "bf16"/"fp16" that dtype,
    "int8" :func:`quantize_int8` of each), in place."""
    if form not in WEIGHT_FORMS:
        raise ValueError(f"weights is one of {', '.join(map(repr, WEIGHT_FORMS))}, got {form!r}")
    if form == "int8":  # weight-only int8, per output column (embeddings, LayerNorms and biases stay)
        for m in model.modules():
            if isinstance(m, Conv1D) and m.w.dtype != torch.int8:
                _to_int8(m)
        return model
    return model if form == "stored" else cast_projections(model, WEIGHT_FORMS[form])


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activation dtype, returned in that dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    def __init__(self, n_in: int, n_state: int, resid_dropout: float = 0.0, zero_out: bool = False,
                 init_scale: float = 1.0):
        super().__init__()
        self.c_fc = Conv1D(n_in, n_state, init_scale=init_scale)
        self.c_proj = Conv1D(n_state, n_in, zero_out, init_scale)
        self.resid_dropout = resid_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.c_proj(quick_gelu(self.c_fc(x))), self.resid_dropout, self.training)


class FactoredAttention(nn.Module):
    """Multi-head attention restricted to one Jukebox pattern; the attention itself is the op
    :func:`jukebox_fast.ops.sparse_attention`."""

    def __init__(self, n_in: int, n_state: int, n_head: int, pattern: AttentionPattern,
                 resid_dropout: float = 0.0, zero_out: bool = False, init_scale: float = 1.0):
        super().__init__()
        self.n_state, self.n_head, self.pattern = n_state, n_head, pattern
        if pattern.cross:  # cross-attention: q from x, k and v from the encoder states
            self.c_attn = Conv1D(n_in, n_state, init_scale=init_scale)
            self.c_enc_kv = Conv1D(n_in, n_state * 2, init_scale=init_scale)
        else:
            self.c_attn = Conv1D(n_in, n_state * 3, init_scale=init_scale)
        self.c_proj = Conv1D(n_state, n_in, zero_out, init_scale)
        self.resid_dropout = resid_dropout

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.n_head, -1).transpose(1, 2)  # [N, H, L, d]

    def _qkv(self, x: torch.Tensor, encoder_kv: torch.Tensor | None):
        """q [N, H, L, d], k and v [N, H, Lk, d], and the scale of their product."""
        h = self.c_attn(x)
        if self.pattern.cross:
            if encoder_kv is None:
                raise ValueError("a cross-attention layer needs the lyric encoder's states (encoder_kv)")
            q = h
            k, v = self.c_enc_kv(encoder_kv.to(x.dtype)).chunk(2, dim=2)
        else:
            q, k, v = h.chunk(3, dim=2)  # contiguous thirds q | k | v
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        d = q.shape[-1]
        if self.training:  # the original scales both sides by d^(-1/4) when training
            return q * d**-0.25, k * d**-0.25, v, 1.0
        return q, k, v, 1.0 / math.sqrt(d)

    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v, scale = self._qkv(x, encoder_kv)
        a = ops.sparse_attention(q, k, v, self.pattern, scale=scale)  # [N, H, L, d]
        a = a.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.n_state)
        return F.dropout(self.c_proj(a), self.resid_dropout, self.training)

    def weights(self, x: torch.Tensor, head: int, encoder_kv: torch.Tensor | None = None) -> torch.Tensor:
        """Head ``head``'s attention probabilities for input x: fp32 [N, L, Lk]."""
        q, k, _, scale = self._qkv(x, encoder_kv)
        return ops.attention_weights(q[:, head : head + 1], k[:, head : head + 1], self.pattern, scale)[:, 0]


class ResAttnBlock(nn.Module):
    """Pre-LN layer: ``a = attn(ln_0(x))``, ``m = mlp(ln_1(x + a))``, ``x + a + m``."""

    def __init__(self, width: int, n_head: int, pattern: AttentionPattern, m_attn: float, m_mlp: float,
                 resid_dropout: float = 0.0, zero_out: bool = False, init_scale: float = 1.0,
                 res_scale: float = 1.0):
        super().__init__()
        self.attn = FactoredAttention(width, int(m_attn * width), n_head, pattern, resid_dropout,
                                      zero_out, init_scale)
        self.ln_0 = LayerNorm(width)
        self.mlp = MLP(width, int(m_mlp * width), resid_dropout, zero_out, init_scale)
        self.ln_1 = LayerNorm(width)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.ln_0(x), encoder_kv)
        m = self.mlp(self.ln_1(x + a))
        if self.res_scale == 1.0:
            return x + a + m
        return x + self.res_scale * (a + m)


class Transformer(nn.Module):
    """``depth`` layers whose attention types cycle as ``attn_order`` says."""

    def __init__(self, width: int, length: int, n_head: int, depth: int, attn_order: int, blocks: int,
                 m_attn: float = 0.25, m_mlp: float = 1.0, resid_dropout: float = 0.0, zero_out: bool = False,
                 init_scale: float = 1.0, res_scale: bool = False, prime_len: int | None = None):
        super().__init__()
        block_ctx = length // blocks
        prime = prime_window(prime_len, blocks) if prime_len is not None else 0
        self.kinds = layer_kinds(attn_order, depth)
        self._attn_mods = nn.ModuleList(
            ResAttnBlock(width, n_head, AttentionPattern(kind, block_ctx, prime), m_attn, m_mlp, resid_dropout,
                         zero_out or kind == Kind.CROSS, init_scale, 1.0 / depth if res_scale else 1.0)
            for kind in self.kinds
        )

    def forward(self, x: torch.Tensor, encoder_kv: torch.Tensor | None = None, fp16: bool = False) -> torch.Tensor:
        """[N, L, width] -> [N, L, width]; with ``fp16`` the layers run in half precision and the
        result comes back in fp32, as in the original."""
        if len(self._attn_mods) < len(self.kinds):
            raise ValueError(f"this transformer holds only its first {len(self._attn_mods)} of {len(self.kinds)} "
                             "blocks (loaded with layers=...): it gives hidden states (states()), not outputs")
        if fp16:
            x = x.half()
        for layer in self._attn_mods:
            x = layer(x, encoder_kv if layer.attn.pattern.cross else None)
        return x.float() if fp16 else x

    def states(self, x: torch.Tensor, layers, encoder_kv: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """The hidden state after each block in ``layers`` (numbered from 1; any order, repeats
        allowed) for input x [N, L, width]: {layer: [N, L, width]}. Only blocks up to the deepest
        one asked for run."""
        wanted = sorted({int(n) for n in layers})
        if not wanted or wanted[0] < 1 or wanted[-1] > len(self._attn_mods):
            raise ValueError(f"layers are numbered 1..{len(self._attn_mods)} here, got {list(layers)}")
        out = {}
        for i, layer in enumerate(self._attn_mods[: wanted[-1]], start=1):
            x = layer(x, encoder_kv if layer.attn.pattern.cross else None)
            if i in wanted:
                out[i] = x
        return out

    def attention_weights(self, x: torch.Tensor, layer: int, head: int,
                          encoder_kv: torch.Tensor | None = None) -> torch.Tensor:
        """Head ``head`` of block ``layer`` (numbered from 0, as the original's
        ``alignment_layer``): its attention probabilities for input x, fp32 [N, L, Lk]. Only the
        blocks before it run."""
        if not 0 <= layer < len(self._attn_mods) or not 0 <= head < self._attn_mods[0].attn.n_head:
            raise ValueError(f"layer must lie in 0..{len(self._attn_mods) - 1} and head in "
                             f"0..{self._attn_mods[0].attn.n_head - 1}, got layer {layer}, head {head}")
        for block in self._attn_mods[:layer]:
            x = block(x, encoder_kv if block.attn.pattern.cross else None)
        block = self._attn_mods[layer]
        return block.attn.weights(block.ln_0(x), head, encoder_kv if block.attn.pattern.cross else None)

    def keep_first(self, n: int) -> None:
        """Drop every block after the first ``n`` (a model loaded for hidden states only)."""
        self._attn_mods = self._attn_mods[:n]


class PositionEmbedding(nn.Module):
    """A learned [length, width] table, ``pos_emb``."""

    def __init__(self, length: int, width: int, init_scale: float = 1.0):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.empty(length, width).normal_(std=0.01 * init_scale))

    def forward(self) -> torch.Tensor:
        return self.pos_emb


class ConditionalAutoregressive2D(nn.Module):
    """Token embedding, shift by one, start embedding, conditioning, transformer, logits.

    ``y_cond=False`` gives a learned ``start_token`` (the lyric encoder); ``only_encode`` drops
    ``x_out`` and returns the transformer's activations. Without ``merged_decoder`` the output
    projection is tied to ``x_emb`` and the conditioning is added again after the transformer.
    """

    def __init__(self, length: int, bins: int, width: int, depth: int, heads: int, attn_order: int, blocks: int,
                 *, y_cond: bool = True, merged_decoder: bool = False, only_encode: bool = False,
                 m_attn: float = 0.25, m_mlp: float = 1.0, emb_dropout: float = 0.0, resid_dropout: float = 0.0,
                 zero_out: bool = False, init_scale: float = 1.0, res_scale: bool = False,
                 prime_len: int | None = None):
        super().__init__()
        self.length, self.bins, self.width = length, bins, width
        self.y_cond, self.only_encode, self.prime_len = y_cond, only_encode, prime_len
        self.emb_dropout = emb_dropout
        if not y_cond:
            self.start_token = nn.Parameter(torch.empty(1, width).normal_(std=0.01 * init_scale))
        self.x_emb = nn.Embedding(bins, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.pos_emb = PositionEmbedding(length, width, init_scale)
        self.transformer = Transformer(width, length, heads, depth, attn_order, blocks, m_attn, m_mlp,
                                       resid_dropout, zero_out, init_scale, res_scale, prime_len)
        self.add_cond_after_transformer = not merged_decoder
        if not only_encode:
            self.x_out = nn.Linear(width, bins, bias=False)
            if not merged_decoder:
                self.x_out.weight = self.x_emb.weight

    def embed(self, x: torch.Tensor, x_cond: torch.Tensor | None, y_cond: torch.Tensor | None) -> torch.Tensor:
        """Tokens [N, L] -> transformer input [N, L, width]: shifted right by one, the start
        embedding at position 0, plus positions and conditioning."""
        n, length = x.shape
        h = self.x_emb(x)  # [N, L, width]
        start = y_cond.view(n, 1, self.width) if self.y_cond else self.start_token.expand(n, 1, self.width)
        h = torch.cat([start.to(h.dtype), h[:, :-1]], dim=1)
        h = F.dropout(h, self.emb_dropout, self.training)
        # L < length: the first L positions (hidden states of a short clip; the layers are causal).
        h = h + F.dropout(self.pos_emb()[:length], self.emb_dropout, self.training)
        if x_cond is not None and x_cond.shape[1] > 1:
            x_cond = x_cond[:, :length]
        return h if x_cond is None else h + x_cond

    def forward(self, x: torch.Tensor, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
                encoder_kv: torch.Tensor | None = None, fp16: bool = False, get_sep_loss: bool = False):
        """Tokens x [N, L] -> (loss in bits per token, logits [N, L, bins]); with ``get_sep_loss``
        the loss is (first ``prime_len`` positions, the rest). ``only_encode``: the activations."""
        h = self.transformer(self.embed(x, x_cond, y_cond), encoder_kv, fp16)
        if self.add_cond_after_transformer and x_cond is not None:
            h = h + x_cond
        if self.only_encode:
            return h
        logits = self.x_out(h)  # [N, L, bins]
        if get_sep_loss:
            p = self.prime_len
            loss = (bits(logits[:, :p], x[:, :p]), bits(logits[:, p:], x[:, p:]))
        else:
            loss = bits(logits, x)
        return loss, logits


def bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits per token: logits [N, L, V], targets [N, L]."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)) / math.log(2.0)
