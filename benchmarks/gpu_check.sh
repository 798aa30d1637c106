#!/usr/bin/env bash
# The GPU check: run it first whenever a GPU is lent (docs/backbones.md, benchmarks/RESULTS.md). One command, at
# most ~8 minutes on an H100 / H200, from the repository root:
#   (a) a torch.profiler summary of one training iteration and one edit step (top kernels, device idle share),
#   (b) bench.py (setting (b) only) for the schedules `reference` and `fast` and stylediffusion_direct's cheapest
#       setting, in fp32 and bf16, --compile off and on (an iteration costs the same in every schedule, so one
#       bench run per precision and compile setting times them all; each schedule's training is its passes x that),
#   (c) the CLI end to end (train with --schedule fast, T = 30, N = 20, then a sweep of 4 tau combinations) on a random
#       full-size SD 1.4 folder written by benchmarks/make_random_sd.py,
# then appends a dated table with the card and the git commit to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # the same flow on the tiny model on the CPU (fp32, no compile)
#
# Exit status 1 when a step failed or ran out of its time (the table is appended all the same).
# Environment: RESULTS_FILE (where the table is appended; default benchmarks/RESULTS.md), WORK (scratch folder;
# default a new temp folder), PYTHON (default python).
set -euo pipefail

# stylediffusion_direct's cheapest setting (docs/backbones.md, "the fewest passes": --schedule light with
# --num_inner_steps 2, 57 training passes per image at T = 50) and the fast schedule's passes per image (288, the
# held-out toy PIE-Bench report there).
DIRECT_CHEAPEST_SCHEDULE=light
DIRECT_CHEAPEST_PASSES=57
FAST_PASSES=288

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2; fi
PYTHON=${PYTHON:-python}
RESULTS_FILE=${RESULTS_FILE:-benchmarks/RESULTS.md}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
REPO=$(pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

START=$(date +%s)
TOTAL_LIMIT=$(( DRY_RUN ? 900 : 470 ))  # seconds for all steps (the dry run's only catch hangs on a busy CPU)
budget() {  # the smaller of $1 and the seconds left of TOTAL_LIMIT (at least 1)
  local left=$(( START + TOTAL_LIMIT - $(date +%s) ))
  (( left < 1 )) && left=1
  echo $(( $1 < left ? $1 : left ))
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

if (( DRY_RUN )); then
  DEVICE=cpu; MODEL_FLAG=(--tiny); DTYPES=(fp32); COMPILES=(off)
  BENCH_SIZE=(--iters 1 --warmup 0 --edit_steps 2); MAKE_SD=(--tiny); CLI_STEPS=(--num_ddim_steps 3 --num_inner_steps 2)
  BENCH_LIMIT=400; CLI_LIMIT=400
else
  DEVICE=cuda; MODEL_FLAG=(); DTYPES=(fp32 bf16); COMPILES=(off on)
  BENCH_SIZE=(--iters 4 --warmup 2 --edit_steps 10); MAKE_SD=(); CLI_STEPS=(--num_ddim_steps 30 --num_inner_steps 20)
  BENCH_LIMIT=75; CLI_LIMIT=120
fi

# (a) + (b): one bench run per precision and compile setting; the profile in the first (fp32, uncompiled)
failures=0
first=1
for dtype in "${DTYPES[@]}"; do
  for compile in "${COMPILES[@]}"; do
    extra=(); limit=$BENCH_LIMIT
    [[ $compile == on ]] && { extra+=(--compile); limit=$((BENCH_LIMIT + 35)); }
    limit=$(budget "$limit")
    (( first )) && extra+=(--profile)
    first=0
    echo "== bench.py $dtype compile=$compile (limit ${limit} s)"
    timeout "$limit" "$PYTHON" benchmarks/bench.py "${MODEL_FLAG[@]}" --device "$DEVICE" --dtype "$dtype" \
      --only_default "${BENCH_SIZE[@]}" --schedule reference fast \
      --passes_per_image "fast=$FAST_PASSES" --inversion stylediffusion stylediffusion_direct "${extra[@]}" \
      --json "$WORK/bench-$dtype-compile-$compile.json" > "$WORK/bench-$dtype-compile-$compile.log" 2>&1 \
      || { echo "bench.py $dtype compile=$compile: exit $? (see $WORK/bench-$dtype-compile-$compile.log)"; failures=$((failures + 1)); }
    tail -n 12 "$WORK/bench-$dtype-compile-$compile.log" | grep -v "^wrote" || true
  done
done

# (c) the CLI end to end on a random SD folder
echo "== CLI end to end"
cli_status=0
{
  timeout "$(budget 90)" "$PYTHON" benchmarks/make_random_sd.py "$WORK/random-sd" "${MAKE_SD[@]}" --device "$DEVICE" &&
  start=$(now_ms) &&
  timeout "$(budget "$CLI_LIMIT")" "$PYTHON" stylediffusion.py --model "$WORK/random-sd" --device "$DEVICE" \
    --is_train True --index gpu --prompt "a close-up photo of a cat" --image_path example_images/cat.jpg \
    --schedule fast --model_dir "$WORK/learned" "${CLI_STEPS[@]}" &&
  echo "train_wall_ms $(( $(now_ms) - start ))" > "$WORK/cli.txt" &&
  start=$(now_ms) &&
  timeout "$(budget "$CLI_LIMIT")" "$PYTHON" stylediffusion.py --model "$WORK/random-sd" --device "$DEVICE" \
    --is_train '' --index gpu --prompt "a close-up photo of a cat" --image_path example_images/cat.jpg \
    --schedule fast --model_dir "$WORK/learned" "${CLI_STEPS[@]}" --target "a close-up photo of a tiger" \
    --tau_v "[.5,.7]" --tau_c "[.6,.8]" --blend_word "[('cat',), ('tiger',)]" --outdir "$WORK/edits" &&
  echo "edit_wall_ms $(( $(now_ms) - start ))" >> "$WORK/cli.txt"
} > "$WORK/cli.log" 2>&1 || { cli_status=$?; echo "CLI end to end: exit $cli_status (see $WORK/cli.log)"; failures=$((failures + 1)); }

report=(--direct_schedule "$DIRECT_CHEAPEST_SCHEDULE" --direct_passes "$DIRECT_CHEAPEST_PASSES" --fast_passes "$FAST_PASSES"
        --cli_status "$cli_status" --seconds "$(( $(date +%s) - START ))")
(( DRY_RUN )) && report+=(--dry_run)
"$PYTHON" benchmarks/gpu_report.py "$WORK" --results "$RESULTS_FILE" "${report[@]}"
(( failures == 0 )) || { echo "gpu_check: $failures step(s) failed (the table says which)" >&2; exit 1; }
