"""THE PROOF: a tracepoint program assembled in Python, loaded, attached with perf_event_open to
syscalls:sys_enter_openat, fires when this test calls openat, and hands back the exact path, pid, tid and comm.

No compiler, no libbpf, no headers: the argument offset comes from the tracepoint's tracefs ``format``.
The path string is in memory this process just wrote (os.open encodes it), so reading it at syscall entry
does not fault.
"""
from __future__ import annotations

import os
import struct
import threading
import uuid

import pytest

from kestrel_raw.kernel import tracefs
from kestrel_raw.asm import (
    BPF_ADD, BPF_DW, BPF_JEQ, BPF_RSH, BPF_W, R0, R1, R2, R3, R4, R6, R7, R8, R10, alu64_imm, call,
    exit_insn, jmp_imm, label, ld_map_fd, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem,
)
from kestrel_raw.kernel.attach import attach_tracepoint
from kestrel_raw.maps import HashMap
from kestrel_raw.kernel.prog import Program

PATH_MAX_READ = 256
# The record the program writes: pid u32 @0, tid u32 @4, comm[16] @8, path[256] @24, path_ret i32 @280.
RECORD = struct.Struct("<II16s256si4x")
assert RECORD.size == 288


def _fill_record(out_reg, filename_off: int) -> list:
    """Fill the record at ``out_reg`` (a pointer the verifier knows is RECORD.size bytes); r6 = ctx,
    r7 = pid_tgid."""
    return [
        mov64_reg(R1, R7), alu64_imm(BPF_RSH, R1, 32),
        stx_mem(BPF_W, out_reg, R1, 0),                 # pid = tgid
        stx_mem(BPF_W, out_reg, R7, 4),                 # tid = low half
        mov64_reg(R1, out_reg), alu64_imm(BPF_ADD, R1, 8),
        mov64_imm(R2, 16),
        call("get_current_comm"),                       # comm
        mov64_reg(R1, out_reg), alu64_imm(BPF_ADD, R1, 24),
        mov64_imm(R2, PATH_MAX_READ),
        ldx_mem(BPF_DW, R3, R6, filename_off),          # the filename argument, a user pointer
        call("probe_read_user_str"),
        stx_mem(BPF_W, out_reg, R0, 280),               # bytes copied with the NUL, or -errno
    ]


def openat_to_hash_program(filename_off: int) -> list:
    """Every openat: last[pid_tgid] = record (a record on the stack, copied in with map_update_elem)."""
    key_off, rec_off = -(RECORD.size + 8), -RECORD.size
    zero = [st_mem(BPF_DW, R10, rec_off + i, 0) for i in range(0, RECORD.size, 8)]
    return [
        mov64_reg(R6, R1),                              # r6 = ctx
        call("get_current_pid_tgid"),
        mov64_reg(R7, R0),                              # r7 = pid_tgid
        *zero,
        mov64_reg(R8, R10), alu64_imm(BPF_ADD, R8, rec_off),
        *_fill_record(R8, filename_off),
        stx_mem(BPF_DW, R10, R7, key_off),
        ld_map_fd(R1, "last"),
        mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, key_off),
        mov64_reg(R3, R8),
        mov64_imm(R4, 0),
        call("map_update_elem"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


def openat_to_ringbuf_program(filename_off: int) -> list:
    """Every openat: one RECORD in the ring buffer ``events``."""
    return [
        mov64_reg(R6, R1),                              # r6 = ctx
        call("get_current_pid_tgid"),
        mov64_reg(R7, R0),                              # r7 = pid_tgid
        ld_map_fd(R1, "events"),
        mov64_imm(R2, RECORD.size),
        mov64_imm(R3, 0),
        call("ringbuf_reserve"),
        jmp_imm(BPF_JEQ, R0, 0, "out"),                 # ring full: drop
        mov64_reg(R8, R0),
        *_fill_record(R8, filename_off),
        mov64_reg(R1, R8),
        mov64_imm(R2, 0),
        call("ringbuf_submit"),
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


def _filename_offset() -> int:
    fmt = tracefs.tracepoint_format("syscalls", "sys_enter_openat")
    field = fmt.field("filename")
    assert field.size == 8  # a user pointer (64-bit kernels only)
    return field.offset


def _my_comm() -> bytes:
    with open("/proc/self/comm", "rb") as f:
        return f.read().rstrip(b"\n")


def _unique_path(tmp_path) -> str:
    return str(tmp_path / f"kestrel-proof-{uuid.uuid4().hex}")


def _open_it(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _check(record: bytes, path: str) -> None:
    pid, tid, comm, raw_path, ret = RECORD.unpack(record)
    assert raw_path.split(b"\0", 1)[0].decode() == path
    assert ret == len(path) + 1  # probe_read_user_str counts the NUL
    assert pid == os.getpid()
    assert tid == threading.get_native_id()
    assert comm.split(b"\0", 1)[0] == _my_comm()


@pytest.mark.kernel
def test_proof_openat_into_hash_map(tmp_path):
    path = _unique_path(tmp_path)
    with HashMap(8, RECORD.size, 1024, name="kr_proof_last") as last, \
            Program(openat_to_hash_program(_filename_offset()), maps={"last": last}, name="kr_proof_h") as prog:
        with attach_tracepoint(prog, "syscalls", "sys_enter_openat"):
            _open_it(path)
        key = struct.pack("<Q", os.getpid() << 32 | threading.get_native_id())
        _check(last[key], path)


@pytest.mark.kernel
def test_proof_openat_into_ring_buffer(tmp_path):
    from kestrel_raw.maps import RingBuf, RingBufReader

    path = _unique_path(tmp_path)
    with RingBuf(1 << 20, name="kr_proof_rb") as events, \
            Program(openat_to_ringbuf_program(_filename_offset()), maps={"events": events},
                    name="kr_proof_rb") as prog, \
            RingBufReader(events) as reader:
        with attach_tracepoint(prog, "syscalls", "sys_enter_openat") as link:
            assert link.kind == "perf_link"
            _open_it(path)
        # Every openat on the machine while attached is in the ring; ours is among them exactly once.
        records = reader.drain()
        assert all(len(r) == RECORD.size for r in records)
        ours = [r for r in records if RECORD.unpack(r)[3].split(b"\0", 1)[0] == path.encode()]
        assert len(ours) == 1
        _check(ours[0], path)
        assert prog.info().map_ids == (events.map_info().id,)
