"""C++/CUDA sources, installed as ``jukebox_fast.csrc`` so that a build on first use finds them
wherever the package lives (see ``jukebox_fast/extension.py``). No Python here."""
