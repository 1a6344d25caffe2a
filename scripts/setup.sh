#!/usr/bin/env bash
# Create .venv and install tlbench with its offline weights, Ray and submitit, TensorBoard and MLflow, the test
# tools, the linters and the example plugin. Nothing is reinstalled while the environment is current: the
# install is skipped when .venv's stamp matches the files that decide it (TLBENCH_REINSTALL=1 forces it).
# On the project's CPU machines pip takes torch 2.14.1 / torchvision 0.29.1 from the local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=.venv/.tlbench-installed
WANTED=$(cat pyproject.toml plugins/examples/tlbench-minent/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "${TLBENCH_REINSTALL:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ] \
    && .venv/bin/python -c "import tlbench, tlbench_minent" 2>/dev/null; then
    exit 0
fi
# A tlbench.egg-info left in the tree by an earlier install shadows the installed metadata (entry points
# included) for every Python started here: remove it, the install below writes the current one.
rm -rf tlbench.egg-info
.venv/bin/python -m pip install -q -e '.[weights,test,dev,ray,slurm,tensorboard,mlflow]' 2>&1 | { grep -v "is ignored" || true; }
# The example third-party plugin package (its tests run with tlbench's). It was tlbench-coral until Deep CORAL
# became the built-in `coral`: an environment that still has it would give the bare name to the old package.
.venv/bin/python -m pip uninstall -q -y tlbench-coral 2>/dev/null || true
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e plugins/examples/tlbench-minent 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/python -c "import tlbench, torch, timm; print('tlbench', tlbench.__version__, '| torch', torch.__version__, '| timm', timm.__version__)"
echo "$WANTED" > "$STAMP"
