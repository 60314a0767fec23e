#!/bin/bash
# The localmount benchmark's baseline for qcow2: qemu-nbd serves the image, nbdfuse
# exposes it as a file, a loop device maps the partition, and the request is done by hand.
# Arguments as for manual-raw.sh: IMAGE OFFSET SIZE INPUT_DIR.
set -euo pipefail
image=$1 offset=$2 size=$3 inputs=$4

run=$(mktemp -d)
mkdir "$run/fuse" "$run/mnt"
qemu-nbd --socket="$run/nbd.sock" --format=qcow2 "$image" &
nbd_pid=$!
while [ ! -S "$run/nbd.sock" ]; do sleep 0.005; done
nbdfuse "$run/fuse/disk" --unix "$run/nbd.sock" &
fuse_pid=$!
while [ ! -f "$run/fuse/disk" ]; do sleep 0.005; done

dev=$(losetup --find --show --offset "$offset" --sizelimit "$size" "$run/fuse/disk")
mount -o nosuid,nodev,noexec "$dev" "$run/mnt"
mnt=$run/mnt

mkdir -p -m 0700 "$mnt/root/.ssh"
{ echo "# SSH key added by hand"; cat "$inputs/key.pub"; } >> "$mnt/root/.ssh/authorized_keys"
chmod 0600 "$mnt/root/.ssh/authorized_keys"
hash=$(cat "$inputs/hash")
sed -i "s|^root:[^:]*:|root:${hash}:|" "$mnt/etc/shadow"
mkdir -p "$mnt/etc/network"
cp "$inputs/interfaces" "$mnt/etc/network/interfaces"
cp "$inputs/meta.json" "$mnt/meta.js"
mkdir -p "$mnt/opt/app/conf"
cp "$inputs/app.cfg" "$mnt/opt/app/conf/app.cfg"

umount "$mnt"
losetup -d "$dev"
fusermount3 -u "$run/fuse"
wait "$fuse_pid" || true
wait "$nbd_pid" || true
rm -r "$run"
