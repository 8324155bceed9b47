"""The training loop shared by the VQ-VAE and the priors.

AdamW with linear warm-up, gradient clipping, optional bf16/fp16 autocast (fp16 with a gradient
scaler), data-parallel training under ``torchrun`` (DDP, or FSDP for priors too big to replicate),
atomic checkpoints holding everything needed to continue exactly: weights, optimiser, schedule,
scaler, step, loss history and every rank's random-number states.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import validate
from ..devices import process_device  # noqa: F401 - its old place
from ..files import atomic_save, read_checkpoint

__all__ = ["TrainConfig", "fit", "distributed_setup", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is per process; under torchrun the global batch is
    ``batch_size × world size``."""

    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler)
    checkpoint_every: int = 100
    seed: int = 0
    fsdp: bool = False  # shard weights and optimiser state across ranks (big priors)
    # Priors: recompute the upsampler conditioner's blocks in backward (the original's gradient
    # checkpointing): "on", "off", or "auto" (only where the step would not fit otherwise).
    recompute: str = "auto"
    # Compile each transformer block with torch.compile (train/compiled.py): the first steps wait
    # for the compiler (about a minute for a tiny prior on 2 cores, seconds once its cache is
    # warm), every later step of a prior runs faster.
    compile: bool = False

    def __post_init__(self):
        if self.recompute not in ("auto", "on", "off"):
            raise ValueError(f"recompute must be 'auto', 'on' or 'off', got {self.recompute!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            validate.at_least(getattr(self, name), name, 1)
        validate.at_least(self.warmup_steps, "warmup_steps", 0)
        validate.finite(self.lr, "lr")
        validate.finite(self.grad_clip, "grad_clip")


def distributed_setup(device_type: str) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes, if any and not yet joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wrap(model: torch.nn.Module, cfg: TrainConfig, world: int) -> torch.nn.Module:
    if world == 1:
        return model
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():  # each transformer block its own shard group, then the rest
            if type(module).__name__ == "ResAttnBlock":
                fully_shard(module)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    # Not every parameter takes part in every step (a lyrics prior's prime stack, conditioners).
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gather(obj: Any, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _states(model, opt) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _train_states(model: torch.nn.Module) -> dict:
    """State that modules keep outside their state dicts (the codebooks' EMA), by module name."""
    return {n: m.train_state() for n, m in model.named_modules() if hasattr(m, "train_state")}


def _load_train_states(model: torch.nn.Module, states: dict) -> None:
    for n, m in model.named_modules():
        if hasattr(m, "load_train_state"):
            m.load_train_state(states[n])


def _load_states(model, opt, model_sd, opt_sd) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=opt_sd,
                   options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def fit(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict]],
        next_batch: Callable[[torch.Generator], Any], cfg: TrainConfig, out_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True, name: str = "training", progress_row: int = 0) -> dict:
    """Train ``model`` in place for ``cfg.steps`` optimiser steps.

    Args:
        model: the module, already on its device.
        loss_fn: ``(wrapped_model, batch) -> (loss, metrics)``; it must call the wrapped model
            (so DDP/FSDP see the forward).
        next_batch: draws this process's batch from the data generator it is given.
        out_dir: where ``checkpoint.pt`` goes (none written without it).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        progress_row: the terminal row of the progress bar (trainings that run side by side).

    Returns a summary: steps, losses (one per step), seconds, steps_per_s, resumed_from.
    """
    device_type = model_device(model).type
    rank, world = distributed_setup(device_type)
    if cfg.compile:
        from .compiled import compile_blocks

        compile_blocks(model)
    wrapped = _wrap(model, cfg, world)
    # On the CPU, AdamW's default loop over parameters costs more than its arithmetic at small
    # widths; the fused kernel updates each tensor in one pass (the demo's upsampler step: 56 ->
    # 40 ms on a 2-core AVX2 EPYC). FSDP's sharded parameters keep the default.
    fused = device_type == "cpu" and not (cfg.fsdp and world > 1)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay,
                            fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.precision == "fp16")
    data_gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    torch.manual_seed(cfg.seed)
    step, losses, resumed_from = 0, [], None
    path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None

    # Every rank must take the same branch: one that resumes runs collectives (the state scatter)
    # that one starting afresh never joins, and both wait forever. So the ranks agree first.
    found = _gather(bool(resume and path is not None and path.exists()), world)
    if any(found) and not all(found):
        missing = [r for r, seen in enumerate(found) if not seen]
        raise RuntimeError(f"{path} is visible to rank(s) {[r for r, seen in enumerate(found) if seen]} but not to "
                           f"rank(s) {missing}: every process of a resumed run must read the same folder")
    if found[0]:
        saved = read_checkpoint(path)
        if saved.get("world") != world:
            raise ValueError(f"{path} was written by {saved.get('world')} processes; this run has {world}")
        _load_states(wrapped, opt, saved["model"], saved["optimizer"])
        _load_train_states(model, saved["train_state"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        step, losses, resumed_from = saved["step"], list(saved["losses"]), saved["step"]
        data_gen.set_state(saved["rng"][rank]["data"])
        torch.set_rng_state(saved["rng"][rank]["torch"])
        if device_type == "cuda" and saved["rng"][rank].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"][rank]["cuda"], model_device(model))

    def save() -> None:
        rng = {"data": data_gen.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(model_device(model)) if device_type == "cuda" else None}
        rngs = _gather(rng, world)
        model_sd, opt_sd = _states(wrapped, opt)
        bad = [k for k, v in model_sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not bool(torch.isfinite(v).all())]
        if any(_gather(bool(bad), world)):  # an update overflowed: never write it over the last good state
            diverged(f"weights hold NaN or inf after step {step}" + (f" (e.g. {bad[0]})" if bad else ""))
        if rank == 0:
            atomic_save(dict(model=model_sd, optimizer=opt_sd, train_state=_train_states(model), scheduler=sched.state_dict(),
                             scaler=scaler.state_dict(), step=step, losses=losses, rng=rngs, world=world,
                             config=dataclasses.asdict(cfg)), path)
        if world > 1:  # no rank goes on (or returns, and resumes) before the checkpoint is in place
            dist.barrier()
        saved[0] = step

    saved = [step if path is not None and path.exists() and resumed_from is not None else None]

    def diverged(what: str) -> None:
        kept = (f"{path} keeps the last state with finite weights (after step {saved[0]})" if saved[0] is not None
                else "no checkpoint was written")
        raise FloatingPointError(f"{name} stopped: {what}; {kept}. Lower the learning rate, or train in fp32")

    dtype = _PRECISIONS[cfg.precision]
    wrapped.train()
    t0 = time.perf_counter()
    start = step
    bar = tqdm(total=cfg.steps, initial=step, desc=name, unit="step", position=progress_row,
               disable=not progress or rank != 0)
    while step < cfg.steps:
        batch = next_batch(data_gen)
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, metrics = loss_fn(wrapped, batch)
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if world > 1:  # every rank stops together: none is left waiting in the gradients' all-reduce
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite:
            what = loss.item() if not torch.isfinite(loss) else "not finite on another rank"
            diverged(f"the loss is {what} at step {step + 1}")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", gnorm=f"{float(grad_norm):.2f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if path is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save()
    bar.close()
    seconds = time.perf_counter() - t0
    return {"steps": step, "losses": losses, "seconds": seconds, "resumed_from": resumed_from,
            "steps_per_s": (step - start) / seconds if seconds > 0 else 0.0}
