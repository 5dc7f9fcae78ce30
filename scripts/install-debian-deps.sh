#!/bin/sh
# Install the Debian packages pyxapi's real drivers and tests need, when missing.
# Only root can install; others are told what is missing.
set -eu
PKGS="qemu-system-x86 qemu-utils busybox-static openvswitch-switch iproute2 e2fsprogs nftables ovmf qemu-block-extra nfs-ganesha nfs-ganesha-vfs tgt libiscsi-bin genisoimage"
PKGS="$PKGS debootstrap util-linux"  # the Xen test host image (images/build-xen-host)
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "pyxapi: missing Debian packages:$missing (run as root to install them)" >&2
  exit 0
fi
echo "pyxapi: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends $missing >/dev/null
