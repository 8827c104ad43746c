#!/usr/bin/env bash
# ListContainers vs StreamContainers with 1000 created containers
# (benches/stream.rs): wall time p50/p99 per call, one client and 4 at
# once, and the daemon's peak RSS (VmHWM) while each is called. crius only
# (containerd 1.6 has no Stream* RPCs):
#   hack/bench-stream.sh
#   CRIUS_BENCH_STREAM_COUNT=2000 CRIUS_BENCH_STREAM_CALLS=400 hack/bench-stream.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
hack/testenv/up.sh >/dev/null
cargo bench --bench stream
