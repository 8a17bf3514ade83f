#!/usr/bin/env bash
# The GPU machine's software stack, on a machine without a GPU: torch 2.11.0 (CUDA 13.0
# build) and triton 3.6.0 in their own venv; the extension built WITH its CUDA kernels
# (nvcc, sm_90, C++17, torch 2.11's headers, linked against its CUDA libraries); then
# the whole test suite on the CPU. The main CI step builds against torch 2.13's CPU
# build, so without this a CUDA launcher that does not compile or link against the
# GPU machine's torch, or a torch/triton API that differs between the two releases,
# would first be seen on the GPU machine, costing its time.
#   bash .ci/gpu_stack.sh [WORK_DIR]      (default: build/gpu-stack; about 4 minutes)
# The working tree (tracked and untracked, not ignored, files) is copied to
# WORK_DIR/src, so the main checkout's build is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-build/gpu-stack}
start=$(date +%s)
step() { echo; echo "=== gpu stack: $* ($(( $(date +%s) - start )) s)"; }

nvcc=$(command -v nvcc) || { echo "gpu_stack: nvcc not found (needed to build the CUDA kernels)"; exit 1; }
# the toolkit's root as nvcc itself reports it (the nvcc on PATH may be a wrapper script)
cuda_home=${CUDA_HOME:-$(cd "$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')" && pwd -P)}

step "copy of the working tree to $work/src"
rm -rf "$work"
mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"

step "venv: torch 2.11.0 (CUDA 13.0 build), triton 3.6.0"
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install -q -r .ci/requirements-gpu-stack.txt

step "build with the CUDA kernels (CUDA_HOME=$cuda_home, sm_90)"
cd "$work/src"
CUDA_HOME=$cuda_home TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} \
  python -m pip install -q --no-build-isolation --no-deps -e . >../build.log 2>&1 \
  || { tail -40 ../build.log; echo "gpu_stack: BUILD FAILED"; exit 1; }
python - <<'PY'
import torch
import kasmina_fast
from kasmina_fast import _extension, backends

print("torch", torch.__version__, "| cuda status:", backends.status()["cuda"])
missing = [op for op in backends.OPS if not _extension.has_kernel(op, "CUDA")]
assert not missing, f"ops without a CUDA kernel in this build: {missing}"
PY

step "test suite (CPU) against this stack"
python -m pytest tests bench --benchmark-disable -q -p no:cacheprovider \
  -W "ignore:Conversion of an array with ndim:DeprecationWarning"

cd "$root"
step "done"
