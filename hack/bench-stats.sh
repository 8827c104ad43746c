#!/usr/bin/env bash
# Stats read-path latency with 200 running containers (benches/stats.rs):
# ListContainerStats and ListPodSandboxStats p50/p99 on crius then Debian's
# containerd 1.6, and crius's collector CPU per sample:
#   hack/bench-stats.sh
#   CRIUS_BENCH_STATS_CONTAINERS=400 CRIUS_BENCH_STATS_RUNTIMES=crius hack/bench-stats.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
if ! command -v containerd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi
hack/testenv/up.sh >/dev/null
cargo bench --bench stats
