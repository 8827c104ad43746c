#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine,
# then runs formatting and lint checks and every test. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/deps.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo clippy --all-targets --features fault-injection -- -D warnings"
cargo clippy --locked --all-targets --features fault-injection -- -D warnings
echo "== cargo test"
# fault-injection: the test-only panic hook (CRIUS_FAULT_PANIC_METHOD),
# left out of the production binary.
cargo test --locked --features fault-injection --lib --bins --tests "$@"
