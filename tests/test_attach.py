"""Attaching: classic tracepoints (link and ioctl paths), raw tracepoints, detaching on close."""
from __future__ import annotations

import os
import struct

import pytest

from kestrel_raw.kernel import bpf, uapi
from kestrel_raw.asm import (
    BPF_ADD, BPF_DW, BPF_JEQ, BPF_JNE, BPF_RSH, BPF_W, R0, R1, R2, R10, alu64_imm, atomic_op, call,
    exit_insn, jmp_imm, label, ld_map_fd, mov64_imm, mov64_reg, st_mem,
)
from kestrel_raw.kernel.attach import Link, attach_raw_tracepoint, attach_tracepoint
from kestrel_raw.errors import BPFError, SetupError
from kestrel_raw.maps import ArrayMap
from kestrel_raw.kernel.prog import Program


def count_my_calls(pid: int) -> list:
    """Add one to counter[0] each time the process ``pid`` hits the event."""
    return [
        call("get_current_pid_tgid"),
        alu64_imm(BPF_RSH, R0, 32),                 # tgid
        jmp_imm(BPF_JNE, R0, pid, "out"),
        st_mem(BPF_W, R10, -4, 0),                  # key = 0
        mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
        ld_map_fd(R1, "counter"),
        call("map_lookup_elem"),
        jmp_imm(BPF_JEQ, R0, 0, "out"),
        mov64_imm(R1, 1),
        atomic_op(BPF_DW, BPF_ADD, R0, R1, 0),      # lock *(u64 *)(r0 + 0) += r1
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


def _count(m: ArrayMap) -> int:
    return struct.unpack("<Q", m[0])[0]


def _openat_n(n: int) -> None:
    for _ in range(n):
        os.close(os.open("/dev/null", os.O_RDONLY))


@pytest.mark.kernel
@pytest.mark.parametrize("force_ioctl,kind", [(False, "perf_link"), (True, "perf_ioctl")])
def test_tracepoint_counts_own_openat_and_detaches_on_close(force_ioctl, kind):
    with ArrayMap(8, 1, name="kr_counter") as m, \
            Program(count_my_calls(os.getpid()), maps={"counter": m}, name="kr_count") as p:
        link = attach_tracepoint(p, "syscalls", "sys_enter_openat", force_ioctl=force_ioctl)
        assert isinstance(link, Link) and link.kind == kind and link.target == "syscalls:sys_enter_openat"
        with link:
            _openat_n(25)
            assert _count(m) == 25
            if kind == "perf_link":
                info = link.info()
                assert (info.type, info.prog_id) == (uapi.BPF_LINK_TYPE_PERF_EVENT, p.info().id)
            else:
                assert link.info() is None and link.fd == link.perf_fd
        assert link.closed and link.fd == -1
        _openat_n(10)
        assert _count(m) == 25  # detached: no more counting


@pytest.mark.kernel
def test_one_program_cannot_attach_twice_to_one_tracepoint():
    with ArrayMap(8, 1, name="kr_counter") as m, \
            Program(count_my_calls(os.getpid()), maps={"counter": m}, name="kr_twice") as p, \
            attach_tracepoint(p, "syscalls", "sys_enter_openat"):
        with pytest.raises(BPFError) as e:
            attach_tracepoint(p, "syscalls", "sys_enter_openat")
        assert e.value.op == "BPF_LINK_CREATE"


@pytest.mark.kernel
def test_unknown_tracepoint():
    with Program([mov64_imm(R0, 0), exit_insn()], name="kr_none") as p:
        with pytest.raises(SetupError) as e:
            attach_tracepoint(p, "syscalls", "sys_enter_no_such_call")
        assert "no tracepoint syscalls:sys_enter_no_such_call on this kernel" in str(e.value)


@pytest.mark.kernel
def test_raw_tracepoint():
    with ArrayMap(8, 1, name="kr_counter") as m, \
            Program(count_my_calls(os.getpid()), maps={"counter": m}, name="kr_raw",
                    prog_type=uapi.BPF_PROG_TYPE_RAW_TRACEPOINT) as p:
        with attach_raw_tracepoint(p, "sys_enter") as link:
            assert link.kind == "raw_tp"
            info = link.info()
            assert (info.type, info.prog_id) == (uapi.BPF_LINK_TYPE_RAW_TRACEPOINT, p.info().id)
            assert info.id in bpf.link_ids()
            for _ in range(50):
                os.getppid()
            assert _count(m) >= 50  # every syscall of this process: getppid and whatever else ran
        before = _count(m)
        for _ in range(50):
            os.getppid()
        assert _count(m) == before


@pytest.mark.kernel
def test_raw_tracepoint_unknown_name_explains():
    with Program([mov64_imm(R0, 0), exit_insn()], name="kr_raw0", prog_type=uapi.BPF_PROG_TYPE_RAW_TRACEPOINT) as p:
        with pytest.raises(BPFError) as e:
            attach_raw_tracepoint(p, "sys_enter_openat")
    assert str(e.value) == (
        "BPF_RAW_TRACEPOINT_OPEN failed: ENOENT (No such file or directory); the kernel has no raw tracepoint "
        "'sys_enter_openat' (per-syscall events such as sys_enter_openat are not raw tracepoints; use sys_enter "
        "with the syscall number)")


@pytest.mark.kernel
def test_tracepoint_run_stats():
    with ArrayMap(8, 1, name="kr_counter") as m, \
            Program(count_my_calls(os.getpid()), maps={"counter": m}, name="kr_tpstat") as p:
        with bpf.enable_stats(uapi.BPF_STATS_RUN_TIME), attach_tracepoint(p, "syscalls", "sys_enter_openat"):
            before = p.info().run_cnt
            _openat_n(40)
            info = p.info()
        # The program runs for every process's openat, ours included: at least our 40 runs, each timed.
        assert info.run_cnt - before >= 40
        assert info.run_time_ns > 0
        assert _count(m) == 40
