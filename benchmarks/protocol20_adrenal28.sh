#!/usr/bin/env bash
# The converged protocol on AdrenalMNIST3D 28^3 (official splits), 3 seeds, every network
# trained for the same 20 epochs: the baselines, the hand-picked members of covidnet3d-s
# (the space's ceiling, strides fitted with the search's rule), covidnet3d-s searched by
# each strategy (random is volnas search's default; evolution; differentiable), and the
# medpipe joint architecture + augmentation search. Cells are resumable; finished cells
# are read, never rerun, so the work can be spread over sessions, processes or GPUs.
#
#   bash benchmarks/protocol20_adrenal28.sh [PROCS]           # run what is missing, report
#   REPORT_ONLY=1 bash benchmarks/protocol20_adrenal28.sh     # only the reports
#   DEVICE=cuda bash benchmarks/protocol20_adrenal28.sh 4     # 4 processes on a GPU
#   LATENCY=0 REPORT_ONLY=1 bash ...                          # reports while cells run:
#       no latency column (timed beside running cells, it would be inflated)
#
# Why 20 epochs: ResNet3D-18's validation AUC has flattened by then on this data (best
# epochs 8, 12 and 20 of 20 in three seeds, 2026-12-07), and the compact networks' by 16.
# Search effort: 12 search epochs (differentiable), 12 supernet epochs (evolution), or
# 12 + 3 one-epoch probes (random), then one 20-epoch retrain of the pick.
# Afterwards paired_compare.py adds the CPU latency per scan (one thread) and the paired
# differences against ResNet3D-18 on the test split, into $OUT/compare.md and a plot.
set -euo pipefail
cd "$(dirname "$0")/.."
PROCS=${1:-2}
V=${VOLNAS:-.venv/bin/volnas}
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/medmnist3d/adrenalmnist3d.npz}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-docs/results/protocol20-adrenal28}
G=$OUT/ceiling
mkdir -p "$OUT/logs"
[[ -d $G ]] || "$PY" benchmarks/space_ceiling.py --out "$G" --spaces covidnet3d-s \
    --input 1x28x28x28 --stride-rule cell1 > "$OUT/logs/ceiling.log"
CEILING=(all-k3e6 all-k5e4 mbv2-like)
MODELS=resnet3d_18,densenet3d_121
for c in "${CEILING[@]}"; do MODELS+=",genotype:$G/covidnet3d-s-$c.json"; done
SEARCHES=covidnet3d-s:random,covidnet3d-s:evolution,covidnet3d-s:differentiable,medpipe:differentiable
COMMON=(--data "$DATA" --models "$MODELS" --search "$SEARCHES" --seeds 3 --epochs 20
        --retrain-epochs 20 --search-epochs 12 --probe-epochs 1 --topk 3 --batch-size 16
        --slices 28 --size 28x28 --device "$DEVICE" --config docs/results/configs/protocol20.yaml
        --out "$OUT")

if [[ -z "${REPORT_ONLY:-}" ]]; then
  if [[ $DEVICE != cuda* ]]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PROCS > 0 ? $(nproc) / PROCS : 1 ))}
  fi
  for p in $(seq 1 "$PROCS"); do
    "$V" benchmark "${COMMON[@]}" > "$OUT/logs/process$p.log" 2>&1 &
  done
  wait || true  # a failed cell is listed in the report
fi
"$V" benchmark "${COMMON[@]}" --report-only > /dev/null

# paired test-split comparison with CPU latency, from the cells finished on all 3 seeds
pairs=()
for d in "$OUT"/runs/*/; do
  name=$(basename "$d")
  seeds=()
  for s in 0 1 2; do
    if [[ -f $d/seed$s/metrics.json || -f $d/seed$s/final/metrics.json ]]; then seeds+=("$d/seed$s"); fi
  done
  if [[ ${#seeds[@]} -eq 3 ]]; then pairs+=("$name=$(IFS=,; echo "${seeds[*]}")"); fi
done
for i in "${!pairs[@]}"; do  # ResNet3D-18 first: the reference of the paired column
  if [[ ${pairs[$i]} == resnet3d_18=* ]]; then pairs=("${pairs[$i]}" "${pairs[@]:0:$i}" "${pairs[@]:$((i + 1))}"); break; fi
done
LAT=()
[[ ${LATENCY:-1} == 0 ]] || LAT=(--latency)
if [[ ${#pairs[@]} -gt 1 ]]; then
  OMP_NUM_THREADS=1 "$PY" benchmarks/paired_compare.py "${pairs[@]}" "${LAT[@]}" \
      --plot "$OUT/compare.png" --out "$OUT/compare.md" > /dev/null
fi
