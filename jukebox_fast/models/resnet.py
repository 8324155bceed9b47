"""Residual stacks of dilated 1-D convolutions (VQ-VAE encoder/decoder, upsampler conditioner).

Attribute names follow the original so its checkpoints load unchanged: the two convolutions of a
block are ``model.1`` and ``model.3`` (0 and 2 are the parameter-free ReLUs), and a stack keeps
its blocks in ``model`` or, when built with ``checkpoint_res=1``, in ``blocks``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .. import ops

__all__ = ["ResConv1DBlock", "Resnet1D", "dilations", "set_recompute"]


def dilations(depth: int, growth: int, cycle: int | None = None, reverse: bool = False) -> list[int]:
    """Dilation of each block of a stack, in the order the blocks are applied."""
    ds = [growth ** (i % cycle if cycle else i) for i in range(depth)]
    return ds[::-1] if reverse else ds


class ResConv1DBlock(nn.Module):
    """``x + res_scale · conv1x1(relu(conv3_d(relu(x))))``: pre-activation, length preserving."""

    def __init__(self, n_in: int, n_state: int, dilation: int = 1, zero_out: bool = False, res_scale: float = 1.0):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(n_in, n_state, 3, 1, dilation, dilation),
            nn.ReLU(),
            nn.Conv1d(n_state, n_in, 1, 1, 0),
        )
        if zero_out:
            nn.init.zeros_(self.model[3].weight)
            nn.init.zeros_(self.model[3].bias)
        self.dilation = dilation
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv3, conv1 = self.model[1], self.model[3]
        return ops.dilated_resblock(x, conv3.weight, conv3.bias, conv1.weight, conv1.bias, self.dilation, self.res_scale)


class Resnet1D(nn.Module):
    """``n_depth`` residual blocks with dilation ``growth ** i`` (``i mod cycle`` when cycling)."""

    def __init__(
        self,
        n_in: int,
        n_depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_dilation: bool = False,
        checkpoint_res: int = 0,
    ):
        super().__init__()
        scale = 1.0 / math.sqrt(n_depth) if res_scale else 1.0
        blocks = [
            ResConv1DBlock(n_in, int(m_conv * n_in), d, zero_out, scale)
            for d in dilations(n_depth, dilation_growth_rate, dilation_cycle, reverse_dilation)
        ]
        self.checkpoint_res = checkpoint_res  # structural: the original's key names (blocks vs model)
        # Recompute each block's activations during backward (the original's gradient
        # checkpointing with checkpoint_res=1): memory for time, switched by set_recompute.
        self.recompute = checkpoint_res == 1
        if checkpoint_res == 1:
            self.blocks = nn.ModuleList(blocks)
        else:
            self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_res != 1:
            return self.model(x)
        for block in self.blocks:
            if self.recompute and torch.is_grad_enabled() and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def set_recompute(model: nn.Module, on: bool) -> nn.Module:
    """Switch gradient checkpointing of every :class:`Resnet1D` in ``model`` (the upsamplers'
    conditioner recomputes its blocks in backward, as the original, to save memory at full size;
    where memory allows, keeping the activations is faster). Returns ``model``."""
    for m in model.modules():
        if isinstance(m, Resnet1D):
            m.recompute = bool(on) and m.checkpoint_res == 1
    return model
