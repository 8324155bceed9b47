#!/usr/bin/env bash
# The GPU evidence in one command, from a bare machine of the GPU image (Python 3.12, torch 2.11
# with CUDA 13, Triton 3.6, no network): install this checkout over the image's own torch and
# Triton, then run benchmarks/gpu_evidence.py under one deadline (--budget, 480 s by default)
# counted from this script's start, the install included.
#
# Output: $OUT when set (the device tool's folder), else the first argument when it is not an
# option, else ./gpu_evidence. Only summary.md, steps.json and evidence.tar.gz go there, rewritten
# after every step; logs (this install's too) go to a working folder, packed into the archive.
# Every other argument goes to gpu_evidence.py (e.g. --dry-run, --steps facts tests, --plan).
#
#   bash benchmarks/gpu_evidence.sh                      # on the GPU machine, under the device tool
#   bash benchmarks/gpu_evidence.sh /tmp/ev --dry-run
set -u
started=$(date +%s.%N)
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then
  out=$OUT
elif [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  out=$1
  shift
else
  out=gpu_evidence
fi
mkdir -p "$out"
work=${GPU_EVIDENCE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_evidence_work.XXXXXX")}
mkdir -p "$work"
py=${PYTHON:-python3}
for arg in "$@"; do
  if [ "$arg" = "--plan" ]; then  # nothing to install for a plan
    exec "$py" benchmarks/gpu_evidence.py --out "$out" --work "$work" --started-at "$started" "$@"
  fi
done
# --no-deps and --no-index: nothing is fetched and the image's torch and Triton stay; the
# pure-Python extras the image lacks (soundfile, soxr, unidecode) are imported only where used.
# The C++/CUDA extension is built by gpu_evidence.py's first step, in the background, on all cores.
if JUKEBOX_FAST_BUILD_CUDA=0 "$py" -m pip install --no-index --no-deps --no-build-isolation -e . \
    >"$work/install.log" 2>&1; then
  echo "install: done in $(( $(date +%s) - ${started%.*} )) s"
else
  echo "install: FAILED after $(( $(date +%s) - ${started%.*} )) s (see install.log in the archive); the steps run anyway"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
exec "$py" benchmarks/gpu_evidence.py --out "$out" --work "$work" --started-at "$started" "$@"
