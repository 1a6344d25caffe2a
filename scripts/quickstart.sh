#!/usr/bin/env bash
# Set up (first time) and run the embedded quickstart suite; prints where the leaderboard is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tlbench run suites/quickstart.yaml "$@"
