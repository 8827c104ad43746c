#!/usr/bin/env bash
# Builds the VM lane's initramfs for kernel KVER into OUT (gzip'd cpio).
#
# Debian's kernel has virtio, virtio_blk, ext4 and 9p as modules, so the root
# cannot be mounted without help: a static busybox /init loads them (the
# dependency order comes from the host's modprobe), mounts the root image
# (/dev/vda), the lane's work share at /lane and the host's modules at
# /usr/lib/modules (so modprobe works in the guest), then switch_roots to
# systemd (switch_root, not chroot: user namespaces refuse a chroot).
# Usage: hack/vm/initramfs.sh KVER OUT. Takes about a second.
set -euo pipefail

kver=$1
out=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/bin" "$tmp/modules"
cp /bin/busybox "$tmp/bin/busybox"
modprobe -S "$kver" -a --show-depends virtio_pci virtio_blk ext4 9pnet_virtio 9p |
  awk '$1 == "insmod" && !seen[$2]++ { print $2 }' >"$tmp/list"
while read -r ko; do
  name=$(basename "$ko")
  cp "$ko" "$tmp/modules/$name"
  echo "$name" >>"$tmp/modules/order"
done <"$tmp/list"

cat >"$tmp/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
  echo "initramfs: $*"
  poweroff -f
}
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
  insmod "/modules/$m" || echo "initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/vda /newroot || fail "cannot mount the root image /dev/vda"
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $opts lane /newroot/lane || fail "cannot mount the lane share"
mount -t 9p -o $opts,ro modules /newroot/usr/lib/modules || fail "cannot mount the modules share"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
chmod 0755 "$tmp/init"
(cd "$tmp" && rm list && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
