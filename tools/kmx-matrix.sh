#!/usr/bin/env bash
# kernel-matrix.sh — run a command inside a throw-away QEMU VM booted with a
# given Debian kernel, with a project checkout copied in.
# (Vendored copy of the team's shared kernel-matrix.sh, ../shared/tools/kernel-matrix.sh beside
# this checkout, so that CI on a clean clone has it; tools/kmx-tests.sh drives it.  Keep the two in sync:
# tests/test_kmx_tools.py checks that they differ only in this note, where the shared copy is present.)
#
# Usage:
#   kernel-matrix.sh [--prepare] KERNEL [-- COMMAND [ARGS...]]
#   kernel-matrix.sh --list
#
# KERNEL is one of:
#   6.1 | 6.12            shorthand: Debian bookworm's 6.1 / bookworm-backports
#                         (via security) 6.12, flavour $KMX_FLAVOUR
#   linux-image-...       a Debian binary package name (meta packages resolved)
#   /path/to/linux-image-*.deb   a local kernel package
#
# COMMAND runs as root inside the guest, cwd = the copied project
# (/kmx/project), with tracefs/debugfs/bpffs/cgroup2 mounted.  Its stdout+stderr
# come back on stdout; the script exits with COMMAND's exit status
# (124 = timeout, 125 = VM/infra failure).  Anything the command writes to
# /kmx/out is copied back to $KMX_OUT on the host if that is set.
#
# Examples:
#   kernel-matrix.sh 6.1  -- python3 -m pytest -q tests        # project = git top-level of $PWD
#   kernel-matrix.sh 6.12 -- python3 -c 'import os; print(os.uname().release)'
#   KMX_OUT=./kmx-out kernel-matrix.sh 6.1 -- bash kmx-probe.sh /kmx/out   # probe + BTF copy-out
#   KMX_ARCH=arm64 kernel-matrix.sh 6.12 -- uname -m             # TCG; needs `dpkg --add-architecture arm64; apt-get update`
#   KMX_FLAVOUR=amd64 kernel-matrix.sh 6.1 -- ...                # generic (non-cloud) flavour
# First use builds the rootfs (~1 min amd64, ~5 min arm64 via qemu-user) and
# caches it; needs root (debootstrap, chroot).  The guest has NO network:
# test dependencies must come from Debian packages (KMX_EXTRA_PKGS) or be
# vendored in the project.  Rootfs writes are discarded (qemu snapshot=on).
#
# Environment:
#   KMX_CACHE     cache dir (default: ${TMPDIR:-/tmp}/kernel-matrix-cache)
#   KMX_PROJECT   host dir copied into the guest (default: git top-level of $PWD,
#                 else $PWD).  Git checkouts: tracked + untracked-not-ignored
#                 files only (KMX_WITH_GIT=1 also copies .git).
#   KMX_ARCH      amd64 (default) | arm64 (TCG emulation, slow)
#   KMX_FLAVOUR   kernel flavour for shorthands (default: cloud-amd64 / arm64)
#   KMX_ACCEL     auto (default) | kvm | tcg
#   KMX_MEM       guest MiB (default 2048)      KMX_CPUS  vCPUs (default 2)
#   KMX_TIMEOUT   seconds for the whole VM run (default 900)
#   KMX_OUT       host dir to receive the guest's /kmx/out
#   KMX_SUITE     Debian suite for the rootfs (default bookworm)
#   KMX_MIRROR    Debian mirror (default: the first URI in the host's apt sources)
#   KMX_EXTRA_PKGS  extra Debian packages for the rootfs (space separated)
#   KMX_VERBOSE=1 show the raw serial console on stderr
#   KMX_QUIET=1   no [kmx] progress/timing lines on stderr
#   KMX_KEEP=1    keep the per-run dir (job image, console log)
# Needs (host): bash, qemu-system-x86 (or -arm), debootstrap, e2fsprogs
# (mkfs.ext4 -d, debugfs), cpio, gzip, xz-utils, kmod (depmod), apt-get,
# util-linux (flock); for arm64 also qemu-user-static + binfmt-support.
set -euo pipefail

