"""VQ-VAE encoder and decoder: strided convolutions around residual dilated stacks.

Shapes are channels-first [N, C, T]. Attribute names follow the original (see resnet.py): a down
step ``i`` is ``model.<i>`` = (strided conv, Resnet1D); an up block starts with ``model.0`` (the
input conv) and step ``i`` is ``model.<i+1>`` = (Resnet1D, transposed conv).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .resnet import Resnet1D

__all__ = ["EncoderConvBlock", "DecoderConvBlock", "Encoder", "Decoder"]


class EncoderConvBlock(nn.Module):
    """``down_t`` stride-``stride_t`` down-samplings, each followed by a residual stack."""

    def __init__(
        self,
        input_emb_width: int,
        output_emb_width: int,
        down_t: int,
        stride_t: int,
        width: int,
        depth: int,
        m_conv: float,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
    ):
        super().__init__()
        blocks = []
        filter_t, pad_t = stride_t * 2, stride_t // 2
        if down_t > 0:
            for i in range(down_t):
                blocks.append(nn.Sequential(
                    nn.Conv1d(input_emb_width if i == 0 else width, width, filter_t, stride_t, pad_t),
                    Resnet1D(width, depth, m_conv, dilation_growth_rate, dilation_cycle, zero_out, res_scale),
                ))
            blocks.append(nn.Conv1d(width, output_emb_width, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DecoderConvBlock(nn.Module):
    """Input conv, then ``down_t`` times (residual stack, exact x``stride_t`` transposed conv).

    The original spells this class ``DecoderConvBock``; only attribute names matter for loading.
    The upsampler conditioner is built from this block too.
    """

    def __init__(
        self,
        input_emb_width: int,
        output_emb_width: int,
        down_t: int,
        stride_t: int,
        width: int,
        depth: int,
        m_conv: float,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_decoder_dilation: bool = False,
        checkpoint_res: int = 0,
    ):
        super().__init__()
        blocks = []
        if down_t > 0:
            filter_t, pad_t = stride_t * 2, stride_t // 2
            blocks.append(nn.Conv1d(output_emb_width, width, 3, 1, 1))
            for i in range(down_t):
                last = i == down_t - 1
                blocks.append(nn.Sequential(
                    Resnet1D(width, depth, m_conv, dilation_growth_rate, dilation_cycle, zero_out,
                             res_scale, reverse_decoder_dilation, checkpoint_res),
                    nn.ConvTranspose1d(width, input_emb_width if last else width, filter_t, stride_t, pad_t),
                ))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encoder(nn.Module):
    """Encoder of one VQ-VAE level: ``levels`` down blocks from raw audio to the latent."""

    def __init__(self, input_emb_width: int, output_emb_width: int, levels: int, downs_t, strides_t, **block_kwargs):
        super().__init__()
        block_kwargs.pop("reverse_decoder_dilation", None)
        self.levels = levels
        self.downs_t, self.strides_t = tuple(downs_t), tuple(strides_t)
        self.level_blocks = nn.ModuleList(
            EncoderConvBlock(input_emb_width if level == 0 else output_emb_width, output_emb_width,
                             down_t, stride_t, **block_kwargs)
            for level, down_t, stride_t in zip(range(levels), downs_t, strides_t)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[N, C_in, T] -> one [N, emb, T / hop_j] tensor per down block (the last is the latent)."""
        xs = []
        for block in self.level_blocks:
            x = block(x)
            xs.append(x)
        return xs


class Decoder(nn.Module):
    """Decoder of one VQ-VAE level: up blocks in reverse order, then the output conv."""

    def __init__(self, input_emb_width: int, output_emb_width: int, levels: int, downs_t, strides_t, **block_kwargs):
        super().__init__()
        self.levels = levels
        self.downs_t, self.strides_t = tuple(downs_t), tuple(strides_t)
        self.level_blocks = nn.ModuleList(
            DecoderConvBlock(output_emb_width, output_emb_width, down_t, stride_t, **block_kwargs)
            for down_t, stride_t in zip(downs_t, strides_t)
        )
        self.out = nn.Conv1d(output_emb_width, input_emb_width, 3, 1, 1)

    def forward(self, xs: list[torch.Tensor], all_levels: bool = True) -> torch.Tensor:
        """Latents (one per level, or just the last with ``all_levels=False``) -> [N, C_in, T]."""
        if len(xs) != (self.levels if all_levels else 1):
            raise ValueError(f"Decoder expects {self.levels if all_levels else 1} latents, got {len(xs)}")
        x = xs[-1]
        for level in reversed(range(self.levels)):
            x = self.level_blocks[level](x)
            if level != 0 and all_levels:
                x = x + xs[level - 1]
        return self.out(x)
