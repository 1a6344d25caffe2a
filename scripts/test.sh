#!/usr/bin/env bash
# Set up (first time) and run the whole test suite; real data is read from ../shared/datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TLBENCH_TEST_DATA="${TLBENCH_TEST_DATA:-$(cd .. && pwd)/shared/datasets}"
exec .venv/bin/python -m pytest -q "$@"