KMX_CACHE=${KMX_CACHE:-${TMPDIR:-/tmp}/kernel-matrix-cache}
KMX_ARCH=${KMX_ARCH:-amd64}
KMX_ACCEL=${KMX_ACCEL:-auto}
KMX_MEM=${KMX_MEM:-2048}
KMX_CPUS=${KMX_CPUS:-2}
KMX_TIMEOUT=${KMX_TIMEOUT:-900}
KMX_SUITE=${KMX_SUITE:-bookworm}
KMX_MIRROR=${KMX_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}
[ -n "$KMX_MIRROR" ] || KMX_MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
case $KMX_ARCH in
  amd64) KMX_FLAVOUR=${KMX_FLAVOUR:-cloud-amd64} ;;
  arm64) KMX_FLAVOUR=${KMX_FLAVOUR:-arm64} ;;
  *) echo "kernel-matrix: unsupported KMX_ARCH=$KMX_ARCH" >&2; exit 125 ;;
esac
BASE_PKGS="python3 python3-venv python3-pip python3-pytest bpftool bpftrace kmod procps busybox-static"
PKGS="$BASE_PKGS ${KMX_EXTRA_PKGS:-}"

log() { [ -n "${KMX_QUIET:-}" ] || echo "[kmx] $*" >&2; }
die() { echo "[kmx] error: $*" >&2; exit 125; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

mkdir -p "$KMX_CACHE"/{debs,kernels,runs}
# per-resource locks so parallel runs (and a slow arm64 rootfs build) do not serialise
lock() { exec 9>"$KMX_CACHE/.lock-$1"; flock 9; }
unlock() { flock -u 9; exec 9>&-; }

# ---------------------------------------------------------------- rootfs ---
rootfs_img() {
  local hash dir
  hash=$(echo "$KMX_SUITE $KMX_ARCH $PKGS" | tr ' ' '\n' | sort -u | md5sum | cut -c1-8)
  dir="$KMX_CACHE/rootfs-$KMX_SUITE-$KMX_ARCH-$hash"
  ROOTFS_DIR=$dir
  ROOTFS_IMG=$dir.img
  [ -f "$ROOTFS_IMG" ] && return 0
  lock "rootfs-$KMX_SUITE-$KMX_ARCH-$hash"
  [ -f "$ROOTFS_IMG" ] && { unlock; return 0; }
  local t0; t0=$(now)
  log "building $KMX_SUITE/$KMX_ARCH rootfs (once) in $dir"
  rm -rf "$dir.tmp"
  local args=(--variant=minbase --arch="$KMX_ARCH" --include="$(echo $PKGS | tr ' ' ,)")
  if [ "$KMX_ARCH" != "$(dpkg --print-architecture)" ]; then
    # second stage runs under qemu-user via binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    # qemu-user-static's postinst registers its formats only when binfmt-support was configured first;
    # installed together on a fresh machine, qemu-aarch64 can be missing from the database: import it.
    local qarch=$KMX_ARCH; [ "$qarch" = arm64 ] && qarch=aarch64
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$qarch" ] || update-binfmts --import "qemu-$qarch" >/dev/null 2>&1 || true
    update-binfmts --enable >/dev/null 2>&1 || true
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$qarch" ] \
      || die "binfmt_misc has no qemu-$qarch entry: install qemu-user-static and binfmt-support, then run update-binfmts --import qemu-$qarch"
  fi
  debootstrap "${args[@]}" "$KMX_SUITE" "$dir.tmp" "$KMX_MIRROR" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; die "debootstrap failed (log: $dir.log)"; }
  mkdir -p "$dir.tmp/kmx"
  echo kmx >"$dir.tmp/etc/hostname"
  printf 'proc /proc proc defaults 0 0\n' >"$dir.tmp/etc/fstab"
  rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/*
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  make_ext4 "$dir" "$ROOTFS_IMG.tmp" kmxroot 2048
  mv "$ROOTFS_IMG.tmp" "$ROOTFS_IMG"
  log "rootfs ready in $(since "$t0")s"
  unlock
}

# make_ext4 SRC_DIR IMG LABEL EXTRA_MIB  — sparse ext4 image populated from SRC_DIR
make_ext4() {
  local src=$1 img=$2 label=$3 extra=$4 used
  used=$(du -sm "$src" | cut -f1)
  rm -f "$img"; truncate -s "$(( used * 12 / 10 + extra + 64 ))M" "$img"
  mkfs.ext4 -q -F -L "$label" -E root_owner=0:0 -d "$src" "$img" \
    || die "mkfs.ext4 -d $src failed"
}

# ---------------------------------------------------------------- kernel ---
apt_arch_suffix() { [ "$KMX_ARCH" = "$(dpkg --print-architecture)" ] && echo "" || echo ":$KMX_ARCH"; }

resolve_pkg() {   # shorthand / meta package -> concrete linux-image package name (cached 1 day)
  local spec=$1 pkg dep memo="$KMX_CACHE/debs/resolved-$KMX_ARCH-$KMX_FLAVOUR-$1"
  if [ -s "$memo" ] && [ -z "$(find "$memo" -mmin +1440)" ]; then cat "$memo"; return; fi
  case $spec in
    6.1)  pkg=linux-image-$KMX_FLAVOUR ;;
    6.12) pkg=linux-image-6.12-$KMX_FLAVOUR ;;
    *)    pkg=$spec ;;
  esac
  for _ in 1 2 3; do
    dep=$(apt-cache depends --no-recommends --no-suggests "$pkg$(apt_arch_suffix)" 2>/dev/null \
          | awk '$1=="Depends:" && $2 ~ /^linux-image-/ {sub(/:.*/,"",$2); print $2; exit}')
    [ -n "$dep" ] || break
    pkg=$dep
  done
  echo "$pkg" | tee "$memo"
}

