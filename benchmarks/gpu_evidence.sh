#!/usr/bin/env bash
# The GPU evidence in one command, from a bare machine of the GPU image (Python 3.12, torch 2.11
# with CUDA 13, Triton 3.6, no network): install this checkout over the image's own torch and
# Triton, then run benchmarks/gpu_evidence.py (device facts, kernel resources, the GPU tests, the
# benchmarks). Everything lands in the output folder: $OUT when set (the device tool's), else the
# first argument, else ./gpu_evidence. Arguments after it go to gpu_evidence.py (e.g. --dry-run).
#
#   bash benchmarks/gpu_evidence.sh               # on the GPU machine, under the device tool
#   bash benchmarks/gpu_evidence.sh /tmp/ev --dry-run
set -u
cd "$(dirname "$0")/.."
out=${OUT:-${1:-gpu_evidence}}
[ $# -gt 0 ] && shift
mkdir -p "$out"
py=${PYTHON:-python3}
t0=$(date +%s)
# --no-deps and --no-index: nothing is fetched and the image's torch and Triton stay; the
# pure-Python extras the image lacks (soundfile, soxr, unidecode) are imported only where used.
# The C++/CUDA extension is built by gpu_evidence.py's first step, in the background, on all cores.
if JUKEBOX_FAST_BUILD_CUDA=0 "$py" -m pip install --no-index --no-deps --no-build-isolation -e . \
    >"$out/install.log" 2>&1; then
  echo "install: done in $(( $(date +%s) - t0 )) s"
else
  echo "install: FAILED after $(( $(date +%s) - t0 )) s (see $out/install.log); the steps run anyway and will say so"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
exec "$py" benchmarks/gpu_evidence.py --out "$out" "$@"
