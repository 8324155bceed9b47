"""jukebox_fast: OpenAI's Jukebox with fast kernels and original-compatible checkpoints.

    >>> import jukebox_fast
    >>> vqvae = jukebox_fast.load_vqvae("vqvae.pth.tar")        # the original file
    >>> codes = vqvae.encode(audio)                              # audio [N, T, 1] -> 3 levels
    >>> audio_back = vqvae.decode(codes[0:], start_level=0)

See :mod:`jukebox_fast.dispatch` for choosing kernel implementations and
``python -m jukebox_fast.info`` for what runs on this machine.
"""
from . import ops  # registers the ops with the dispatcher
from .alignment import lyric_alignment
from .checkpoint import CheckpointError, PriorFile, load_prior, load_vqvae, save_prior, save_vqvae
from .dispatch import use_backend
from .models.prior import SimplePrior, make_prior
from .models.vqvae import VQVAE, make_vqvae

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "PriorFile", "SimplePrior", "VQVAE", "load_prior", "load_vqvae", "lyric_alignment", "make_prior", "make_vqvae",
    "save_prior", "save_vqvae", "use_backend", "__version__",
]
