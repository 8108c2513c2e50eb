#!/bin/bash
# kmx-guest.sh VENDOR_DIR [PYTEST ARGS...] — runs INSIDE a kmx-matrix guest (cwd = the project copy,
# root, tracefs/bpffs mounted, no network).  tools/kmx-tests.sh starts it; it is not meant for the host.
#
# It records what differs from the development host (kernel, Python, the Debian-packaged dependency
# versions, BTF, the size of union bpf_attr, tracefs, lockdown), so that a failure on another kernel
# can be read from the log alone, then runs pytest with KESTREL_REQUIRE_KERNEL=1: a kernel test that
# skips for any reason other than conftest.kernel_lacks() fails the run.
set -u
vendor=${1:?usage: kmx-guest.sh VENDOR_DIR [PYTEST ARGS...]}
shift
# The project is not pip-installed in the guest (no network, no build backend offline): the checkout
# itself and the unpacked wheels of what Debian does not package go on the path.
export PYTHONPATH=$PWD:$PWD/$vendor${PYTHONPATH:+:$PYTHONPATH}
export KESTREL_REQUIRE_KERNEL=1
export PYTHONDONTWRITEBYTECODE=1
# Tells a test it runs in a kmx-matrix guest, usually under software emulation (TCG, 10-50x slower than
# the host): wall-clock bounds measured on the host do not hold here.
export KESTREL_KMX_GUEST=1

echo "== kmx guest: kernel $(uname -r) $(uname -m), $(nproc) CPU(s)"
python3 - <<'EOF'
import sys
from importlib import metadata
print("== python", sys.version.split()[0], sys.executable)
for dist in ("pytest", "pytest-trio", "trio", "outcome", "construct", "pyroute2", "hypothesis"):
    try:
        print(f"==   {dist} {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        print(f"==   {dist} MISSING")
EOF
btf=/sys/kernel/btf/vmlinux
if [ -r "$btf" ]; then
  attr=$(bpftool btf dump file "$btf" format raw 2>/dev/null | sed -n "s/.*UNION 'bpf_attr' size=\([0-9]*\).*/\1/p" | head -1)
  echo "== BTF $btf: $(stat -c %s "$btf") bytes; union bpf_attr = ${attr:-?} bytes"
else
  echo "== BTF: $btf absent"
fi
echo "== tracefs: $(awk '$3=="tracefs"{printf "%s ", $2}' /proc/mounts)"
echo "== lockdown: $(cat /sys/kernel/security/lockdown 2>/dev/null || echo 'n/a')"
echo "== kprobes: $([ -e /sys/kernel/tracing/kprobe_events ] && echo yes || echo no)"

# The vendored wheels are not tests; --ignore keeps a `pytest .` from collecting their own test suites.
python3 -m pytest -p no:cacheprovider --ignore="$vendor" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "== kmx: pytest collected no tests (exit 5); that is a failure: the run proved nothing"
fi
exit "$rc"