# sets KDIR KVER VMLINUZ
kernel_prepare() {
  local spec=$1 deb
  lock "debs"
  if [[ $spec == *.deb ]]; then
    deb=$(readlink -f "$spec")
  else
    local pkg; pkg=$(resolve_pkg "$spec")
    deb=$(ls "$KMX_CACHE/debs/${pkg}_"*"_$KMX_ARCH.deb" 2>/dev/null | tail -1 || true)
    if [ -z "$deb" ]; then
      log "downloading $pkg ($KMX_ARCH)"
      (cd "$KMX_CACHE/debs" && apt-get download -q "$pkg$(apt_arch_suffix)" >/dev/null 2>&1) \
        || die "apt-get download $pkg$(apt_arch_suffix) failed (apt-get update? dpkg --add-architecture $KMX_ARCH?)"
      deb=$(ls "$KMX_CACHE/debs/${pkg}_"*"_$KMX_ARCH.deb" | tail -1)
    fi
  fi
  unlock
  local key; key=$(basename "$deb" .deb)
  KDIR="$KMX_CACHE/kernels/$key"
  lock "kernel-$key"
  if [ ! -f "$KDIR/.done" ]; then
    log "extracting $key"
    rm -rf "$KDIR"; mkdir -p "$KDIR/root"
    dpkg-deb -x "$deb" "$KDIR/root"
    KVER=$(ls "$KDIR/root/lib/modules" | head -1)
    [ -n "$KVER" ] || die "no lib/modules in $deb"
    /usr/sbin/depmod -b "$KDIR/root" "$KVER" 2>/dev/null || depmod -b "$KDIR/root" "$KVER"
    cp "$KDIR/root/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
    cp "$KDIR/root/boot/config-$KVER" "$KDIR/config"
    echo "$KVER" >"$KDIR/kver"
    # full module tree as a small read-only disk, mounted at /lib/modules/$KVER
    cp "$KDIR/config" "$KDIR/root/lib/modules/$KVER/kmx-config"   # -> /boot/config-$KVER in the guest
    make_ext4 "$KDIR/root/lib/modules/$KVER" "$KDIR/modules.img" kmxmods 16
    touch "$KDIR/.done"
  fi
  KVER=$(cat "$KDIR/kver")
  VMLINUZ="$KDIR/vmlinuz"
  unlock
}

# initramfs: arch-matching static busybox from the rootfs + the few modules
# needed to reach the virtio disks (cloud kernels build virtio_blk as a module).
initrd_prepare() {
  INITRD="$KDIR/initrd-kmx.gz"
  [ -f "$INITRD" ] && [ "$INITRD" -nt "$0" ] && return 0
  lock "kernel-$(basename "$KDIR")"
  local st="$KDIR/initrd.d" md="$KDIR/root/lib/modules/$KVER"
  rm -rf "$st"; mkdir -p "$st"/{bin,dev,proc,sys,newroot,mods}
  cp "$ROOTFS_DIR/bin/busybox" "$st/bin/busybox"
  declare -A seen=()
  local order=()
  add_mod() {
    local rel=$1 d
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    for d in $(awk -v m="$rel:" '$1==m {$1=""; print}' "$md/modules.dep"); do add_mod "$d"; done
    order+=("$rel")
  }
  local name rel
  for name in virtio_pci virtio_mmio virtio_blk crc32c_generic crc32c_intel ext4; do
    rel=$(awk -F: -v n="$name" '{f=$1; sub(/.*\//,"",f); sub(/\.ko(\.xz|\.zst|\.gz)?$/,"",f); gsub(/-/,"_",f); if (f==n) {print $1; exit}}' "$md/modules.dep")
    [ -n "$rel" ] && add_mod "$rel"
  done
  : >"$st/mods/order"
  for rel in "${order[@]}"; do
    local base; base=$(basename "$rel"); base=${base%%.ko*}.ko
    case $rel in
      *.ko.xz)  xz -dc "$md/$rel" >"$st/mods/$base" ;;
      *.ko.zst) zstd -qdc "$md/$rel" >"$st/mods/$base" ;;
      *.ko.gz)  gzip -dc "$md/$rel" >"$st/mods/$base" ;;
      *)        cp "$md/$rel" "$st/mods/$base" ;;
    esac
    echo "$base" >>"$st/mods/order"
  done
  cat >"$st/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done
