#!/usr/bin/env bash
# Compile-check csrc/cuda/*.cu with nvcc for one architecture, warnings as
# errors, and print ptxas' registers / spills per kernel. Needs no GPU and
# works against a CPU build of torch (its headers suffice for compiling).
#   csrc/cuda/nvcc_check.sh 90 [OUTDIR]
set -euo pipefail
arch=${1:?usage: nvcc_check.sh ARCH [OUTDIR]}
out=${2:-$(mktemp -d)}
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
tinc=$("$py" -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')
pinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
abi=$("$py" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
for src in "$here"/*.cu; do
  nvcc -c "$src" -o "$out/$(basename "$src" .cu).sm_$arch.o" -std=c++20 -O3 \
    -gencode=arch=compute_$arch,code=sm_$arch $tinc -I"$pinc" \
    -DKASMINA_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -D_GLIBCXX_USE_CXX11_ABI=$abi \
    --expt-relaxed-constexpr -Werror all-warnings -Xptxas -v,-warn-spills,-warn-lmem-usage 2>&1 |
    "$py" "$here/ptxas_report.py" "$(basename "$src")" "sm_$arch"
done
