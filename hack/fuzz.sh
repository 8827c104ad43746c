#!/usr/bin/env bash
# A longer run of the fuzz test (tests/fuzz.rs): random requests built from
# the CRI schema for every RPC, against a real daemon. Run as root.
#
#   hack/fuzz.sh                       # 200 requests per RPC, random seed
#   CRIUS_FUZZ_SEED=N hack/fuzz.sh     # repeat a run (the seed is printed)
#   CRIUS_FUZZ_CASES=1000 hack/fuzz.sh
#
# The test suite runs the same test with a fixed seed and 20 requests per RPC.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
export CRIUS_FUZZ_CASES="${CRIUS_FUZZ_CASES:-200}"
export CRIUS_FUZZ_SEED="${CRIUS_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "fuzz: CRIUS_FUZZ_SEED=$CRIUS_FUZZ_SEED CRIUS_FUZZ_CASES=$CRIUS_FUZZ_CASES"
exec cargo test --features fault-injection --test fuzz -- --nocapture
