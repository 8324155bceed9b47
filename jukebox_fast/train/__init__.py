"""Training: the VQ-VAE and the priors on a folder of audio files.

    from jukebox_fast.train import TrainConfig, train_vqvae, train_prior
    vqvae = train_vqvae("songs/", "runs/vqvae", TrainConfig(steps=2000, batch_size=4))
    prior = train_prior("songs/", "runs/top", "runs/vqvae/vqvae.pth.tar", "tiny_top_prior")

Run under ``torchrun --nproc_per_node N`` for data-parallel training (DDP; ``fsdp=True`` shards
the weights of big priors). Checkpoints are written atomically every ``checkpoint_every`` steps
and ``resume=True`` continues from the last one exactly (weights, optimiser, schedule, RNG).
"""
from .data import AudioFolder, ClipCodes
from .loop import TrainConfig, fit
from .models import train_prior, train_vqvae

__all__ = ["AudioFolder", "ClipCodes", "TrainConfig", "fit", "train_prior", "train_vqvae"]
