#!/bin/bash
# The ALA trainings behind the kahikatea results (README, "ALA on kahikatea"): the full model at two values of
# lambda (benchmarks/ala_lambda.py then chose lambda = 1 on the validation split; that run is
# artifacts/ala-lite0-kahikatea) and the paper's three ablations, trained beside the lambda = 1/15 run they are
# compared with. Each run is single-threaded so that the five share this 2-core machine; all five together took
# 40-45 minutes of wall time here (2026-12-01), early stopping ending each after 10-12 of at most 15 epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-benchmarks/results/ala-kahikatea/work}
COMMON=(--backbone timm/tf_efficientnet_lite0 --data kahikatea --split benchmarks/results/ala-kahikatea/split.json
        --input-size 224 --epochs 15 --seed 0 --no-progress)
run() {  # NAME ARGS...
  local name=$1; shift
  OMP_NUM_THREADS=1 /usr/bin/time -f "$name wall %e s" python -u training/train_ala.py "${COMMON[@]}" "$@" \
    --out "$WORK/$name" > "$WORK/$name.log" 2>&1
}
mkdir -p "$WORK"
run ala-lam1_15 --lam 0.0666667 &
run ala-lam1 --lam 1.0 &
run ala-no-aea --lam 0.0666667 --no-aea &
run ala-no-lattice --lam 0.0666667 --taps none &
run ala-no-lora --lam 0.0666667 --lora-rank 0 &
wait
