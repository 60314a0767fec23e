#!/bin/bash
# The localmount benchmark's baseline: the request done by hand on a raw image, the way
# an operator would script it. Arguments: IMAGE OFFSET SIZE INPUT_DIR, where INPUT_DIR
# holds key.pub, hash (the precomputed root password hash), interfaces, meta.json, app.cfg.
set -euo pipefail
image=$1 offset=$2 size=$3 inputs=$4

mnt=$(mktemp -d)
dev=$(losetup --find --show --offset "$offset" --sizelimit "$size" "$image")
mount -o nosuid,nodev,noexec "$dev" "$mnt"

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
rmdir "$mnt"
