#!/usr/bin/env bash
# kmx-tests.sh KERNEL [PYTEST ARGS...] — run this project's tests inside a QEMU guest booted with another
# kernel (Debian 12 rootfs, as root, tracefs/bpffs mounted, no network), with KESTREL_REQUIRE_KERNEL=1.
#
#   tools/kmx-tests.sh 6.1                       # kernel-marked tests only (the default: -q -m kernel)
#   tools/kmx-tests.sh 6.12 -q tests/test_ring.py
#   KMX_ARCH=arm64 tools/kmx-tests.sh 6.1        # arm64 under TCG (see tools/kmx-matrix.sh)
#   tools/kmx-tests.sh 6.1 -q                    # the whole suite (slow: software emulation)
#
# KERNEL is anything tools/kmx-matrix.sh accepts (6.1, 6.12, a linux-image package, a .deb).  Exits with
# pytest's status inside the guest (5 = no tests collected, a failure; 124 = timeout; 125 = VM failure,
# after one retry).
#
# The guest has no network, so dependencies come two ways:
#   - Debian packages baked into the cached rootfs (KMX_DEBS below; bookworm ships
#     trio 0.22.0, construct 2.10.68, pyroute2 0.7.2, hypothesis 6.67.1, pytest 7.2.1, Python 3.11.2);
#   - pure-Python wheels of what Debian lacks (KMX_WHEELS below: pytest-trio), downloaded on the host
#     with pip (cached in $KMX_CACHE/wheels, so a later run works offline) and unpacked into the copy.
# The checkout is copied to a private staging directory (tracked + untracked-not-ignored files, as
# kmx-matrix.sh would copy it), the wheels are added there, and the copy is what the guest sees: the
# checkout itself is never written, so no .gitignore entry is involved and parallel runs do not collide.
#
# Environment: every KMX_* setting of tools/kmx-matrix.sh, plus
#   KMX_MATRIX   the matrix script (default: tools/kmx-matrix.sh next to this one)
#   KMX_TIMEOUT  seconds for the VM run (default here: 2700)
#   KMX_WHEELS   pip requirement specs to vendor (default: "pytest-trio==0.8.0", the last release,
#                which needs trio>=0.22 and pytest>=7.2: exactly what bookworm has)
#   KMX_DEBS     Debian packages the tests need in the guest, added to KMX_EXTRA_PKGS
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { awk 'NR>1 && !/^#/{exit} NR>1{sub(/^# ?/,""); print}' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
case $1 in -h|--help) usage ;; esac
kernel=$1; shift
[ $# -ge 1 ] || set -- -q -m kernel

root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/.." && pwd))
matrix=${KMX_MATRIX:-$here/kmx-matrix.sh}
export KMX_CACHE=${KMX_CACHE:-${TMPDIR:-/tmp}/kernel-matrix-cache}
export KMX_TIMEOUT=${KMX_TIMEOUT:-2700}
# Software emulation runs a host thread per vCPU (QEMU's multi-threaded TCG).  There the kernel's live
# patching of its own code (static keys, flipped as collectors attach and detach tracepoints) was
# sometimes not seen by the other vCPU: on 6.12 amd64 the guest panicked on a stale int3 of a finished
# patch ("Oops: int3" in syscall_exit_to_user_mode_prepare; the VM ends without a result, which gets one
# more try below), and on 6.1 arm64 the sys_exit tracepoint stayed off (kestrel_raw/collector/selfcheck.py mends
# that).  One host thread for all vCPUs (-accel tcg,thread=single) should avoid both but starved the
# storm tests: the collector's loop stalled 1.6 s (6.12) and 3.6 s (arm64), a stop overran 10 s (arm64).
KMX_WHEELS=${KMX_WHEELS-pytest-trio==0.8.0}
KMX_DEBS=${KMX_DEBS-python3-construct python3-trio python3-pyroute2 python3-hypothesis}
export KMX_EXTRA_PKGS="${KMX_EXTRA_PKGS:+$KMX_EXTRA_PKGS }$KMX_DEBS"
vendor=kmx-vendor

log() { echo "[kmx-tests] $*" >&2; }
die() { echo "[kmx-tests] error: $*" >&2; exit 125; }
[ -x "$matrix" ] || die "matrix script $matrix not found or not executable (set KMX_MATRIX)"
t0=$(date +%s)

# -------------------------------------------------------------- wheels ---
wheels="$KMX_CACHE/wheels"
mkdir -p "$wheels"
want=()
for spec in $KMX_WHEELS; do
  # pytest-trio==0.8.0 -> pytest_trio-0.8.0-*.whl (wheel file names normalise - to _)
  name=${spec%%[=<>!~ ]*}; ver=${spec#"$name"}; ver=${ver#==}
  glob="$(echo "$name" | tr '[:upper:]-.' '[:lower:]__')-${ver:-*}-*.whl"
  if ! compgen -G "$wheels/$glob" >/dev/null; then
    log "downloading wheel $spec into $wheels"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$wheels" "$spec" >&2 \
      || die "pip download $spec failed (the host needs PyPI once; the wheel is then cached in $wheels)"
  fi
  found=$(compgen -G "$wheels/$glob" | sort -V | tail -1) || die "no wheel matching $glob in $wheels"
  case $found in *-none-any.whl) ;; *) die "$found is not a pure-Python wheel; it cannot serve every guest arch" ;; esac
  want+=("$found")
