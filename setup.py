"""Packaging for jukebox_fast.

The top-level ``kernels/`` folder (pure Triton code, no model imports) is installed as
``jukebox_fast.kernels`` and ``csrc/`` as ``jukebox_fast.csrc`` through ``package_dir``, so that
they stay outside the Python package tree in the repository but import under the package name.

The C++/CUDA extension is compiled here into ``jukebox_fast._C`` when ``JUKEBOX_FAST_BUILD_CUDA``
is ``1``, or ``auto`` (the default) and torch is importable at build time as a CUDA build with
nvcc present; pip's build isolation hides torch, so build it with
``JUKEBOX_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .``. Otherwise the extension is
built on first use (``jukebox_fast/extension.py``).
"""
import glob
import os

from setuptools import find_packages, setup

packages = find_packages(include=["jukebox_fast", "jukebox_fast.*"])
packages += ["jukebox_fast.kernels", "jukebox_fast.csrc"]


def extension_build() -> dict:
    want = os.environ.get("JUKEBOX_FAST_BUILD_CUDA", "auto").strip().lower()
    if want in ("0", "no", "off", "false"):
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if want == "auto":
            return {}
        raise SystemExit("JUKEBOX_FAST_BUILD_CUDA=1 needs torch at build time: "
                         "pip install --no-build-isolation -e .")
    missing = "torch is a CPU build" if torch.version.cuda is None else "nvcc was not found" if CUDA_HOME is None else None
    if missing:
        if want == "auto":
            return {}
        raise SystemExit(f"JUKEBOX_FAST_BUILD_CUDA=1 but {missing}")
    ext = CUDAExtension(
        "jukebox_fast._C",
        sources=sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu")),
        extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3", "--use_fast_math"]},
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="jukebox_fast",
    version="0.1.0",
    description="Fast kernels and an original-compatible implementation of OpenAI's Jukebox",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"jukebox_fast.kernels": "kernels", "jukebox_fast.csrc": "csrc"},
    package_data={"jukebox_fast.csrc": ["*.cpp", "*.cu", "*.h"]},
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
        "ninja",  # builds the C++ extension on first use
        "unidecode",  # lyrics: the original transliterates to ASCII before tokenising
    ],
    extras_require={
        # scipy: the resampling oracle; pytest-timeout: no test can hang CI; pytest-xdist: both cores;
        # playwright: drives Debian's chromium (never downloads a browser) for the lyrics page
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "numpy", "hypothesis", "transformers==4.57.6", "scipy",
                 "playwright"],
        "bench": ["pytest-benchmark", "transformers==4.57.6"],  # the HF port: the CPU comparisons' baseline
    },
    **extension_build(),
    entry_points={"console_scripts": ["jukebox-fast=jukebox_fast.cli:main"]},
)
