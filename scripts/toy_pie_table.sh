#!/bin/bash
# The README's toy PIE-Bench table: write the folder, run the four methods (timed), score them.
# usage: scripts/toy_pie_table.sh OUTDIR [N_SCENES] [T] [INNER]   (OUTDIR outside the checkout; nice'd, 1 thread)
set -euo pipefail
OUT=${1:?usage: scripts/toy_pie_table.sh OUTDIR [N_SCENES] [T] [INNER]}; N=${2:-20}; T=${3:-10}; INNER=${4:-10}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python}
[ -f "$OUT/data/mapping_file.json" ] || $PY -m toyworld.pie_bench --out "$OUT/data" --n "$N"
for m in stylediffusion nulltext npi ddim; do
  start=$(date +%s)
  nice -n 10 $PY pie_bench.py --model toy --data_path "$OUT/data" --output_path "$OUT/out" --method $m \
    --num_ddim_steps "$T" --num_inner_steps "$INNER" 2>/dev/null | tail -3
  echo "$m: $(( $(date +%s) - start )) s (T=$T, inner=$INNER)" | tee -a "$OUT/times.txt"
done
nice -n 10 $PY eval_metrics/pie_metrics.py --data_path "$OUT/data" --output_path "$OUT/out" \
  --methods stylediffusion nulltext npi ddim --offline_random_weights --random_size tiny --quiet | tee "$OUT/table.txt"
