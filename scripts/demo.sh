#!/usr/bin/env bash
# The README's first command: set up and run the demo (embedded broker + simulator
# flying flight 3 in a loop + the daemon). Metrics: http://127.0.0.1:9108/metrics
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/groundstation ]; then
  # Debian splits `python3 -m venv` (ensurepip) into python3-venv.
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "demo: python3 -m venv needs Debian's python3-venv: sudo apt-get install python3-venv" >&2
      exit 1
    fi
    echo "demo: installing python3-venv from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
# The allocator setting of the shipped systemd unit (deploy/systemd/groundstation.service).
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456
exec .venv/bin/groundstation demo "$@"
