"""The context block (spec.CONTEXT_WIRE): what a record reports of its process's context when it may have
changed, so that user space's process cache can carry it instead of every record (the exec event, the fork
event, and the internal proc record at chdir, fchdir, chroot, unshare, setns and sethostname).

A record's block is filled in two steps:

- ``fill_context`` in the record's program: the namespaces (the active pid namespace, mount, network, UTS),
  the UTS nodename, and ``ctx_flags`` (SNAPSHOT, and FS_PRIVATE when the thread's fs_struct is not its
  process leader's: a cwd of the thread's own);
- the paths, each in a tail-called program of its own (``build_walk``: the walk of kestrel_raw/programs/
  resolve.py, whose bounded loop is verified best alone): the executable's (with EXE_DELETED, EXE_PSEUDO),
  then the working directory's, after the record's other variable parts; the last one submits the record.

The walks read the *current* task's mm and fs: for a fork that is the parent, whose executable and working
directory the child has at that moment (copied or shared).  The namespaces and the nodename are read from
the record's subject (a fork's child: a clone can make new namespaces).
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_MUL, BPF_W, R0, R1, R2, R3, R6, R7, R8, R10
from kestrel_raw.asm import alu64_imm, alu64_reg, call, jmp_imm, jmp_reg, label, ldx_mem, mov64_imm, mov64_reg
from kestrel_raw.asm import st_mem, stx_mem
from kestrel_raw.programs.builder import SLOT_C, SLOT_D, SLOT_SIZE, SLOT_TASK, ProgramBuilder
from kestrel_raw.programs.resolve import FromCwd, FromExe, walk_path
from kestrel_raw.spec import CONTEXT_WIRE, CTX_EXE_DELETED, CTX_EXE_PSEUDO, CTX_FS_PRIVATE, CTX_SNAPSHOT, Kind

MAX_PID_NS_LEVEL = 32  # include/linux/pid_namespace.h
NODENAME = "task_struct.nsproxy.uts_ns.name.nodename"


def zero_context(b: ProgramBuilder, kind: Kind) -> None:
    """The block all zeros: no snapshot (a failed exec, a thread's fork)."""
    first, last = kind.pidns, kind.hostname
    for off in range(first.offset, last.offset + last.size, 8):
        b.emit(st_mem(BPF_DW, R8, off, 0))


def fill_context(b: ProgramBuilder, kind: Kind, layout, subject: int = SLOT_TASK) -> None:
    """The block's fixed part from the BTF-typed task in ``subject`` (the path lengths 0: the walks fill
    them).  Needs SLOT_TASK (the current task); clobbers r0-r5."""
    names = {w.name for w in CONTEXT_WIRE}
    if not names <= {w.name for w in kind.wire}:
        raise ValueError(f"{kind.label} has no context block")
    b.read_btf([kind.mntns, kind.netns, kind.utsns], layout, subject)
    b.emit(st_mem(BPF_W, R8, kind.exe_len.offset, 0), st_mem(BPF_W, R8, kind.cwd_len.offset, 0),
           st_mem(BPF_W, R8, kind._padc.offset, 0), st_mem(BPF_W, R8, kind.pidns.offset, 0))

    # The nodename: 64 bytes of uts_ns->name.nodename (its 65th is always the NUL), 8 at a time.
    *pointers, (nodename, size) = layout.hops(NODENAME)
    if size < kind.hostname.size:
        raise ValueError(f"{NODENAME} is {size} bytes here, fewer than the record's {kind.hostname.size}")
    b.emit(ldx_mem(BPF_DW, R1, R10, subject))
    for off, _ in pointers:
        b.emit(ldx_mem(BPF_DW, R1, R1, off))
    for part in range(0, kind.hostname.size, 8):
        b.emit(ldx_mem(BPF_DW, R2, R1, nodename + part), stx_mem(BPF_DW, R8, R2, kind.hostname.offset + part))

    # ctx_flags: SNAPSHOT, and FS_PRIVATE when task->fs is not task->group_leader->fs.
    fs_off, _ = layout.hops("task_struct.fs")[0]
    leader_off, _ = layout.hops("task_struct.group_leader")[0]
    shared = b.label("fs_shared")
    b.emit(
        st_mem(BPF_W, R8, kind.ctx_flags.offset, CTX_SNAPSHOT),
        ldx_mem(BPF_DW, R1, R10, subject),
        ldx_mem(BPF_DW, R2, R1, fs_off),
        ldx_mem(BPF_DW, R3, R1, leader_off),
        ldx_mem(BPF_DW, R3, R3, fs_off),
        jmp_reg(BPF_JEQ, R2, R3, shared),
        st_mem(BPF_W, R8, kind.ctx_flags.offset, CTX_SNAPSHOT | CTX_FS_PRIVATE),
        label(shared),
    )

    # The active pid namespace: task->thread_pid->numbers[level].ns->ns.inum (task_active_pid_ns).  The
    # array index is a variable: the pointers are read as values (bpf_probe_read_kernel), not BTF loads.
    thread_pid, _ = layout.hops("task_struct.thread_pid")[0]
    level = layout.offset("pid.level", 4)
    numbers = layout.offset("pid.numbers")
    upid_ns = layout.offset("upid.ns", 8)
    upid_size = layout.size_of("upid")
    *ns_hops, (inum, inum_size) = layout.hops("pid_namespace.ns.inum")
    if ns_hops or inum_size != 4:
        raise ValueError("pid_namespace.ns.inum: expected a u32 member of the struct itself")
    done = b.label("pidns_done")
    b.emit(ldx_mem(BPF_DW, R3, R10, subject))
    b.probe_read_kernel(SLOT_C, 8, R3, thread_pid)  # the struct pid, as a value
    b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_C), jmp_imm(BPF_JEQ, R3, 0, done), st_mem(BPF_DW, R10, SLOT_D, 0))
    b.probe_read_kernel(SLOT_D, 4, R3, level)
    b.emit(ldx_mem(BPF_W, R1, R10, SLOT_D), jmp_imm(BPF_JGT, R1, MAX_PID_NS_LEVEL, done),
           alu64_imm(BPF_MUL, R1, upid_size), alu64_imm(BPF_ADD, R1, numbers + upid_ns),
           ldx_mem(BPF_DW, R3, R10, SLOT_C), alu64_reg(BPF_ADD, R3, R1))
    b.probe_read_kernel(SLOT_C, 8, R3)  # numbers[level].ns
    b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_C), jmp_imm(BPF_JEQ, R3, 0, done), st_mem(BPF_DW, R10, SLOT_D, 0))
    b.probe_read_kernel(SLOT_D, 4, R3, inum)
    b.emit(ldx_mem(BPF_W, R1, R10, SLOT_D), stx_mem(BPF_W, R8, R1, kind.pidns.offset), label(done))


