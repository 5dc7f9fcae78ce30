#!/bin/sh
# Install pyxapi as the toolstack of a Debian (bookworm) Xen host, from a pyxapi checkout or
# release tarball: Debian packages for Xen's tools and libvirt's libxl driver, pyxapi in a venv
# under /opt/pyxapi, and the systemd unit. Run as root in dom0 (booted under Xen).
# Usage: sh packaging/install-dom0.sh [SOURCE_DIR]   (default: this checkout)
set -eu
SRC=$(readlink -f "${1:-$(dirname "$0")/..}")
[ "$(id -u)" = 0 ] || { echo "install-dom0: run as root" >&2; exit 1; }
grep -q control_d /proc/xen/capabilities 2>/dev/null || echo "install-dom0: warning: not running in a Xen dom0 (the xen driver needs one)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends xen-utils-4.17 xenstore-utils libvirt-daemon-system \
  libvirt-daemon-driver-xen qemu-system-xen python3 python3-venv python3-libvirt qemu-utils iproute2 nftables busybox
# A venv that also sees Debian's python3-libvirt (libvirt-python from PyPI would need a compiler).
python3 -m venv --system-site-packages /opt/pyxapi
/opt/pyxapi/bin/pip install -q --upgrade pip
/opt/pyxapi/bin/pip install -q "$SRC"
install -m 0644 "$SRC/packaging/systemd/pyxapi.service" /etc/systemd/system/pyxapi.service
[ -e /etc/default/pyxapi ] || install -m 0644 "$SRC/packaging/default-pyxapi" /etc/default/pyxapi
mkdir -p /var/lib/pyxapi
systemctl daemon-reload
systemctl enable --now libvirtd pyxapi
echo "pyxapi installed; set root's password with: /opt/pyxapi/bin/pyxapi passwd root --data-dir /var/lib/pyxapi"
