#!/usr/bin/env bash
# The CI test command (README quickstart): set up, then lint, type-check, check the
# deploy configs and run the test suite. Long soak and benchmark runs are separate
# (see docs/reliability.md and docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
if [ -d deploy/prometheus ]; then
  echo "== promtool"
  bash scripts/check-deploy.sh
fi
echo "== pytest"
# One worker per core (at most 4): the tests start their own brokers and daemons on free
# ports and temporary directories, so they run side by side.
python -m pytest -m "not slow" -n auto --maxprocesses 4 "$@"