done

# --------------------------------------------------------------- stage ---
stage=$(mktemp -d "${TMPDIR:-/tmp}/kmx-tests.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/project/$vendor"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # what kmx-matrix.sh copies from a checkout: tracked (as in the work tree) + untracked-not-ignored;
  # a tracked file deleted in the work tree is listed but absent, hence --ignore-failed-read
  (cd "$root" && git ls-files -coz --exclude-standard \
     | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$stage/project"
else
  tar -C "$root" --exclude=.git --exclude=.venv --exclude=__pycache__ -cf - . | tar -xf - -C "$stage/project"
fi
[ -f "$stage/project/tools/kmx-guest.sh" ] || die "tools/kmx-guest.sh missing from the copy of $root"
if [ ${#want[@]} -gt 0 ]; then
  python3 -c 'import sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])' "$stage/project/$vendor" "${want[@]}"
  log "vendored: $(for w in "${want[@]}"; do basename "$w"; done | tr '\n' ' ')"
fi

# ------------------------------------------------------ BPF objects ---
# The guests have no clang: the BPF objects the kernel tests load (tests/helpers.py KERNEL_TEST_OBJECTS, from
# tests/bpf_src) are built here, for the guest's architecture, into the copy's tests/data/bpfobj/, where
# tests/helpers.bpf_object finds them.  Without clang here they are not built, and those tests fail in the
# guest saying what is missing.
objs="$stage/project/tests/data/bpfobj"
if command -v clang >/dev/null && [ -f /usr/include/bpf/bpf_helpers.h ]; then
  case ${KMX_ARCH:-amd64} in arm64) tarch=arm64 ;; *) tarch=x86 ;; esac
  mkdir -p "$objs"
  srcs=$(cd "$root" && python3 -c 'import sys; sys.path.insert(0, "."); from tests.helpers import KERNEL_TEST_OBJECTS as o; print(" ".join(o))' 2>/dev/null) \
    || die "cannot read KERNEL_TEST_OBJECTS from tests/helpers.py"
  for src in $srcs; do
    clang -target bpf -g -O2 "-D__TARGET_ARCH_$tarch" -I "$root/tests/bpf_src" -I "/usr/include/$(uname -m)-linux-gnu" \
      -c "$root/tests/bpf_src/$src" -o "$objs/${src%.c}.o" || die "clang failed on tests/bpf_src/$src"
  done
  log "built for the guest (__TARGET_ARCH_$tarch): $srcs"
else
  log "no clang (or libbpf-dev) here: the BPF objects of the kernel tests are not built for the guest"
fi

# ---------------------------------------------------- probed programs ---
# The uprobe tests probe a small C program (tests/helpers.py KERNEL_TEST_BINARIES, from tests/c_src); the
# guests have no C compiler, so it is built here for the guest's architecture (cc for amd64,
# aarch64-linux-gnu-gcc for arm64: apt-get install gcc-aarch64-linux-gnu) into the copy's tests/data/bin/,
# where tests/helpers.probe_binary finds it.  Debian 12 here and in the guest: the same C library.
bins="$stage/project/tests/data/bin"
case ${KMX_ARCH:-amd64} in arm64) cc=aarch64-linux-gnu-gcc ;; *) cc=cc ;; esac
if command -v "$cc" >/dev/null; then
  mkdir -p "$bins"
  specs=$(cd "$root" && python3 -c 'import sys; sys.path.insert(0, "."); from tests.helpers import KERNEL_TEST_BINARIES as b
for name, (src, flags) in b.items(): print(name, src, " ".join(flags))' 2>/dev/null) \
    || die "cannot read KERNEL_TEST_BINARIES from tests/helpers.py"
  while read -r name src flags; do
    # shellcheck disable=SC2086  # the flags are words
    "$cc" $flags -o "$bins/$name" "$root/tests/c_src/$src" || die "$cc failed on tests/c_src/$src"
  done <<<"$specs"
  log "built for the guest with $cc: $(echo "$specs" | cut -d' ' -f1 | tr '\n' ' ')"
else
  log "no $cc here: the programs the uprobe tests probe are not built for the guest"
fi

# ----------------------------------------------------------------- run ---
log "kernel $kernel (${KMX_ARCH:-amd64}): pytest $*"
# 125 is the matrix's "the VM ended without a result" (qemu died, the guest never booted, a download
# failed): no test ran, so it says nothing of the tests.  That gets one more try, after the matrix has
# printed the console tail; a test failure (any other status) never does.
for try in 1 2; do
  set +e
  KMX_PROJECT="$stage/project" "$matrix" "$kernel" -- bash tools/kmx-guest.sh "$vendor" "$@"
  rc=$?
  set -e
  [ "$rc" -eq 125 ] && [ "$try" -eq 1 ] || break
  log "kernel $kernel (${KMX_ARCH:-amd64}): the VM ended without a test result (rc=125); trying once more"
done
log "kernel $kernel (${KMX_ARCH:-amd64}): rc=$rc in $(( $(date +%s) - t0 ))s"
exit "$rc"
