#!/usr/bin/env bash
# The AdrenalMNIST3D 28^3 result runs committed under docs/results/:
#   adrenal28/                 baselines + covidnet3d-s + medpipe (joint, paper objective)
#   adrenal28-medpipe-off/     medpipe, architecture only
#   adrenal28-medpipe-unrolled medpipe, joint, unrolled objective
#   adrenal28-medpipe-prior/   medpipe, joint, paper objective, probability-level prior
# Finished cells (docs/results/*/runs/*/seed*/) are read, never rerun; PROCS processes share
# each folder (one cell each at a time, cell locks), so the work spreads over cores or GPUs.
#
#   bash benchmarks/adrenal28_results.sh [PROCS]        # run what is missing, then report
#   REPORT_ONLY=1 bash benchmarks/adrenal28_results.sh  # only rewrite the reports
#   DATA=/path/adrenalmnist3d.npz DEVICE=cuda bash benchmarks/adrenal28_results.sh 4
#
# On a CPU every process gets OMP_NUM_THREADS = cores / PROCS. Weights and checkpoints
# written into docs/results are git-ignored; only the cells' JSON/CSV/YAML/PNG are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PROCS=${1:-2}
V=${VOLNAS:-.venv/bin/volnas}
DATA=${DATA:-../shared/data/medmnist3d/adrenalmnist3d.npz}
DEVICE=${DEVICE:-auto}
R=docs/results
C=$R/configs
COMMON=(--data "$DATA" --seeds 3 --epochs 4 --search-epochs 4 --probe-epochs 1 --topk 3
        --batch-size 16 --slices 28 --size 28x28 --device "$DEVICE")
BENCHES=(
  "$R/adrenal28|$C/search.yaml|--models resnet3d_18,densenet3d_121,mc3_18 --search covidnet3d-s,medpipe"
  "$R/adrenal28-medpipe-off|$C/medpipe-off.yaml|--search medpipe"
  "$R/adrenal28-medpipe-unrolled|$C/medpipe-unrolled.yaml|--search medpipe"
  "$R/adrenal28-medpipe-prior|$C/medpipe-prior.yaml|--search medpipe"
)

bench() {  # bench OUT CONFIG "NAMES" [extra flags]
  local out=$1 config=$2 names=$3
  shift 3
  # shellcheck disable=SC2086
  "$V" benchmark "${COMMON[@]}" $names --config "$config" --out "$out" "$@"
}

if [[ -z "${REPORT_ONLY:-}" ]]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PROCS > 0 ? $(nproc) / PROCS : 1 ))}
  mkdir -p "$R/logs"
  for p in $(seq 1 "$PROCS"); do
    (for b in "${BENCHES[@]}"; do
       IFS='|' read -r out config names <<< "$b"
       bench "$out" "$config" "$names" || true  # a failed cell is listed in its report
     done) > "$R/logs/process$p.log" 2>&1 &
  done
  wait
fi
for b in "${BENCHES[@]}"; do
  IFS='|' read -r out config names <<< "$b"
  bench "$out" "$config" "$names" --report-only > /dev/null
done
.venv/bin/python benchmarks/report_augment_search.py off=$R/adrenal28-medpipe-off \
  "paper=$R/adrenal28#medpipe" unrolled=$R/adrenal28-medpipe-unrolled \
  paper-prior=$R/adrenal28-medpipe-prior
