"""Memory plans: what a sampling or embedding run will hold, phase by phase, before any weight loads.

A plan is made from the models built on the meta device (no memory, the real module tree and
dtypes) and from the run's own code traced on meta tensors: :class:`Tracker` counts every tensor
the run's ops allocate and frees it when the run drops it, so a sampling window's peak (its KV
caches, as the decoder allocates them, the prefill's activations, one step) and the VQ-VAE
decode's peak come from what the code does, not from formulas that could drift from it. The
implementations traced are the ones that run on the CPU, and on a GPU until a recorded benchmark
moves dispatch to a kernel (:mod:`jukebox_fast.measured`): the torch reference's attention and
the decode step's weight preparation.

The run's order decides the peak: weights held at once (every level loaded, then sampled) or in
turn (each prior loaded for its level and freed after it: priors given as files), plus the
codes, plus the phase's own transient peak. :func:`choose` tries the ways to run from the
fastest to the smallest (16-bit weights, 16-bit caches, fewer samples decoded together) and
returns the first whose peak fits; nothing fits: a :class:`MemoryPlanError` naming the largest
items.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import dispatch
from .devices import size_text

__all__ = ["Tracker", "Choice", "Item", "Phase", "Plan", "MemoryPlanError", "parse_size", "model_bytes",
           "meta_prior", "plan_sampling", "plan_generate", "plan_embedding", "plan_embed", "training_step_peak",
           "choose"]

class MemoryPlanError(ValueError):
    """Nothing the planner can choose fits the memory given."""


def parse_size(text: str | int | float) -> int:
    """Bytes from ``16GB``, ``16 GiB``, ``500MB``, ``2e9`` (GB and GiB both mean 2**30: cards are sold so)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b?)\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"a memory size is a number with an optional unit (16GB, 500MB, 2e9), got {text!r}")
        value = float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


# -- counting what code allocates ------------------------------------------------------------------
class Tracker(TorchDispatchMode):
    """Counts the bytes of every storage the traced ops allocate while they are alive.

    A storage is counted once however many views share it, from the op that made it until the
    last tensor seen on it is gone. Storages of ``known`` tensors (weights that exist already)
    are never counted. ``peak`` is the most that was alive at once.
    """

    def __init__(self, known: Sequence[torch.Tensor] = (), device: str | torch.device = "cpu"):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage -> tensors alive on it
        self._known = {t.untyped_storage()._cdata for t in known}
        self._cpu = torch.device(device).type == "cpu"

    def _drop(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._known:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._drop, key, storage.nbytes())
        if self._cpu and func is torch.ops.aten.convolution.default:
            self.peak = max(self.peak, self.live + _cpu_convolution_workspace(args, out))
        return out


def _cpu_convolution_workspace(args, out: torch.Tensor) -> int:
    """What a CPU convolution holds beside its input and output while it runs (oneDNN's copies in
    its own layout), measured with torch 2.13 on AVX-512 and AVX2 machines for the VQ-VAE's
    shapes: the larger of input and output for a convolution, twice the output for a
    transposed one. Allocated inside the op, so no traced tensor shows it."""
    x, transposed = args[0], args[6]
    nbytes = out.numel() * out.element_size()
    return 2 * nbytes if transposed else max(nbytes, x.numel() * x.element_size())


