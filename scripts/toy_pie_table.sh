#!/bin/bash
# The README's toy PIE-Bench table: write the folder, run the methods (timed), score them.
# usage: scripts/toy_pie_table.sh OUTDIR [N_SCENES] [T] [INNER] [RUNS...]   (OUTDIR outside the checkout; nice'd,
# 1 thread). INNER applies to the trained methods that take it (stylediffusion, stylediffusion_direct); null-text and
# text-embedding inversion keep their published 10; EDICT runs at its published guidance 3, the others at 7.5. Each
# scene is inverted once (its colour case's inversion is copied to its shape and background cases).
# A RUN is METHOD, or METHOD:SCHEDULE[:INNER] (e.g. stylediffusion:fast, stylediffusion_direct:light:2): such runs
# go to OUTDIR/out/METHOD-SCHEDULE[-INNER]/ and are scored there, one table each. SEED (env, default 0) is the toy
# PIE-Bench's --seed: scenes of another seed were never used to tune the schedules (docs/backbones.md).
set -euo pipefail
OUT=${1:?usage: scripts/toy_pie_table.sh OUTDIR [N_SCENES] [T] [INNER] [RUNS...]}; N=${2:-20}; T=${3:-10}; INNER=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
RUNS=("$@"); [ ${#RUNS[@]} -gt 0 ] || RUNS=(stylediffusion nulltext npi ddim)
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python}
[ -f "$OUT/data/mapping_file.json" ] || $PY -m toyworld.pie_bench --out "$OUT/data" --n "$N" --seed "${SEED:-0}"
PLAIN=()
for run in "${RUNS[@]}"; do
  IFS=: read -r m schedule given <<< "$run"
  inner=${given:-$INNER}
  case $m in
    stylediffusion|stylediffusion_direct) extra=(--num_inner_steps "$inner") ;;
    edict) extra=(--guidance_scale 3) ;;
    *) extra=() ;;
  esac
  if [ -n "$schedule" ]; then
    label=$m-$schedule${given:+-$given}; out=$OUT/out/$label; extra+=(--schedule "$schedule")
  else
    label=$m; out=$OUT/out; PLAIN+=("$m")
  fi
  start=$(date +%s)
  # one inversion per scene: the colour cases first (one per scene), then their inversions serve the scene's other cases
  nice -n 10 $PY pie_bench.py --model toy --data_path "$OUT/data" --output_path "$out" --method "$m" \
    --num_ddim_steps "$T" "${extra[@]}" --edit_category_list 6 2>/dev/null | tail -1
  $PY -m toyworld.pie_bench --out "$OUT/data" --share_inversions "$out/inversions"
  nice -n 10 $PY pie_bench.py --model toy --data_path "$OUT/data" --output_path "$out" --method "$m" \
    --num_ddim_steps "$T" "${extra[@]}" 2>/dev/null | tail -3
  echo "$label: $(( $(date +%s) - start )) s (T=$T ${extra[*]})" | tee -a "$OUT/times.txt"
  if [ -n "$schedule" ]; then
    nice -n 10 $PY eval_metrics/pie_metrics.py --data_path "$OUT/data" --output_path "$out" \
      --methods "$m" --offline_random_weights --random_size tiny --quiet | tee "$OUT/table-$label.txt"
  fi
done
[ ${#PLAIN[@]} -eq 0 ] || nice -n 10 $PY eval_metrics/pie_metrics.py --data_path "$OUT/data" --output_path "$OUT/out" \
  --methods "${PLAIN[@]}" --offline_random_weights --random_size tiny --quiet | tee "$OUT/table.txt"
