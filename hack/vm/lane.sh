#!/usr/bin/env bash
# The VM lane (issue 12): crius's integration tests on the node most
# Kubernetes users run -- cgroup v2 only, systemd as PID 1, AppArmor -- which
# this machine (cgroup v1 hybrid, no systemd) cannot be. Builds the worktree
# this script is in on the host, boots a Debian guest under QEMU (TCG: KVM
# cannot run a stock kernel here) and runs, for each cgroup driver,
# `crius check` and the selected test binaries in it. Streams the guest's
# output, prints the timings and exits with the guest's status. A host that
# cannot run the guest fails loudly; nothing is skipped.
#
# Usage: hack/vm/lane.sh [options]
#   --driver cgroupfs|systemd|both  cgroup drivers to test (default both)
#   --tests 'pods containers'       test binaries, tests/NAME.rs (default: pods containers)
#   --filter SUBSTR                 only tests whose name contains SUBSTR
#   --shell-cmd 'CMD'               run CMD (bash, in the worktree) in the guest
#                                   instead of the tests; $TARGET, $WORKTREE are set
#   --share DIR                     also mount host DIR at the same path in the guest
#                                   (read-write; repeatable), e.g. for critest
#   --lsm apparmor|selinux          the guest's major LSM (default apparmor);
#                                   selinux boots permissive and sets
#                                   CRIUS_TEST_REQUIRE_SELINUX=1
#   --timeout MIN                   kill the guest after MIN minutes (default 60)
#   --keep                          keep the run directory (console log, output)
# Environment: CRIUS_VM_CPUS (2), CRIUS_VM_MEM (MiB, 4096), CRIUS_VM_CACHE
# (/var/cache/crius-vm), CRIUS_VM_TEST_TIMEOUT (s per test binary, 1800),
# CARGO_TARGET_DIR (as for cargo). Needs root. See hack/vm/README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CRIUS_VM_CACHE:-/var/cache/crius-vm}
drivers="cgroupfs systemd"
tests="pods containers"
tests_given=""
filter=""
shell_cmd=""
timeout_min=60
keep=""
lsm=apparmor
extra_shares=()

die() {
  echo "lane: $*" >&2
  exit 1
}
usage() {
  sed -n '/^# Usage:/,/^# CARGO_TARGET_DIR/s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
  --driver)
    case ${2:-} in
    cgroupfs | systemd) drivers=$2 ;;
    both) drivers="cgroupfs systemd" ;;
    *) usage ;;
    esac
    shift 2
    ;;
  --tests) tests=${2:?} tests_given=1 && shift 2 ;;
  --filter) filter=${2:?} && shift 2 ;;
  --shell-cmd) shell_cmd=${2:?} && shift 2 ;;
  --share) extra_shares+=("$(cd "${2:?}" && pwd)") && shift 2 ;;
  --lsm)
    case ${2:-} in
    apparmor | selinux) lsm=$2 ;;
    *) usage ;;
    esac
    shift 2
    ;;
  --timeout) timeout_min=${2:?} && shift 2 ;;
  --keep) keep=1 && shift ;;
  -h | --help) usage ;;
  *) usage ;;
  esac
done
[ "$(id -u)" = 0 ] || die "needs root (apt-get, debootstrap, the guest's image cache)"

test_args=()
for t in $tests; do
  [ -f "$repo/tests/$t.rs" ] ||
    die "no tests/$t.rs; test binaries: $(cd "$repo/tests" && printf '%s\n' *.rs | sed 's/\.rs$//' | xargs)"
  test_args+=(--test "$t")
done

