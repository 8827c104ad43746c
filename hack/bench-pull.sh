#!/usr/bin/env bash
# Pull benchmark: crius beside Debian's containerd 1.6 pulling the same
# ≥60 MB multi-layer image from the local test registry (cold every run).
#   CRIUS_BENCH_RUNS=5 hack/bench-pull.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
if ! command -v ctr >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi
hack/testenv/up.sh >/dev/null
cargo bench --bench pull
