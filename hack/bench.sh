#!/usr/bin/env bash
# Pod + container start benchmark (benches/containers.rs): crius beside
# Debian's containerd 1.6, or any CRI endpoint:
#   hack/bench.sh
#   CRIUS_BENCH_ENDPOINT=unix:///run/containerd/containerd.sock hack/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
if ! command -v containerd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi
hack/testenv/up.sh >/dev/null
cargo bench --bench containers
