"""Incremental decoding of a :class:`ConditionalAutoregressive2D`: prefill, then one token a step.

Every attention layer gets a static KV cache shaped by its pattern
(:class:`~jukebox_fast.ops.decode.CacheLayout`: a block-local layer keeps one block, not the
song), preallocated once and written in place by position. Cross-attention keys (the lyric
encoder's states) are projected once, when the decoder is made.

``prefill(tokens)`` runs the known prefix through the ordinary forward (one pass of
``sparse_attention`` per layer) and keeps each layer's keys and values. ``step(token)`` then
processes one position: embeddings here, the layers in one call of the op
:func:`~jukebox_fast.ops.decode_layers`, the logits in one of :func:`~jukebox_fast.ops.step_logits`
(both bound once per decoder). The position lives in a device tensor, every shape is
fixed, and nothing is read back to the host, so on a GPU the step can be captured in a CUDA graph
(:meth:`IncrementalDecoder.capture`) and replayed.
"""
from __future__ import annotations

import torch

from .. import ops
from .transformer import ConditionalAutoregressive2D, FactoredAttention

__all__ = ["IncrementalDecoder"]


class IncrementalDecoder:
    """Token-by-token decoding of ``ar`` for ``n`` samples with static per-layer KV caches.

    Args:
        ar: the level's transformer LM (``prior.prior``), in eval mode.
        n: samples decoded together.
        x_cond: conditioning added at every position, [N, L, width] (upper level) or
            [N, 1, width] (timing); None for none.
        y_cond: the start embedding [N, 1, width] (label models); None uses ``start_token``.
        encoder_kv: the lyric encoder's states [N, n_tokens, width] (5b_lyrics).
        dtype: the transformer body's dtype (default: bf16 on a GPU, else the embeddings', fp32);
            fp16/bf16 runs the body and keeps the caches in half precision, with embeddings,
            logits, LayerNorm statistics and softmax in fp32, as the original samples with
            ``fp16=True``. The layers' weights are put in the form the decode step reads once,
            when the op binds the stack (:func:`~jukebox_fast.ops.bind_decode_layers`), never
            per step.
    """

    def __init__(self, ar: ConditionalAutoregressive2D, n: int, x_cond: torch.Tensor | None = None,
                 y_cond: torch.Tensor | None = None, encoder_kv: torch.Tensor | None = None,
                 dtype: torch.dtype | None = None):
        if ar.training:
            raise ValueError("incremental decoding needs the model in eval mode (call .eval())")
        self.ar, self.n = ar, n
        emb = ar.x_emb.weight
        self.device = emb.device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else emb.dtype)
        self.x_cond, self.y_cond = x_cond, y_cond
        self.position = torch.zeros(1, dtype=torch.int64, device=self.device)  # the next position
        self.caches = [self._cache(layer, encoder_kv) for layer in ar.transformer._attn_mods]
        self.stack = ops.DecodeStack(self.caches)
        self._graph = None
        # The op checks the stack, chooses its implementation and readies its state once: a step
        # then pays for no checks or choice in Python. x stands in for a step's rows.
        x = torch.zeros(self.n, self.ar.width, dtype=self.dtype, device=self.device)
        self._layers = ops.bind_decode_layers(x, self.stack, self.position)
        self._x_out = ar.x_out.weight.detach()  # [bins, width]
        self._head = ops.bind_step_logits(x.to(emb.dtype), self._x_out)

    def _cache(self, layer, encoder_kv: torch.Tensor | None) -> ops.DecodeLayer:
        """The layer's weights and its static caches [N, H, slots, d], preallocated at the size
        its pattern needs; a cross-attention layer's are the lyric states' keys and values."""
        attn = layer.attn
        cross = attn.pattern.cross
        if cross and encoder_kv is None:
            raise ValueError("this model has cross-attention layers: pass the lyric encoder's states")
        layout = ops.CacheLayout(attn.pattern, self.ar.length, encoder_kv.shape[1] if cross else 0)
        shape = (self.n, attn.n_head, layout.size, attn.n_state // attn.n_head)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if cross:
            with torch.no_grad():
                ek, ev = attn.c_enc_kv(encoder_kv.to(self.dtype)).chunk(2, dim=2)
            k.copy_(attn._heads(ek))
            v.copy_(attn._heads(ev))
        weights = tuple(layer.get_parameter(name).detach() for name in ops.WEIGHT_NAMES)  # as the model holds them
        scales = tuple(layer.get_submodule(name).w_scale for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                      "mlp.c_proj"))  # int8 weights' (else None)
        return ops.DecodeLayer(weights, k, v, layout, attn.n_head, layer.res_scale, layer.ln_0.eps, scales)

    # -- pieces shared by prefill and step ----------------------------------------------------------
    def _cond(self, positions: torch.Tensor) -> torch.Tensor | None:
        if self.x_cond is None:
            return None
        if self.x_cond.shape[1] == 1:
            return self.x_cond
        return self.x_cond.index_select(1, positions)  # [N, len(positions), width]

    def _out_rows(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The transformer's output as x_out takes it (plus the conditioning, where it is added last)."""
        h = h.to(self.ar.x_emb.weight.dtype)
        if self.ar.add_cond_after_transformer and cond is not None:
            h = h + cond
        return h

    @staticmethod
    def _residual(layer, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        m = layer.mlp(layer.ln_1(x + a))
        return x + a + m if layer.res_scale == 1.0 else x + layer.res_scale * (a + m)

    # -- prefill ------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the known prefix ``tokens`` [N, c] (positions 0..c−1) in one pass and fill the
        caches. Returns the logits at those positions [N, c, bins] (row t predicts token t);
        the next :meth:`step` takes tokens[:, -1] and predicts token c."""
        n, c = tokens.shape
        if c == 0:
            return torch.zeros(n, 0, self.ar.bins, device=self.device)
        if c > self.ar.length:
            raise ValueError(f"a prefix of {c} tokens does not fit this model's context of {self.ar.length}")
        positions = torch.arange(c, device=self.device)
        h = self.ar.x_emb(tokens)  # [N, c, width]
        start = self._start()
        h = torch.cat([start.to(h.dtype), h[:, :-1]], dim=1) + self.ar.pos_emb()[:c]
        cond = self._cond(positions)
        if cond is not None:
            h = h + cond
        x = h.to(self.dtype)
        for layer, cache in zip(self.ar.transformer._attn_mods, self.caches):
            x = self._residual(layer, x, self._prefill_attn(layer.attn, layer.ln_0(x), cache, positions))
        self.position.fill_(c)
        return self.ar.x_out(self._out_rows(x, cond))

    def _prefill_attn(self, attn: FactoredAttention, x: torch.Tensor, cache: ops.DecodeLayer, positions) -> torch.Tensor:
        h = attn.c_attn(x)
        if attn.pattern.cross:
            q, k, v = attn._heads(h), cache.k, cache.v
        else:
            q, k, v = (attn._heads(t) for t in h.chunk(3, dim=2))  # [N, H, c, d]
            kept = cache.layout.kept(x.shape[1])
            idx = positions[kept.start : kept.stop]
            cache.write(k[:, :, kept.start : kept.stop], v[:, :, kept.start : kept.stop], idx)
        a = ops.sparse_attention(q, k, v, attn.pattern)  # [N, H, c, d]
        return attn.c_proj(a.transpose(1, 2).reshape(x.shape[0], x.shape[1], attn.n_state))

    def _start(self) -> torch.Tensor:
        if self.ar.y_cond:
            return self.y_cond.view(self.n, 1, self.ar.width)
        return self.ar.start_token.expand(self.n, 1, self.ar.width)

    # -- one token ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        """Process the next position with ``token`` [N] (the token before it; None at position
        0, which takes the start embedding) and return the logits [N, bins] for that position.
        With a captured graph this replays it."""
        if token is None:  # position 0: the start embedding (once per window, never captured)
            return self._step(self._start())
        if self._graph is not None:
            self._static_token.copy_(token)
            self._graph.replay()
            return self._static_logits.clone()
        return self._step(self.ar.x_emb(token).unsqueeze(1))

    def _step(self, h: torch.Tensor) -> torch.Tensor:
        p = self.position
        h = h + self.ar.pos_emb().index_select(0, p)
        cond = self._cond(p)
        if cond is not None:
            h = h + cond
        x = self._layers(h[:, 0].to(self.dtype), self.stack, p)  # [N, width]
        self.position.add_(1)
        return self._head(self._out_rows(x, None if cond is None else cond[:, 0]), self._x_out)  # [N, bins]

    # -- CUDA graphs --------------------------------------------------------------------------------
    def capture(self) -> None:
        """Capture one decode step in a CUDA graph; later :meth:`step` calls replay it. Call
        after the first step (or a prefill), at a position where the next step is valid."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device; on the CPU steps run eagerly")
        self._static_token = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        position = self.position.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (compiles kernels, settles the allocator)
            for _ in range(2):
                self._step(self.ar.x_emb(self._static_token).unsqueeze(1))
                self.position.copy_(position)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._static_logits = self._step(self.ar.x_emb(self._static_token).unsqueeze(1))
        self.position.copy_(position)
        self._graph = graph

