#!/usr/bin/env bash
# Installs the Debian packages crius needs to build, run and test.
# Safe to run repeatedly: apt is only touched when something is missing.
set -euo pipefail

packages=(
  protobuf-compiler            # CRI bindings are generated at build time
  containernetworking-plugins  # bridge, host-local, portmap, loopback in /usr/lib/cni
  iproute2                     # ip netns / ip link for network checks and tests
  util-linux                   # nsenter, mount
  iputils-ping                 # pod-to-pod reachability in tests
  libseccomp-dev               # seccomp profiles compiled to BPF
  pkg-config                   # finds libseccomp at build time
  python3-venv                 # the gRPC interop test installs grpcio (PyPI) in a venv
  runc                         # the external OCI runtime of the runtime handler tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo (Rust toolchain) is required" >&2; exit 1; }
