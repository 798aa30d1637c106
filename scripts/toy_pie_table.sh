#!/bin/bash
# The README's toy PIE-Bench table: write the folder, run the methods (timed), score them.
# usage: scripts/toy_pie_table.sh OUTDIR [N_SCENES] [T] [INNER] [METHODS...]   (OUTDIR outside the checkout; nice'd,
# 1 thread). INNER applies to the trained methods that take it (stylediffusion, stylediffusion_direct); null-text and
# text-embedding inversion keep their published 10; EDICT runs at its published guidance 3, the others at 7.5.
set -euo pipefail
OUT=${1:?usage: scripts/toy_pie_table.sh OUTDIR [N_SCENES] [T] [INNER] [METHODS...]}; N=${2:-20}; T=${3:-10}; INNER=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
METHODS=("$@"); [ ${#METHODS[@]} -gt 0 ] || METHODS=(stylediffusion nulltext npi ddim)
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python}
[ -f "$OUT/data/mapping_file.json" ] || $PY -m toyworld.pie_bench --out "$OUT/data" --n "$N"
for m in "${METHODS[@]}"; do
  case $m in
    stylediffusion|stylediffusion_direct) extra=(--num_inner_steps "$INNER") ;;
    edict) extra=(--guidance_scale 3) ;;
    *) extra=() ;;
  esac
  start=$(date +%s)
  nice -n 10 $PY pie_bench.py --model toy --data_path "$OUT/data" --output_path "$OUT/out" --method "$m" \
    --num_ddim_steps "$T" "${extra[@]}" 2>/dev/null | tail -3
  echo "$m: $(( $(date +%s) - start )) s (T=$T ${extra[*]})" | tee -a "$OUT/times.txt"
done
nice -n 10 $PY eval_metrics/pie_metrics.py --data_path "$OUT/data" --output_path "$OUT/out" \
  --methods "${METHODS[@]}" --offline_random_weights --random_size tiny --quiet | tee "$OUT/table.txt"
