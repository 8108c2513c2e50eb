"""tracefs on the running kernel: live format files, ids, and the mount path in a private mount namespace."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from kestrel_raw.errors import SetupError
from kestrel_raw.kernel.tracefs import find_tracefs, parse_format, tracepoint_format, tracepoint_id

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_find_tracefs_returns_a_directory_with_events():
    root = find_tracefs()
    assert os.path.isdir(os.path.join(root, "events", "syscalls"))


def test_sys_enter_openat_has_its_arguments_after_the_common_fields():
    fmt = tracepoint_format("syscalls", "sys_enter_openat")
    assert fmt.group == "syscalls" and fmt.name == "sys_enter_openat"
    assert fmt.id == tracepoint_id("syscalls", "sys_enter_openat")
    common_end = max(f.offset + f.size for f in fmt.fields if f.is_common)
    for name in ("dfd", "filename", "flags", "mode"):
        f = fmt.field(name)
        assert f.offset >= common_end, name
        assert f.size == 8, name  # syscall arguments are unsigned long slots
    assert fmt.field("filename").type == "const char *"
    assert [f.name for f in fmt.fields[:4]] == ["common_type", "common_flags", "common_preempt_count", "common_pid"]


def test_exec_filename_is_a_data_loc_u32_and_exit_has_pid():
    exec_ = tracepoint_format("sched", "sched_process_exec")
    assert exec_.field("filename").is_data_loc and exec_.field("filename").size == 4
    exit_ = tracepoint_format("sched", "sched_process_exit")
    assert exit_.field("pid").size == 4 and exit_.field("pid").signed
    assert exit_.field("comm").array_len == exit_.field("comm").size == 16


def test_ids_are_distinct_and_match_the_id_files():
    root = find_tracefs()
    a = tracepoint_id("syscalls", "sys_enter_openat")
    b = tracepoint_id("syscalls", "sys_exit_openat")
    assert a != b
    with open(os.path.join(root, "events/syscalls/sys_exit_openat/id")) as f:
        assert int(f.read()) == b


def test_every_format_file_on_this_kernel_parses_with_consistent_sizes():
    root = find_tracefs()
    paths = glob.glob(os.path.join(root, "events", "*", "*", "format"))
    assert len(paths) > 500
    for path in paths:
        with open(path) as f:
            fmt = parse_format(f.read())
        assert fmt.name == os.path.basename(os.path.dirname(path)), path
        for fld in fmt.fields:
            if fld.is_data_loc or fld.is_rel_loc:
                assert fld.size == 4, (path, fld)
            elif fld.array_len:
                assert fld.size % fld.array_len == 0, (path, fld)


def test_missing_tracepoint_names_it():
    with pytest.raises(SetupError, match=r"no tracepoint syscalls:sys_enter_no_such_call on this kernel "
                                         r"\(group 'syscalls' exists but has no event 'sys_enter_no_such_call'\)"):
        tracepoint_id("syscalls", "sys_enter_no_such_call")
    with pytest.raises(SetupError, match=r"no tracepoint nogroup:x on this kernel \(no group 'nogroup' in "):
        tracepoint_format("nogroup", "x")
    with pytest.raises(ValueError, match="not a valid event name"):
        tracepoint_id("..", "x")


MOUNT_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from kestrel_raw.errors import SetupError
    from kestrel_raw.kernel.tracefs import find_tracefs, tracepoint_id
    try:
        find_tracefs(mount=False)
    except SetupError as e:
        print("unmounted:", e)
    print("found:", find_tracefs())
    print("id:", tracepoint_id("syscalls", "sys_enter_openat"))
""")


def test_find_tracefs_mounts_it_in_a_private_mount_namespace():
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare(1) is needed to test the mount path without touching the host's mounts")
    # Private propagation (unshare's default) keeps the umount and the mount inside the new namespace.
    shell = ("grep -q ' - debugfs ' /proc/self/mountinfo && umount -l /sys/kernel/debug; "
             "umount -l /sys/kernel/tracing 2>/dev/null; "
             f"exec {sys.executable} -c \"$0\" {REPO}")
    proc = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", shell, MOUNT_SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == ("unmounted: tracefs is not mounted (no tracefs in /proc/self/mountinfo); mount it with "
                        "`mount -t tracefs nodev /sys/kernel/tracing` or call find_tracefs(mount=True)")
    assert lines[1] == "found: /sys/kernel/tracing"
    assert lines[2] == f"id: {tracepoint_id('syscalls', 'sys_enter_openat')}"
    # The host's tracefs is untouched.
    assert os.path.isdir(os.path.join(find_tracefs(mount=False), "events"))
