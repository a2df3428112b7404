#!/usr/bin/env bash
# The README's first command: set up and run the demo (embedded broker + simulator
# flying flight 3 in a loop + the daemon). Metrics: http://127.0.0.1:9108/metrics
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/groundstation ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
# The allocator setting of the shipped systemd unit (deploy/systemd/groundstation.service).
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456
exec .venv/bin/groundstation demo "$@"