def traced_peak(run: Callable[[], object], known: Sequence[torch.Tensor], device: str | torch.device = "cpu") -> int:
    """The most bytes ``run`` (on meta tensors) holds at once beyond ``known``, on ``device``."""
    with torch.no_grad(), Tracker(known, device) as tracker:
        run()
    return tracker.peak


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers as they sit in memory (tied tensors once)."""
    seen = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _loading_extra(stored: torch.nn.Module, loaded: torch.nn.Module) -> int:
    """What loading holds beside the tensors it has converted (at most the loaded model), at its
    worst: one tensor of the file (``stored`` dtypes) and its conversion (``loaded`` dtypes)
    (``checkpoint.load_prior`` reads the file one tensor at a time)."""
    before = stored.state_dict()
    return max((before[k].numel() * before[k].element_size()
                + (t.numel() * t.element_size() if t.dtype != before[k].dtype else 0)
                for k, t in loaded.state_dict().items()), default=0)


# -- the ways to run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """How a run spends memory.

    in_turn: each prior is loaded for its level and freed after it (else all are held at once).
    weights: "stored" (as the checkpoint keeps them), "16-bit" (projection matrices in 16 bits:
        the caches' dtype where that is 16-bit, else fp16 kept and fp32 made bf16; see
        :meth:`weight_form`) or "int8" (weight-only int8, one scale per output column).
    caches: the decoder's body and KV-cache dtype; None: its default (bf16 on a GPU, else fp32).
    batch: most samples one window decodes together (the original's max_batch_size).
    """

    in_turn: bool = False
    weights: str = "stored"
    caches: torch.dtype | None = None
    batch: int | None = None

    def weight_form(self, device: str | torch.device) -> str:
        """How a prior is loaded for this choice (``load_prior``'s ``weights``): 16-bit weights
        are in the caches' dtype where that is 16-bit, so the decode step reads them with no copy."""
        if self.weights in ("stored", "int8"):
            return self.weights
        caches = self.caches or (torch.bfloat16 if torch.device(device).type == "cuda" else None)
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(caches, "16-bit")

    def describe(self) -> str:
        parts = ["levels in turn" if self.in_turn else "all levels held at once",
                 {"16-bit": "16-bit weights", "int8": "int8 weights"}.get(self.weights, "weights as stored")]
        if self.caches is not None:
            parts.append(f"{str(self.caches).replace('torch.', '')} caches")
        if self.batch is not None:
            parts.append(f"{self.batch} sample(s) per window pass")
        return ", ".join(parts)


# -- the plan ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    name: str
    nbytes: int


@dataclass
class Phase:
    """One stretch of the run and what is alive during it (its peak)."""

    name: str
    items: list[Item]

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.items)


@dataclass
class Plan:
    """Bytes by phase for one way to run (:class:`Choice`) on one device."""

    choice: Choice
    device: torch.device
    phases: list[Phase] = field(default_factory=list)
    label: str | None = None  # how the run spends memory, in words (default: the choice's)

    def describe(self) -> str:
        return self.label or self.choice.describe()

    @property
    def peak(self) -> int:
        return max((p.nbytes for p in self.phases), default=0)

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.nbytes)

    def largest(self, n: int = 3) -> list[Item]:
        """The biggest items of the peak phase."""
        return sorted(self.peak_phase.items, key=lambda i: -i.nbytes)[:n]

    def table(self) -> str:
        """A Markdown table: one row per phase, its items and total; the peak marked."""
        rows = [f"Plan on {self.device}: {self.describe()}. Peak {size_text(self.peak)} "
                f"({self.peak:,} bytes), in '{self.peak_phase.name}'.", "",
                "| phase | alive | total |", "|---|---|---:|"]
        for p in self.phases:
            alive = "; ".join(f"{i.name} {size_text(i.nbytes)}" for i in p.items if i.nbytes)
            mark = " **(peak)**" if p is self.peak_phase else ""
            rows.append(f"| {p.name}{mark} | {alive} | {size_text(p.nbytes)} |")
        return "\n".join(rows)


# -- building what the plan traces -------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def meta_prior(hps, vqvae_hps, weights: str = "stored"):
    """The prior of these hparams built on the meta device (cached: nothing may change it)."""
    from .models.prior import make_prior
    from .models.transformer import weights_in

    with torch.device("meta"):
        return weights_in(make_prior(hps, vqvae_hps).eval(), weights)


@functools.lru_cache(maxsize=4)
def _meta_vqvae(vqvae_hps):
    from .models.vqvae import make_vqvae

    with torch.device("meta"):
        return make_vqvae(vqvae_hps).eval()


# A song for sizing labels: their shape is fixed per prior (lyrics padded to n_tokens), not their values.
_SIZING_LYRICS = "la " * 8


