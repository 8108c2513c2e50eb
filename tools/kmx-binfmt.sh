#!/usr/bin/env bash
# kmx-binfmt.sh ARCH — make sure binfmt_misc can run ARCH's binaries through qemu-user, or say in one line
# why not and exit 1.  The arm64 guest's root file system is built by debootstrap, whose second stage runs
# arm64 binaries in a chroot on this host: without the binfmt entry it fails with "Exec format error".
#
# Why this is needed: qemu-user-static's postinst registers its binary formats only when binfmt-support is
# already configured, so when the two are installed in one apt transaction on a fresh machine, qemu-aarch64
# is missing from update-binfmts' database and `update-binfmts --enable` enables nothing.  Importing the
# format file that qemu-user-static ships (/usr/share/binfmts/qemu-aarch64) mends it.
#
# Environment (for tests): KMX_BINFMT_DIR (default /proc/sys/fs/binfmt_misc).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: kmx-binfmt.sh ARCH (arm64, amd64, ...)" >&2; exit 2; }
case $1 in
  arm64|aarch64) q=aarch64 ;;
  amd64|x86_64) q=x86_64 ;;
  *) q=$1 ;;
esac
dir=${KMX_BINFMT_DIR:-/proc/sys/fs/binfmt_misc}
[ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null || true
if [ ! -e "$dir/qemu-$q" ]; then
  update-binfmts --import "qemu-$q" >/dev/null 2>&1 || true
  update-binfmts --enable "qemu-$q" >/dev/null 2>&1 || true
fi
if [ ! -e "$dir/qemu-$q" ]; then
  echo "kmx-binfmt: binfmt_misc has no qemu-$q entry even after 'update-binfmts --import qemu-$q': install qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support), then run 'update-binfmts --import qemu-$q'" >&2
  exit 1
fi
echo "kmx-binfmt: qemu-$q registered ($(sed -n 1p "$dir/qemu-$q"))"
