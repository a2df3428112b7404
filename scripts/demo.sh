#!/usr/bin/env bash
# The README's first command: set up and run the demo (embedded broker + simulator
# flying flight 3 in a loop + the daemon). Metrics: http://127.0.0.1:9108/metrics
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/groundstation ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
exec .venv/bin/groundstation demo "$@"
