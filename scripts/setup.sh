#!/usr/bin/env bash
# Set up a fresh Debian machine for the ground station: system services the tests use
# (Mosquitto, Prometheus, VictoriaMetrics, plus openssl and systemd-analyze for the deploy tests, and
# python3-venv for the virtualenv, from Debian's packages) and a virtualenv in .venv with the
# project and its test/benchmark extras. Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto || missing+=(mosquitto)
have mosquitto_sub || missing+=(mosquitto-clients)
have prometheus || missing+=(prometheus)
have promtool || missing+=(prometheus)
have victoria-metrics || missing+=(victoria-metrics)
have systemd-analyze || missing+=(systemd)
have openssl || missing+=(openssl)
# Debian splits `python3 -m venv` (ensurepip) into python3-venv.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,bench,report]"
