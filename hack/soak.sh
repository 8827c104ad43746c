#!/usr/bin/env bash
# Soak (benches/soak.rs): pod + container create/start/exec/stop/remove
# cycles without pause beside two steady pods, for CRIUS_SOAK_MINUTES (30);
# prints the daemon's RSS, threads and descriptors and the steady pods'
# monitor RSS at the start, every CRIUS_SOAK_REPORT_SECS (300) and at the
# end, then checks nothing leaked. Not part of the tests.
#   hack/soak.sh
#   CRIUS_SOAK_MINUTES=5 CRIUS_SOAK_REPORT_SECS=60 hack/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
hack/testenv/up.sh >/dev/null
cargo bench --bench soak
