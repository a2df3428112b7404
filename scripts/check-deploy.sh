#!/usr/bin/env bash
# Check the deploy configs with Prometheus's own tool: the server config (which
# also loads the rule files), the rules, and the rules' unit tests in
# deploy/prometheus/tests/. Called by scripts/test.sh; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

promtool="$(command -v promtool || true)"
if [ -z "$promtool" ] && [ -x /usr/bin/promtool ]; then
  promtool=/usr/bin/promtool
fi
if [ -z "$promtool" ]; then
  echo "check-deploy: promtool not found (Debian package prometheus; run scripts/setup.sh)" >&2
  exit 1
fi

"$promtool" check config deploy/prometheus/prometheus.yml
"$promtool" check rules deploy/prometheus/rules/*.yml
"$promtool" test rules deploy/prometheus/tests/*.yml
