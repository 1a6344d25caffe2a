#!/usr/bin/env bash
# Run the tests (set up .venv first when it is not current); real data is read from ../shared/datasets.
#   bash scripts/test.sh          the whole suite, what CI runs; the 25 slowest tests listed at the end
#   bash scripts/test.sh --fast   the fast tier: no end-to-end training runs (markers slow, packaging)
# Any other arguments go to pytest (e.g. bash scripts/test.sh --fast tests/test_suite.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TLBENCH_TEST_DATA="${TLBENCH_TEST_DATA:-$(cd .. && pwd)/shared/datasets}"
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest -q -m "not slow and not packaging" "$@"
fi
exec .venv/bin/python -m pytest -q --durations=25 "$@"
