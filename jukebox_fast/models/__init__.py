"""The model layer: modules named as in the original so its checkpoints load unchanged.

It never calls a kernel directly; it calls ops in :mod:`jukebox_fast.ops`.
"""
from .bottleneck import Bottleneck, BottleneckBlock
from .encdec import Decoder, DecoderConvBlock, Encoder, EncoderConvBlock
from .prior import SimplePrior, make_prior
from .resnet import ResConv1DBlock, Resnet1D
from .vqvae import VQVAE, make_vqvae

__all__ = [
    "Bottleneck", "BottleneckBlock", "Decoder", "DecoderConvBlock", "Encoder", "EncoderConvBlock",
    "ResConv1DBlock", "Resnet1D", "SimplePrior", "VQVAE", "make_prior", "make_vqvae",
]
