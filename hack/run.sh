#!/usr/bin/env bash
# The run command: installs dependencies, builds and installs crius, installs
# the default CNI network when none is configured, and runs the daemon in the
# foreground. Extra arguments go to crius (e.g. --log-level debug).
set -euo pipefail
cd "$(dirname "$0")/.."

hack/deps.sh
cargo build --release --locked
install -m 0755 target/release/crius target/release/crius-helper /usr/local/bin/

# The daemon's effective CNI config dir (respects /etc/crius/crius.toml).
conf_dir=$(crius "$@" config | sed -n 's/^conf_dir = "\(.*\)"$/\1/p')
conf_dir=${conf_dir:-/etc/cni/net.d}
have_network=no
for f in "$conf_dir"/*.conflist "$conf_dir"/*.conf "$conf_dir"/*.json; do
  [ -f "$f" ] && have_network=yes
done
if [ "$have_network" = no ]; then
  echo "run: installing the default bridge network into $conf_dir"
  install -d -m 0755 "$conf_dir"
  install -m 0644 cni/10-crius-bridge.conflist "$conf_dir/"
fi

exec /usr/local/bin/crius "$@"