def record_size(b: ProgramBuilder, kind: Kind) -> None:
    """SLOT_SIZE = the record's size: its fixed part and its variable parts' lengths (each bounded by its
    limit for the verifier: never more).  Clobbers r1, r2."""
    b.emit(mov64_imm(R1, kind.fixed_size))
    for v in kind.var:
        length = getattr(kind, v.type.length)
        b.emit(ldx_mem(BPF_W, R2, R8, length.offset), jmp_imm(BPF_JGT, R2, v.type.max, "out"),
               alu64_reg(BPF_ADD, R1, R2))
    b.emit(stx_mem(BPF_DW, R10, R1, SLOT_SIZE))


def tail_setup(b: ProgramBuilder) -> None:
    """A tail-called program's start: r6 = ctx, r7 = pid_tgid, r8 = this CPU's scratch record (the caller
    built it), SLOT_TASK = the current task."""
    b.emit(mov64_reg(R6, R1), call("get_current_pid_tgid"), mov64_reg(R7, R0))
    b.scratch()
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))


def build_walk(b: ProgramBuilder, layout, kind: Kind, what: str, next_tail: int | None,
               tail_map: str | None = None) -> list:
    """A tail-called program: the current task's executable (``what`` "exe") or working directory ("cwd")
    into ``kind``'s record as its variable part of that name; then the program in slot ``next_tail`` of
    ``tail_map``, or (None, or an empty slot) the submit."""
    tail_setup(b)
    if what == "exe":
        walk_path(b, layout, FromExe(), kind, kind.exe, flags=kind.ctx_flags, deleted_flag=CTX_EXE_DELETED,
                  pseudo_flag=CTX_EXE_PSEUDO)
    elif what == "cwd":
        walk_path(b, layout, FromCwd(), kind, kind.cwd)
    else:
        raise ValueError(f"no walk for {what!r}: exe or cwd")
    if next_tail is not None:
        b.tail_call(next_tail, tail_map)
    submit_record(b, kind)
    return b.epilogue()


def submit_record(b: ProgramBuilder, kind: Kind) -> None:
    """Submit the record at r8, as long as its fixed part and variable parts say."""
    record_size(b, kind)
    b.submit(kind)


__all__ = ["build_walk", "fill_context", "record_size", "submit_record", "tail_setup", "zero_context"]