@functools.lru_cache(maxsize=64)
def _window_peak(prior_hps, vqvae_hps, weights: str, window: tuple[int, int], batch: int,
                 caches: torch.dtype | None, device: str) -> int:
    """The most one window of this level holds beyond the weights: the decoder's caches, the
    prefill over the window's context, then a step (``sample_window`` itself, traced on meta)."""
    from .sample import Sampling, Song, sample_window

    prior = meta_prior(prior_hps, vqvae_hps, weights)
    context, length = window
    y = Song(0, [0], 0, _SIZING_LYRICS if prior.n_tokens else ()).labels(prior, 0, batch)

    def run():
        ctx = torch.zeros(batch, context, dtype=torch.int64, device="meta")
        z_cond = None
        if prior.x_cond:
            z_cond = torch.zeros(batch, prior.hps.n_ctx // prior.cond_downsample, dtype=torch.int64, device="meta")
        # The decode step as the device runs it: on a CPU the C++ step (when built) streams the
        # weights as they are; on a GPU the step first puts them in the caches' dtype.
        with dispatch.use_backend(decode_layers="torch") if device == "cuda" else contextlib.nullcontext():
            sample_window(prior, ctx, min(context + 1, length), z_cond, None if y is None else y.to("meta"),
                          Sampling(dtype=caches, progress=False))

    return traced_peak(run, list(prior.state_dict().values()), device)


@functools.lru_cache(maxsize=16)
def _decode_peak(vqvae_hps, level: int, n: int, tokens: tuple[int, ...], device: str) -> int:
    """The VQ-VAE decode of ``n`` samples from ``level`` (one sample at a time, as generate
    decodes) of ``tokens`` codes per level from ``level`` up, traced."""
    vqvae = _meta_vqvae(vqvae_hps)

    def run():
        zs = [torch.zeros(n, t, dtype=torch.int64, device="meta") for t in tokens]
        vqvae.decode(zs, start_level=level, bs_chunks=n).clamp(-1, 1)

    return traced_peak(run, list(vqvae.state_dict().values()), device)


def plan_sampling(vqvae_hps, priors: Sequence, levels: Sequence[int], *, n_samples: int, total_length: int,
                  choice: Choice = Choice(), hop_fraction: Sequence[float] = (0.5, 0.5, 0.125),
                  prime_tokens: Sequence[int] | None = None,
                  device: str | torch.device = "cpu", trace: bool = True) -> Plan:
    """The memory plan of :func:`jukebox_fast.sample.generate` for one way to run.

    Args:
        vqvae_hps: the VQ-VAE's hparams.
        priors: per level, the prior's hparams, or the loaded prior (its weights counted as they
            are); None for a level not sampled.
        levels: the levels sampled, top first.
        n_samples, total_length, hop_fraction: as ``generate`` takes them.
        choice: how the run spends memory (:class:`Choice`).
        prime_tokens: per level, codes the run continues (primed, continued or resumed runs).
        device: where the run holds its tensors.
        trace: False leaves out the transients (the windows, the decode, the file's tensor
            loading holds with its conversion): a lower bound from one meta build per prior,
            for refusing what cannot fit before tracing anything.
    """
    from .sample import final_tokens, longest_context

    device = torch.device(device)
    levels = sorted(set(levels), reverse=True)
    batch = min(n_samples, choice.batch or n_samples)
    caches = choice.caches or (torch.bfloat16 if device.type == "cuda" else None)
    hops = vqvae_hps.hop_lengths
    vq = Item("VQ-VAE weights", model_bytes(_meta_vqvae(vqvae_hps)))
    have = list(prime_tokens) if prime_tokens is not None else [0] * len(hops)
    tokens = [final_tokens(total_length // hop, prior.n_ctx, have[level]) if prior is not None else have[level]
              for level, (hop, prior) in enumerate(zip(hops, [getattr(p, "hps", p) for p in priors]))]
    codes = Item("codes", sum(n_samples * t * 8 for t in tokens))  # int64, every level
    hps = {level: getattr(priors[level], "hps", priors[level]) for level in levels}
    form = choice.weight_form(device)
    weights = {}
    for level in levels:
        given = priors[level] if isinstance(priors[level], torch.nn.Module) else None
        built = meta_prior(hps[level], vqvae_hps, form)
        weights[level] = Item(f"level-{level} prior weights", model_bytes(given if given is not None else built))

    def loading(level: int) -> Item:  # the tensors converted so far, one of the file's and its conversion
        extra = _loading_extra(meta_prior(hps[level], vqvae_hps), meta_prior(hps[level], vqvae_hps, form)) if trace else 0
        return Item(f"level-{level} prior file (loading)", weights[level].nbytes + extra)

    plan = Plan(choice, device, [Phase("load the VQ-VAE", [vq])])
    held: list[Item] = []
    if not choice.in_turn:
        for level in levels:
            plan.phases.append(Phase(f"load the level-{level} prior", [vq, *held, loading(level)]))
            held.append(weights[level])
    for level in levels:
        if choice.in_turn:
            plan.phases.append(Phase(f"load the level-{level} prior", [vq, codes, loading(level)]))
            held = [weights[level]]
        n_ctx = hps[level].n_ctx
        window = longest_context(total_length // hops[level], n_ctx, int(hop_fraction[level] * n_ctx), have[level])
        peak = _window_peak(hps[level], vqvae_hps, form, window, batch, caches, device.type) if trace else 0
        plan.phases.append(Phase(f"sample level {level}", [vq, *held, codes, Item(
            f"level-{level} window (caches, prefill of {window[0]} tokens, {batch} sample(s))", peak)]))
    low = levels[-1]
    decode = _decode_peak(vqvae_hps, low, n_samples, tuple(tokens[low:]), device.type) if trace else 0
    plan.phases.append(Phase(f"decode level {low}", [vq, *([] if choice.in_turn else held), codes,
                                                      Item("VQ-VAE decode", decode)]))
    return plan


def plan_generate(vqvae, priors: Sequence, levels: Sequence[int], *, n_samples: int, total_length: int,
                  hop_fraction: Sequence[float] = (0.5, 0.5, 0.125), sampling=None,
                  prime_tokens: Sequence[int] | None = None, max_memory: str | int | None = None,
                  device: str | torch.device | None = None, weights: str = "stored") -> Plan:
    """The plan :func:`jukebox_fast.sample.generate` runs, made before any weight loads.

    ``vqvae`` is the model or its hparams; ``priors`` per level a loaded prior, a
    :class:`~jukebox_fast.checkpoint.PriorFile`, hparams (a plan only) or None. Priors given as
    files are loaded in turn. Without ``max_memory`` the plan is the run as asked (``sampling``'s
    dtype and batch); with it, the first way to run that fits in ``max_memory`` and in what the
    device has free: 16-bit weights (files only), then 16-bit caches, then fewer samples per
    window pass, then int8 weights (files only). ``weights`` asks for a form from the start ("16-bit", "int8").
    Raises :class:`MemoryPlanError` when the plan does not fit.
    """
    from .checkpoint import PriorFile
    from .hparams import PriorHparams, VQVAEHparams
    from .sample import Sampling

    s = sampling or Sampling()
    vqvae_hps = vqvae if isinstance(vqvae, VQVAEHparams) else vqvae.hps
    if device is None:
        device = "cpu" if isinstance(vqvae, VQVAEHparams) else next(vqvae.parameters()).device
    device = torch.device(device)
    files = all(isinstance(priors[level], (PriorFile, PriorHparams)) for level in levels)  # not loaded yet
    specs = [p.hparams() if isinstance(p, PriorFile) else p for p in priors]
    if weights != "stored" and not files:
        raise ValueError(f"weights={weights!r} takes priors given as files (PriorFile): loaded priors are as they are")
    base = Choice(in_turn=files, weights=weights, caches=s.dtype, batch=min(n_samples, s.max_batch_size))
    choices = [base]
    if max_memory is not None:
        if files and weights == "stored":
            choices.append(dataclasses.replace(choices[-1], weights="16-bit"))
        default = torch.bfloat16 if device.type == "cuda" else torch.float32
        if (base.caches or default).itemsize > 2:
            choices.append(dataclasses.replace(choices[-1], caches=torch.bfloat16))
        if files and choices[-1].weights != "int8":
            choices.append(dataclasses.replace(choices[-1], weights="int8"))
        batch = choices[-1].batch
        while batch > 1:
            batch = (batch + 1) // 2
            choices.append(dataclasses.replace(choices[-1], batch=batch))

    def make(choice: Choice, trace: bool = True) -> Plan:
        return plan_sampling(vqvae_hps, specs, levels, n_samples=n_samples, total_length=total_length, choice=choice,
                             hop_fraction=hop_fraction, prime_tokens=prime_tokens, device=device,
                             trace=trace)

    return choose(make, choices, f"{n_samples} sample(s) of {total_length / vqvae_hps.sr:.4g} s", max_memory, device)


def plan_embedding(vqvae_hps, prior_hps, *, layers: int, batch_size: int, dtype: torch.dtype | None = None,
                   weights: str = "stored", device: str | torch.device = "cpu",
                   trace: bool = True) -> Plan:
    """The memory plan of :func:`jukebox_fast.embed.extract` with a prior truncated to ``layers``
    blocks: both models' weights, loading, then one batch of full-context clips (each clip
    encoded on its own, the prior's forward over the batch), traced."""
    from .embed import MARGIN_TOKENS, conditioning

    if not isinstance(layers, int) or not 1 <= layers <= prior_hps.prior_depth:
        raise ValueError(f"layers must be an integer in 1..{prior_hps.prior_depth} (this prior's blocks), "
                         f"got {layers!r}")
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    vqvae = _meta_vqvae(vqvae_hps)
    prior = meta_prior.__wrapped__(prior_hps, vqvae_hps, weights)  # a fresh build: it is cut below
    prior.prior.transformer.keep_first(layers)
    hop, n_ctx = vqvae_hps.hop_lengths[-1], prior.hps.n_ctx
    y = conditioning(prior).to("meta").expand(batch_size, -1)

    def run():
        x = torch.zeros(1, (n_ctx + MARGIN_TOKENS) * hop, 1, device="meta")
        z = vqvae.encode(x, start_level=vqvae_hps.levels - 1, check_finite=False)[0][:, :n_ctx]
        del x
        prior.hidden_states(z.expand(batch_size, -1).contiguous(), [layers], y, dtype=dtype)

    known = list(vqvae.state_dict().values()) + list(prior.state_dict().values())
    peak = traced_peak(run, known, device) if trace else 0
    vq = Item("VQ-VAE weights", model_bytes(vqvae))
    w = Item(f"prior weights ({layers} blocks)", model_bytes(prior))
    read = Item("prior file (loading)",
                w.nbytes + _loading_extra(meta_prior(prior_hps, vqvae_hps), meta_prior(prior_hps, vqvae_hps, weights)))
    label = (f"{'weights as stored' if weights == 'stored' else '16-bit weights'}, "
             f"{str(dtype).removeprefix('torch.')} blocks, {batch_size} clip(s) a batch")
    return Plan(Choice(weights="stored" if weights == "stored" else "16-bit", caches=dtype, batch=batch_size), device, [
        Phase("load the VQ-VAE", [vq]), Phase("load the prior", [vq, read]),
        Phase(f"a batch of {batch_size} clip(s)", [vq, w, Item("encode and forward", peak)])], label)


@functools.lru_cache(maxsize=16)
def training_step_peak(prior_hps, vqvae_hps, batch: int, recompute: bool, device: str = "cpu") -> int:
    """The most one training step of this prior holds beyond its weights, traced on meta: the
    forward's activations kept for backward, the backward's own, and the gradients (what
    ``train_prior`` runs, fp32 master weights, the conditioner's blocks recomputed or not)."""
    from .models.prior import make_prior
    from .models.resnet import set_recompute

    with torch.device("meta"):
        prior = set_recompute(make_prior(prior_hps, vqvae_hps).float().train(), recompute)
    n_ctx, level = prior_hps.n_ctx, prior_hps.level
    tokens = [n_ctx * vqvae_hps.hop_lengths[level] // hop for hop in vqvae_hps.hop_lengths[level:]]
    zs = [torch.zeros(batch, t, dtype=torch.int64, device="meta") for t in tokens[:2]]
    y = None
    if prior_hps.labels:
        from .sample import Song

        y = Song(0, [0], 0, _SIZING_LYRICS if prior.n_tokens else ()).labels(prior, 0, batch).to("meta")
    known = list(prior.state_dict().values())

    def run():
        loss, _ = prior(zs, y)
        loss.backward()

    with Tracker(known, device) as tracker:
        run()
    return tracker.peak


def plan_embed(vqvae_hps, prior, *, layers: int, batch_size: int, dtype: torch.dtype | None = None,
               max_memory: str | int | None = None, device: str | torch.device = "cpu") -> Plan:
    """The plan ``jukebox-fast embed`` runs (``prior`` a :class:`~jukebox_fast.checkpoint.PriorFile`
    or hparams): as asked, or with ``max_memory`` the first of 16-bit weights, then smaller
    batches, that fits in it and in what the device has free (:class:`MemoryPlanError` if none)."""
    from .checkpoint import PriorFile

    device = torch.device(device)
    hps = prior.hparams() if isinstance(prior, PriorFile) else prior
    choices = [Choice(caches=dtype, batch=batch_size)]  # (the blocks' dtype: what 16-bit weights follow)
    if max_memory is not None:
        choices.append(Choice(weights="16-bit", caches=dtype, batch=batch_size))
        while choices[-1].batch > 1:
            choices.append(Choice(weights="16-bit", caches=dtype, batch=(choices[-1].batch + 1) // 2))

    def make(choice: Choice, trace: bool = True) -> Plan:
        return plan_embedding(vqvae_hps, hps, layers=layers, batch_size=choice.batch, dtype=dtype,
                              weights=choice.weight_form(device), device=device, trace=trace)

    return choose(make, choices, f"embedding with {layers} block(s), {batch_size} clip(s) a batch", max_memory,
                  device)


def choose(make: Callable[..., Plan], choices: Sequence[Choice], what: str, max_memory: str | int | None,
           device: torch.device) -> Plan:
    """The first of ``choices`` whose plan (``make(choice)``) peaks within ``max_memory`` and
    what ``device`` has free (the first plan where neither is known); else a
    :class:`MemoryPlanError` naming the smallest plan's largest items. The smallest choice's
    lower bound (``make(choice, trace=False)``) is checked first: what cannot fit is refused
    before anything is traced."""
    from .devices import available_memory

    given, free = None if max_memory is None else parse_size(max_memory), available_memory(device)
    if given is None and free is None:
        return make(choices[0])
    limit = min(v for v in (given, free) if v is not None)
    room = "the memory given" if given == limit else f"the memory free on {device}"
    floor = make(choices[-1], trace=False)
    if floor.peak > limit:
        raise _refusal(floor, limit, what, room, "at least ")
    for choice in choices:
        plan = make(choice)
        if plan.peak <= limit:
            return plan
    raise _refusal(plan, limit, what, room, "")


def _refusal(plan: Plan, limit: int, what: str, room: str, bound: str) -> MemoryPlanError:
    items = ", ".join(f"{i.name} {size_text(i.nbytes)}" for i in plan.largest())
    return MemoryPlanError(f"{what} does not fit in {size_text(limit)} ({room}): the smallest plan "
                           f"({plan.describe()}) needs {bound}{size_text(plan.peak)} in "
                           f"'{plan.peak_phase.name}'; largest: {items}")