lane_start=$SECONDS
tmp=$(mktemp -d /tmp/crius-vm.XXXXXX)
share=$tmp/share
mkdir -p "$share"
qemu_pid="" tail_pid=""
# shellcheck disable=SC2317 # stop and cleanup run from the EXIT trap
stop() { # stop PID: end a child this script started
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
  stop "$qemu_pid"
  stop "$tail_pid"
  if [ -n "$keep" ]; then
    echo "lane: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Host packages (only apt when something is missing).
host_packages=(busybox-static cpio debootstrap e2fsprogs kmod linux-image-amd64 python3 qemu-system-x86)
missing=()
for p in "${host_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "lane: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
qemu-system-x86_64 -accel help 2>/dev/null | grep -qx tcg || die "this QEMU cannot run TCG guests"
kernel=$(printf '%s\n' /boot/vmlinuz-*-amd64 | sort -V | tail -n1)
[ -f "$kernel" ] || die "no /boot/vmlinuz-*-amd64 (linux-image-amd64)"
kver=${kernel#/boot/vmlinuz-}
[ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver for $kernel"

# 2. The guest's root image (cached) and initramfs.
step=$SECONDS
image=$("$here/rootfs.sh")
rootfs_s=$((SECONDS - step))
"$here/initramfs.sh" "$kver" "$tmp/initrd.gz"

# 3. crius and the test binaries, built once on the host.
step=$SECONDS
cd "$repo"
target=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
echo "lane: building $repo into $target" >&2
cargo build --bins
: >"$share/tests.list"
if [ -z "$shell_cmd" ] || [ -n "$tests_given" ]; then
  cargo test --no-run --message-format=json "${test_args[@]}" >"$tmp/cargo.json"
  # shellcheck disable=SC2086 # one argument per test binary
  python3 - "$tmp/cargo.json" $tests >"$share/tests.list" <<'EOF'
import json, sys
exes = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        exes[m["target"]["name"]] = m["executable"]
for name in sys.argv[2:]:
    print(name, exes[name])
EOF
fi
build_s=$((SECONDS - step))
# The test images' blobs, built on the host (fast) for the guest's registry.
CRIUS_TESTENV_DIR=$cache/testenv python3 hack/testenv/images.py --no-push >/dev/null

# 4. Boot the guest; it runs guest.sh as a oneshot unit and powers off.
{
  printf '%s=%q\n' WORKTREE "$repo" TARGET "$target" DRIVERS "$drivers" FILTER "$filter" \
    SHELL_CMD "$shell_cmd" TEST_TIMEOUT "${CRIUS_VM_TEST_TIMEOUT:-1800}" \
    SHARES "${extra_shares[*]}" LSM "$lsm"
} >"$share/lane.env"
cp "$here/guest.sh" "$share/guest.sh"
: >"$share/output.log"
# The major LSM: AppArmor (Debian's default), or SELinux in permissive mode
# (the image's files are not labelled; a label still has to be one the
# loaded policy knows).
case $lsm in
apparmor) lsm_args="apparmor=1 security=apparmor" ;;
selinux) lsm_args="security=selinux selinux=1 enforcing=0" ;;
esac
cpus=${CRIUS_VM_CPUS:-2}
mem=${CRIUS_VM_MEM:-4096}
qemu=(qemu-system-x86_64 -name crius-vm-lane -accel tcg -cpu max -smp "$cpus" -m "$mem"
  -nodefaults -display none -no-reboot -nic none
  -serial "file:$tmp/console.log"
  -drive "file=$image,format=raw,if=virtio,snapshot=on"
  -kernel "$kernel" -initrd "$tmp/initrd.gz"
  -append "console=ttyS0 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all $lsm_args panic=-1 loglevel=4")
virtfs() { # virtfs TAG DIR [,readonly=on]
  qemu+=(-virtfs "local,path=$2,mount_tag=$1,security_model=passthrough${3:-}")
}
virtfs lane "$share"
virtfs modules /lib/modules ,readonly=on
virtfs src "$repo" ,readonly=on
virtfs target "$target" ,readonly=on
virtfs testenv "$cache/testenv/cache" ,readonly=on
for i in "${!extra_shares[@]}"; do
  virtfs "share$i" "${extra_shares[$i]}"
done
echo "lane: booting kernel $kver under QEMU TCG ($cpus CPUs, $mem MiB), cgroup v2, systemd, $lsm" >&2
boot_start=$SECONDS
"${qemu[@]}" &
qemu_pid=$!
tail -n +1 -F --pid="$qemu_pid" "$share/output.log" 2>/dev/null &
tail_pid=$!
boot_s="" timed_out=""
while kill -0 "$qemu_pid" 2>/dev/null; do
  [ -z "$boot_s" ] && [ -s "$share/output.log" ] && boot_s=$((SECONDS - boot_start))
  if [ $((SECONDS - boot_start)) -ge $((timeout_min * 60)) ]; then
    timed_out=1
    kill "$qemu_pid"
  fi
  sleep 0.5
done
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=""
wait "$tail_pid" || true
tail_pid=""
guest_s=$((SECONDS - boot_start))

status=""
[ -f "$share/status" ] && status=$(cat "$share/status")
if [ -z "$status" ]; then
  echo "lane: the guest gave no exit status (QEMU exited $qemu_rc${timed_out:+, killed after $timeout_min min}); end of its console:" >&2
  # (without systemd's progress spinner)
  grep -av 'Job .* running (' "$tmp/console.log" | tail -n 40 >&2 || true
  status=1
fi
echo "lane: rootfs $rootfs_s s, host build $build_s s, boot ${boot_s:-?} s (QEMU start to the lane unit), guest $guest_s s, total $((SECONDS - lane_start)) s; guest exit status $status"
exit "$status"
