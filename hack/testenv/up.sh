#!/usr/bin/env bash
# Brings up crius's image-test environment: both loopback registries
# (registry.sh) and every test image (images.py). Idempotent; what test
# scripts call. Prints the env file and the images.json path.
# Usage: hack/testenv/up.sh [images.py args, e.g. --only busybox]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export CRIUS_TESTENV_DIR=${CRIUS_TESTENV_DIR:-/var/lib/crius-testenv}

"$here/registry.sh"
set -a
. "$CRIUS_TESTENV_DIR/env"
set +a
python3 "$here/images.py" "$@"

cat "$CRIUS_TESTENV_DIR/env"
echo "CRIUS_TEST_IMAGES=$CRIUS_TESTENV_DIR/images.json"