dev() { # LABEL FALLBACK
  i=0; while [ $i -lt 100 ]; do
    d=$(findfs LABEL=$1 2>/dev/null) && { echo $d; return; }
    i=$((i+1)); sleep 0.05
  done; echo $2; }
root=$(dev kmxroot /dev/vda)
if ! mount -t ext4 -o rw $root /newroot; then
  echo "KMX-INITRAMFS: cannot mount root ($root)"; cat /proc/partitions; poweroff -f
fi
mount -t ext4 -o rw $(dev kmxjob /dev/vdb) /newroot/kmx || { echo "KMX-INITRAMFS: no job disk"; poweroff -f; }
mods=$(dev kmxmods /dev/vdc); kv=$(uname -r)
mkdir -p /newroot/lib/modules/$kv && mount -t ext4 -o ro $mods /newroot/lib/modules/$kv
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/bash /kmx/guest.sh
EOF
  chmod +x "$st/init"
  (cd "$st" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  unlock
}

# ------------------------------------------------------------------- job ---
job_prepare() {
  RUN=$(mktemp -d "$KMX_CACHE/runs/run.XXXXXX")
  local st="$RUN/job" proj
  mkdir -p "$st/project" "$st/out"
  proj=${KMX_PROJECT:-$(git rev-parse --show-toplevel 2>/dev/null || pwd)}
  proj=$(readlink -f "$proj")
  if git -C "$proj" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
      && [ "$(git -C "$proj" rev-parse --show-toplevel)" = "$proj" ]; then
    (cd "$proj" && git ls-files -coz --exclude-standard | tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$st/project"
    [ -n "${KMX_WITH_GIT:-}" ] && cp -a "$proj/.git" "$st/project/.git"
  else
    tar -C "$proj" --exclude=.git --exclude=.venv --exclude=__pycache__ -cf - . | tar -xf - -C "$st/project"
  fi
  # the command, quoted for bash
  { echo 'cd /kmx/project || exit 125'; printf 'exec'; printf ' %q' "$@"; echo; } >"$st/cmd.sh"
  cat >"$st/guest.sh" <<'EOF'
#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up 2>/dev/null || busybox ip link set lo up 2>/dev/null
hostname kmx
kv=$(uname -r); [ -f /lib/modules/$kv/kmx-config ] && cp /lib/modules/$kv/kmx-config /boot/config-$kv
printf '\n@@KMX-BEGIN uptime=%s@@\n' "$(cut -d' ' -f1 /proc/uptime)"
bash /kmx/cmd.sh </dev/null 2>&1
rc=$?
printf '\n@@KMX-RC=%d@@\n' "$rc"
echo "$rc" >/kmx/rc
sync; umount /kmx 2>/dev/null; sync
echo o >/proc/sysrq-trigger
sleep 10
EOF
  make_ext4 "$st" "$RUN/job.img" kmxjob "${KMX_JOB_FREE_MIB:-512}"
}

# ------------------------------------------------------------------ qemu ---
qemu_cmd() {
  local accel=$1
  local app="quiet loglevel=1 panic=-1 rdinit=/init ${KMX_APPEND:-}"
  QEMU=()
  case $KMX_ARCH in
    amd64)
      QEMU=(qemu-system-x86_64 -machine q35)
      if [ "$accel" = kvm ]; then QEMU+=(-accel kvm -cpu host); else QEMU+=(-accel tcg -cpu max); fi
      app="console=ttyS0 $app" ;;
    arm64)
      QEMU=(qemu-system-aarch64 -machine virt -accel tcg,thread=multi -cpu "${KMX_ARM_CPU:-cortex-a72}")
      app="console=ttyAMA0 $app" ;;
  esac
  QEMU+=(-m "$KMX_MEM" -smp "$KMX_CPUS" -nodefaults -no-user-config -display none
         -monitor none -serial stdio -no-reboot
         -kernel "$VMLINUZ" -initrd "$INITRD" -append "$app"
         -drive "file=$ROOTFS_IMG,format=raw,if=none,id=root,snapshot=on" -device virtio-blk-pci,drive=root
         -drive "file=$RUN/job.img,format=raw,if=none,id=job" -device virtio-blk-pci,drive=job
         -drive "file=$KDIR/modules.img,format=raw,if=none,id=mods,readonly=on" -device virtio-blk-pci,drive=mods)
}

