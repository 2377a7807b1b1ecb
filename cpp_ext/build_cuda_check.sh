#!/usr/bin/env bash
# Compile-check the CUDA kernels (cpp_ext/cuda/ops_cuda.cu) with plain nvcc; no GPU and no CUDA torch needed.
#
# Usage: cpp_ext/build_cuda_check.sh [ARCH]      ARCH defaults to $CUDA_ARCH or sm_90 (H100/H200), e.g. sm_80.
# Exits non-zero when nvcc is missing or the compile fails. NVCC overrides the compiler path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
arch="${1:-${CUDA_ARCH:-sm_90}}"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
    echo "build_cuda_check: nvcc not found; install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2
    exit 2
fi
out="$(mktemp -d "${TMPDIR:-/tmp}/xai_cuda_check.XXXXXX")"
trap 'rm -rf "$out"' EXIT
"$nvcc" -c -O3 -std=c++17 -arch="$arch" -Xcompiler -Wall -I"$here/cuda" "$here/cuda/ops_cuda.cu" -o "$out/ops_cuda.o"
echo "build_cuda_check: ops_cuda.cu compiles for $arch with $("$nvcc" --version | tail -n 1)"
