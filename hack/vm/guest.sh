#!/bin/bash
# Runs inside the VM lane's guest (cgroup v2 only, systemd as PID 1), started
# once by crius-lane.service; the guest powers off when it returns. Reads its
# orders from /lane/lane.env (written by hack/vm/lane.sh), mounts the host's
# worktree and target directory at their host paths (test binaries carry
# those paths), then either runs one shell command or, for each cgroup
# driver, `crius check` and the selected test binaries. Its output goes to
# /lane/output.log (the host streams it), its exit status to /lane/status.
set -uo pipefail

set -a
# shellcheck source=/dev/null
. /lane/lane.env
set +a
echo "guest: systemd started the lane $(cut -d' ' -f1 /proc/uptime) s after the kernel"

status() {
  echo "$1" >/lane/status
  sync
  exit "$1"
}

# share TAG DIR [OPTS]: mount a 9p share; read-only ones are cached (the host
# does not change them meanwhile).
share() {
  mkdir -p "$2"
  mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,${3:-cache=loose,ro}" "$1" "$2" ||
    { echo "guest: cannot mount share $1 at $2"; status 2; }
}
share src "$WORKTREE"
share target "$TARGET"
i=0
for dir in $SHARES; do
  share "share$i" "$dir" rw
  i=$((i + 1))
done
modprobe overlay || { echo "guest: modprobe overlay failed"; status 2; }

echo "guest: kernel $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)," \
  "controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
echo "guest: $(systemctl --version | head -n1), AppArmor $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)," \
  "$(nproc) CPUs, $(free -m | awk '/^Mem:/ { print $2 }') MiB"
# --lsm selinux: the kernel booted with SELinux (permissive) and systemd
# loaded the policy; the tests must then run their SELinux cases (a test
# that finds no SELinux fails instead of saying it did not run).
if [ "${LSM:-apparmor}" = selinux ]; then
  enforce=$(cat /sys/fs/selinux/enforce 2>/dev/null) ||
    { echo "guest: booted for SELinux, but /sys/fs/selinux/enforce is missing"; status 2; }
  echo "guest: SELinux enforce=$enforce, policy $(sestatus 2>/dev/null | sed -n 's/^Loaded policy name:[[:space:]]*//p')," \
    "this shell's context $(tr -d '\0' </proc/self/attr/current)"
  export CRIUS_TEST_REQUIRE_SELINUX=1
fi
cd "$WORKTREE" || status 2

# The test images' blobs, built on the host, so that hack/testenv/up.sh (run
# by the tests, or by hand in --shell-cmd) only uploads them to the guest's
# own registries (on its loopback).
mkdir -p /var/lib/crius-testenv/cache
share testenv /mnt/testenv
cp -a /mnt/testenv/. /var/lib/crius-testenv/cache/
umount /mnt/testenv

if [ -n "$SHELL_CMD" ]; then
  echo "guest: running: $SHELL_CMD"
  bash -c "$SHELL_CMD"
  status $?
fi

start=$SECONDS
if ! hack/testenv/up.sh >/tmp/testenv.log 2>&1; then
  cat /tmp/testenv.log
  echo "guest: hack/testenv/up.sh failed"
  status 2
fi
echo "guest: test registry up in $((SECONDS - start)) s"

rc=0
summary=()
for driver in $DRIVERS; do
  export CRIUS_TEST_CGROUP_DRIVER=$driver
  echo
  echo "======== cgroup $(stat -fc %T /sys/fs/cgroup), driver $driver: crius check"
  printf '[runtime]\ncgroup_driver = "%s"\n' "$driver" >"/tmp/check-$driver.toml"
  if "$TARGET/debug/crius" --config "/tmp/check-$driver.toml" check; then
    summary+=("$(printf '%-9s %-16s %6s  %s' "$driver" "crius check" "" ok)")
  else
    rc=1
    summary+=("$(printf '%-9s %-16s %6s  %s' "$driver" "crius check" "" FAILED)")
  fi
  while read -r -u 3 name bin; do
    echo
    echo "======== driver $driver: tests/$name.rs ${FILTER:+(filter $FILTER)}"
    start=$SECONDS
    timeout --kill-after=30 "$TEST_TIMEOUT" "$bin" --show-output ${FILTER:+"$FILTER"} 2>&1 | tee /tmp/test.out
    trc=${PIPESTATUS[0]}
    took=$((SECONDS - start))
    result=$(grep -a '^test result:' /tmp/test.out | tail -n1)
    [ "$trc" = 124 ] && result="timed out after $TEST_TIMEOUT s"
    [ -n "$result" ] || result="exit status $trc"
    [ "$trc" = 0 ] || rc=1
    summary+=("$(printf '%-9s %-16s %5ss  %s' "$driver" "$name" "$took" "$result")")
  done 3</lane/tests.list
done

echo
echo "======== summary (cgroup $(stat -fc %T /sys/fs/cgroup), $(nproc) CPUs, TCG)"
printf '%s\n' "${summary[@]}" | tee /lane/summary.txt
status $rc