pick_accel() {
  case $KMX_ACCEL in
    kvm|tcg) echo "$KMX_ACCEL"; return ;;
  esac
  # kvm_pvm (pagetable-based nested virt, e.g. inside Firecracker) exposes
  # /dev/kvm but cannot run stock Debian kernels at usable speed: use TCG.
  if [ "$KMX_ARCH" = amd64 ] && [ "$(uname -m)" = x86_64 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] \
     && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } \
     && printf 'quit\n' | timeout 10 qemu-system-x86_64 -M none -accel kvm -nodefaults -display none -monitor stdio >/dev/null 2>&1; then
    echo kvm
  else
    echo tcg
  fi
}

# ------------------------------------------------------------------ main ---
if [ "${1:-}" = --list ]; then
  for d in "$KMX_CACHE"/kernels/*/; do [ -f "$d/kver" ] && echo "$(cat "$d/kver")  ${d%/}"; done
  exit 0
fi
PREPARE_ONLY=
[ "${1:-}" = --prepare ] && { PREPARE_ONLY=1; shift; }
[ $# -ge 1 ] || { awk 'NR>1 && !/^#/{exit} NR>1{sub(/^# ?/,""); print}' "$0"; exit 2; }
SPEC=$1; shift
[ "${1:-}" = -- ] && shift
[ $# -ge 1 ] || set -- uname -a

T0=$(now)
rootfs_img
kernel_prepare "$SPEC"
initrd_prepare
[ -n "$PREPARE_ONLY" ] && { echo "$KVER $KDIR"; exit 0; }
job_prepare "$@"
ACCEL=$(pick_accel)
qemu_cmd "$ACCEL"
log "kernel $KVER ($KMX_ARCH, $ACCEL); prepared in $(since "$T0")s"
[ -z "${KMX_KEEP:-}" ] && trap 'rm -rf "$RUN"' EXIT

T1=$(now)
set +e
timeout "$KMX_TIMEOUT" "${QEMU[@]}" </dev/null 2>"$RUN/qemu.stderr" \
  | tee "$RUN/console.log" \
  | { if [ -n "${KMX_VERBOSE:-}" ]; then tee /dev/stderr; else cat; fi; } \
  | awk '
      { sub(/\r$/, "") }
      /@@KMX-BEGIN[^@]*@@/ { on=1; have=0; next }
      on && /@@KMX-RC=[0-9]+@@/ { if (have && held != "") print held; fflush(); exit }
      on { if (have) print held; fflush(); held=$0; have=1 }'
qrc=${PIPESTATUS[0]}
set -e
T2=$(now)

rc=$(sed -n 's/.*@@KMX-RC=\([0-9]*\)@@.*/\1/p' "$RUN/console.log" | tail -1)
boot=$(sed -n 's/.*@@KMX-BEGIN uptime=\([0-9.]*\)@@.*/\1/p' "$RUN/console.log" | head -1)
if [ -z "$rc" ]; then
  if [ "$qrc" = 124 ]; then log "timeout after ${KMX_TIMEOUT}s"; rc=124
  else
    log "VM ended without a result (qemu rc=$qrc); console tail:"
    tail -30 "$RUN/console.log" | tr -d '\r' >&2; cat "$RUN/qemu.stderr" >&2; rc=125
  fi
fi
if [ -n "${KMX_OUT:-}" ]; then
  mkdir -p "$KMX_OUT"
  mkdir -p "$RUN/outx"
  if debugfs -R "rdump /out $RUN/outx" "$RUN/job.img" >/dev/null 2>&1; then
    cp -a "$RUN/outx/out/." "$KMX_OUT/"; rm -rf "$RUN/outx"
  else log "could not extract /out"; fi
fi
log "kernel $KVER: rc=$rc, VM round trip $(since "$T1")s${boot:+ (guest uptime at command start ${boot}s)} (total $(since "$T0")s)"
[ -n "${KMX_KEEP:-}" ] && log "run dir kept: $RUN"
exit "$rc"
