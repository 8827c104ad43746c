#!/usr/bin/env bash
# Pod start benchmark: RunPodSandbox latency of crius beside Debian's
# containerd 1.6 on the same bridge CNI config (median of ≥ 20 each).
#   CRIUS_BENCH_PODS=50 hack/bench-pods.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
if ! command -v containerd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi
hack/testenv/up.sh >/dev/null
cargo bench --bench pods
