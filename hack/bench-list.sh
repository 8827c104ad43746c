#!/usr/bin/env bash
# Read-path latency with many created containers (benches/list.rs):
# ListContainers (all, by pod), ContainerStatus, ListPodSandbox at 10, 100
# and 500 containers (how cost grows with N), crius then Debian's
# containerd 1.6, or any CRI endpoint:
#   hack/bench-list.sh
#   CRIUS_BENCH_LIST_COUNTS=300,1000 CRIUS_BENCH_LIST_CALLS=500 hack/bench-list.sh
#   CRIUS_BENCH_ENDPOINT=unix:///run/containerd/containerd.sock hack/bench-list.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
if ! command -v containerd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi
hack/testenv/up.sh >/dev/null
cargo bench --bench list
