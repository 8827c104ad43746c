#!/usr/bin/env bash
# Streaming throughput (benches/streaming.rs): 100 MB through exec stdout
# and port-forward, 20 concurrent exec sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
hack/testenv/up.sh >/dev/null
cargo bench --bench streaming
