"""tracefs parsing, pure: format files pinned as text (copied from this machine's 6.18 kernel), mountinfo."""
from __future__ import annotations

import pytest

from kestrel_raw.errors import SetupError
from kestrel_raw.kernel.tracefs import Field, MountEntry, parse_format, parse_mountinfo, tracefs_in_mountinfo

SYS_ENTER_OPENAT = """\
name: sys_enter_openat
ID: 782
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;

print fmt: "dfd: 0x%08lx, filename: 0x%08lx, flags: 0x%08lx, mode: 0x%08lx", ((unsigned long)(REC->dfd)), ((unsigned long)(REC->filename)), ((unsigned long)(REC->flags)), ((unsigned long)(REC->mode))
"""

SYS_EXIT_OPENAT = """\
name: sys_exit_openat
ID: 781
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: "0x%lx", REC->ret
"""

SYS_ENTER_CONNECT = """\
name: sys_enter_connect
ID: 2230
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;

print fmt: "fd: 0x%08lx, uservaddr: 0x%08lx, addrlen: 0x%08lx", ((unsigned long)(REC->fd)), ((unsigned long)(REC->uservaddr)), ((unsigned long)(REC->addrlen))
"""

SCHED_PROCESS_EXEC = """\
name: sched_process_exec
ID: 365
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;

print fmt: "filename=%s pid=%d old_pid=%d", __get_str(filename), REC->pid, REC->old_pid
"""

SCHED_PROCESS_EXIT = """\
name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: "comm=%s pid=%d prio=%d group_dead=%s", REC->comm, REC->pid, REC->prio, REC->group_dead ? "true" : "false"
"""

SCHED_PROCESS_FORK = """\
name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;

print fmt: "comm=%s pid=%d child_comm=%s child_pid=%d", __get_str(parent_comm), REC->parent_pid, __get_str(child_comm), REC->child_pid
"""

COMMON = (
    Field("common_type", "unsigned short", 0, 2, False, decl="unsigned short common_type"),
    Field("common_flags", "unsigned char", 2, 1, False, decl="unsigned char common_flags"),
    Field("common_preempt_count", "unsigned char", 3, 1, False, decl="unsigned char common_preempt_count"),
    Field("common_pid", "int", 4, 4, True, decl="int common_pid"),
)


def test_sys_enter_openat_every_field_exactly():
    fmt = parse_format(SYS_ENTER_OPENAT)
    assert (fmt.name, fmt.id, fmt.group) == ("sys_enter_openat", 782, None)
    assert fmt.fields == COMMON + (
        Field("__syscall_nr", "int", 8, 4, True, decl="int __syscall_nr"),
        Field("dfd", "int", 16, 8, False, decl="int dfd"),
        Field("filename", "const char *", 24, 8, False, decl="const char * filename"),
        Field("flags", "int", 32, 8, False, decl="int flags"),
        Field("mode", "umode_t", 40, 8, False, decl="umode_t mode"),
    )
    assert fmt.print_fmt.startswith('"dfd: 0x%08lx, filename: 0x%08lx')
    assert [f.name for f in fmt.event_fields] == ["__syscall_nr", "dfd", "filename", "flags", "mode"]


def test_sys_exit_openat_ret_is_signed_long():
    fmt = parse_format(SYS_EXIT_OPENAT)
    assert fmt.field("ret") == Field("ret", "long", 16, 8, True, decl="long ret")


def test_sys_enter_connect_pointer_to_struct():
    fmt = parse_format(SYS_ENTER_CONNECT)
    assert fmt.field("uservaddr") == Field("uservaddr", "struct sockaddr *", 24, 8, False,
                                           decl="struct sockaddr * uservaddr")
    assert (fmt.field("fd").offset, fmt.field("addrlen").offset) == (16, 32)


