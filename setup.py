"""Packaging for jukebox_fast.

The top-level ``kernels/`` folder (pure Triton code, no model imports) is installed as
``jukebox_fast.kernels`` through ``package_dir``, so that kernels stay outside the Python
package tree in the repository but import under the package name once installed.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["jukebox_fast", "jukebox_fast.*"])
packages.append("jukebox_fast.kernels")

setup(
    name="jukebox_fast",
    version="0.1.0",
    description="Fast kernels and an original-compatible implementation of OpenAI's Jukebox",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"jukebox_fast.kernels": "kernels"},
    install_requires=[
        # A bare "torch" would let pip pick the newest CUDA build (several GB) on a machine
        # without torch; the README tells CPU users to install torch==2.13.0 first.
        "torch>=2.6",  # weights_only loading with safe_globals((obj, name)) pairs
        "triton; platform_system == 'Linux'",
        "numpy",
        "tqdm",
        "soundfile",
        "soxr",
        "matplotlib",
        "unidecode",  # lyrics: the original transliterates to ASCII before tokenising
    ],
    extras_require={
        "test": ["pytest", "numpy", "hypothesis", "transformers==4.57.6"],
        "bench": ["pytest-benchmark"],
    },
    entry_points={"console_scripts": ["jukebox-fast=jukebox_fast.cli:main"]},
)
