#!/usr/bin/env bash
# Builds the VM lane's guest root: Debian bookworm (minbase) with systemd as
# PID 1 and what crius and its tests need, as a raw ext4 image. QEMU opens it
# with snapshot=on, so a boot never changes the cached image.
#
# The image is cached under $CRIUS_VM_CACHE (default /var/cache/crius-vm),
# keyed by a hash of this script: edit the recipe and the next run rebuilds.
# Concurrent runs (other worktrees) wait on a lock instead of building twice.
# Prints the image's path on stdout. Needs root and debootstrap.
set -euo pipefail

cache=${CRIUS_VM_CACHE:-/var/cache/crius-vm}
here=$(cd "$(dirname "$0")" && pwd)
key=$(sha256sum "$here/rootfs.sh" | cut -c1-16)
image=$cache/rootfs-$key.img

log() { echo "vm-rootfs: $*" >&2; }

# The guest's packages, beyond minbase. Keep sorted.
packages=(
  apache2-utils               # htpasswd: hack/testenv/registry.sh
  apparmor                    # apparmor_parser, aa-status
  busybox-static              # hack/testenv/images.py builds the test images from it
  containernetworking-plugins # /usr/lib/cni: bridge, host-local, portmap, loopback
  curl                        # hack/testenv/registry.sh waits on /v2/ with it
  dbus                        # the systemd cgroup driver talks to systemd over D-Bus
  docker-registry             # hack/testenv/registry.sh
  iproute2
  iptables
  iputils-ping
  kmod                        # modprobe overlay, bridge, veth, nf_tables
  libseccomp2                 # crius links it
  policycoreutils             # semodule, sestatus (the SELinux lane: --lsm selinux)
  procps
  python3                     # hack/testenv/images.py
  selinux-policy-default      # the policy systemd loads when booted with security=selinux
  systemd
  systemd-sysv
  util-linux                  # nsenter, mount
  zstd                        # hack/testenv/images.py (zstd layers)
)

# The first Debian (not security) URI of the host's apt sources: the lane
# uses whatever mirror the machine is configured with.
mirror() {
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    tr ' ' '\n' | grep -v -- '-security' | grep -m1 . || true)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { log "no Debian mirror found in the apt sources"; exit 1; }
  echo "$uri"
}

# configure ROOT: the guest's own files, written from outside (no chroot).
configure() {
  local root=$1
  echo crius-vm >"$root/etc/hostname"
  printf '127.0.0.1 localhost crius-vm\n::1 localhost ip6-localhost\n' >"$root/etc/hosts"
  : >"$root/etc/fstab"
  # systemd makes a machine id at boot (the image is never written back).
  : >"$root/etc/machine-id"
  # Booted with security=selinux (lane.sh --lsm selinux), systemd loads this
  # policy; permissive, as the image's files carry no labels. Booted with
  # AppArmor (the default) SELinux is off and this file is not read.
  printf 'SELINUX=permissive\nSELINUXTYPE=default\n' >"$root/etc/selinux/config"
  # No udev in minbase: a getty on ttyS0 would wait 90 s for its device.
  # The registry is started by the tests (hack/testenv), not by its package.
  for unit in serial-getty@ttyS0.service getty@tty1.service docker-registry.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    systemd-timesyncd.service; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
  done
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/lane.conf"
  # The lane: run /lane/guest.sh (from the host's share, mounted by the
  # initramfs) once, then power off whatever it returned.
  cat >"$root/etc/systemd/system/crius-lane.service" <<'EOF'
[Unit]
Description=crius VM lane (hack/vm)
Wants=dbus.service
After=basic.target dbus.service apparmor.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
Environment=HOME=/root
ExecStart=/bin/bash /lane/guest.sh
StandardOutput=append:/lane/output.log
StandardError=append:/lane/output.log
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/lane"
  ln -sfn /etc/systemd/system/crius-lane.service \
    "$root/etc/systemd/system/multi-user.target.wants/crius-lane.service"
  # Filled by a 9p share of the host's modules (the booted kernel's).
  mkdir -p "$root/usr/lib/modules"
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
}

# container_type ROOT: Debian's SELinux policy has no container module
# (container-selinux's types); this minimal one declares container_t, the
# type crius labels a container with when selinux_options leave it empty,
# so the SELinux lane can use it. Valid is all a permissive node needs.
container_type() {
  local root=$1
  mkdir -p "$root/usr/share/selinux/crius"
  cat >"$root/usr/share/selinux/crius/crius_container.cil" <<'EOF'
(type container_t)
(roletype system_r container_t)
EOF
  chroot "$root" semodule -s default -i /usr/share/selinux/crius/crius_container.cil ||
    { log "semodule -i crius_container.cil failed"; exit 1; }
}

tmp=""
cleanup() {
  [ -n "$tmp" ] || return 0
  # debootstrap mounts /proc and /sys in the target; never leave them.
  findmnt -rn -o TARGET | grep "^$tmp/" | sort -r | xargs -r umount -l || true
  rm -rf "$tmp"
}
trap cleanup EXIT

build() {
  local dir rc=0
  tmp=$(mktemp -d "$cache/build.XXXXXX")
  dir=$tmp/root
  local start=$SECONDS
  log "debootstrap bookworm (minbase + ${#packages[@]} packages) into $dir"
  debootstrap --variant=minbase --include="$(
    IFS=,
    echo "${packages[*]}"
  )" bookworm "$dir" "$(mirror)" >"$tmp/debootstrap.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    [ -f "$dir/debootstrap/debootstrap.log" ] && tail -n 30 "$dir/debootstrap/debootstrap.log" >&2
    log "debootstrap failed ($rc)"
    exit 1
  fi
  container_type "$dir"
  configure "$dir"
  log "making the ext4 image"
  truncate -s 8G "$tmp/rootfs.img"
  mkfs.ext4 -q -F -L crius-vm -d "$dir" "$tmp/rootfs.img"
  mv "$tmp/rootfs.img" "$image"
  log "built $image in $((SECONDS - start)) s ($(du -sxh --apparent-size "$dir" | cut -f1) of files)"
}

mkdir -p "$cache"
exec 9>"$cache/rootfs.lock"
flock 9
if [ -f "$image" ]; then
  log "cached: $image"
else
  build
fi
# Images of older recipes nobody booted for a week.
find "$cache" -maxdepth 1 -name 'rootfs-*.img' ! -newermt '-7 days' ! -path "$image" -delete
touch "$image"
echo "$image"