def test_sched_process_exec_data_loc_filename():
    fmt = parse_format(SCHED_PROCESS_EXEC)
    assert fmt.field("filename") == Field("filename", "char", 8, 4, False, is_data_loc=True, array_len=None,
                                          decl="__data_loc char[] filename")
    assert fmt.field("pid") == Field("pid", "pid_t", 12, 4, True, decl="pid_t pid")
    assert fmt.field("old_pid").offset == 16


def test_sched_process_exit_inline_comm_array():
    fmt = parse_format(SCHED_PROCESS_EXIT)
    assert fmt.field("comm") == Field("comm", "char", 8, 16, False, array_len=16, decl="char comm[16]")
    assert fmt.field("group_dead") == Field("group_dead", "bool", 32, 1, False, decl="bool group_dead")
    assert fmt.has_field("group_dead") and not fmt.has_field("exit_code")


def test_sched_process_fork_comms_are_data_loc_on_6_18():
    fmt = parse_format(SCHED_PROCESS_FORK)
    assert [(f.name, f.offset, f.size, f.is_data_loc) for f in fmt.event_fields] == [
        ("parent_comm", 8, 4, True), ("parent_pid", 12, 4, False),
        ("child_comm", 16, 4, True), ("child_pid", 20, 4, False)]


def test_missing_field_names_the_tracepoint_and_its_fields():
    fmt = parse_format(SCHED_PROCESS_EXEC)
    with pytest.raises(SetupError) as e:
        fmt.field("argv")
    assert str(e.value) == ("tracepoint sched_process_exec has no field 'argv' on this kernel; its fields are: "
                            "filename, pid, old_pid")


def test_declarations_seen_elsewhere_in_tracefs():
    text = ("name: x\nID: 1\nformat:\n"
            "\tfield:unsigned long args[];\toffset:16;\tsize:0;\tsigned:0;\n"
            "\tfield:__rel_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;\n"
            "\tfield:__u8 saddr_v6[16];\toffset:24;\tsize:16;\tsigned:0;\n")
    args, name, saddr = parse_format(text).fields
    assert (args.type, args.array_len, args.size) == ("unsigned long", 0, 0)
    assert (name.type, name.is_rel_loc, name.is_data_loc, name.array_len) == ("char", True, False, None)
    assert (saddr.type, saddr.array_len) == ("__u8", 16)


def test_garbage_is_refused_with_the_line():
    with pytest.raises(ValueError, match="not a tracepoint format file"):
        parse_format("hello\n")
    with pytest.raises(ValueError, match=r"cannot parse field line 'field:int x; offset:zz;'"):
        parse_format("name: t\n\tfield:int x; offset:zz;\n")


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw
"""


def test_mountinfo_finds_tracefs():
    entries = parse_mountinfo(MOUNTINFO)
    assert entries[2] == MountEntry("/sys/kernel/tracing", "tracefs", "nodev", "rw,relatime")
    assert entries[1] == MountEntry("/", "ext4", "/dev/vda", "rw,relatime")
    assert tracefs_in_mountinfo(MOUNTINFO) == "/sys/kernel/tracing"


def test_mountinfo_optional_fields_and_escapes():
    text = ("30 25 0:26 / /mnt/my\\040trace rw,nosuid shared:12 master:3 - tracefs tracefs rw\n"
            "31 25 0:27 / /sys/kernel/tracing rw shared:13 - tracefs tracefs rw\n")
    entries = parse_mountinfo(text)
    assert [e.mount_point for e in entries] == ["/mnt/my trace", "/sys/kernel/tracing"]
    assert tracefs_in_mountinfo(text) == "/sys/kernel/tracing"  # the default is preferred
    assert tracefs_in_mountinfo(text.splitlines()[0]) == "/mnt/my trace"


def test_mountinfo_debugfs_fallback_and_none():
    debug = "33 23 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw\n"
    assert tracefs_in_mountinfo(debug) == "/sys/kernel/debug/tracing"
    assert tracefs_in_mountinfo(MOUNTINFO.replace("tracefs", "sysfs")) is None
    assert tracefs_in_mountinfo("") is None
