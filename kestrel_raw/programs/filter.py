"""The filters, in the programs: the piece ``ProgramBuilder.submit`` runs on the record at r8 before it is
written, so that an event a filter drops never reaches a ring buffer (issue 15).

What the maps hold and what each key means is kestrel_raw/programs/filtermaps.py's: this module only reads
them.  One piece per key (``_outcome``, ``_uid``, ...), each emitting the key's lookup and leaving the
flags found (F_INCLUDE, F_EXCLUDE; 0 when the value is not there) in r0 for ``_decide``; the order is the
cheapest first, so that the event a cheap key drops never pays for the pid walk.

Registers: r6-r8 are the program's (ctx, pid_tgid, record) and left alone; r9 holds the kind's row of
MAP_FCFG (a map value pointer: it survives the helper calls), then the kind's token bucket.  The active set
is read once, at the start, into the first u32 of SLOT_FKEY, where every hash key has its set: a flip during
the evaluation cannot make one event see half of the old set and half of the new one.

Fast path: a kind with no filter (its row all zeros) costs the set's load (a direct load from the map's
value, no helper call), the row's lookup (an array lookup, which the kernel inlines), two loads and a jump.

A dropped event is counted (STAT_FILTERED, STAT_RATE_LIMITED) and the program leaves without writing it;
with context on, exec, exit and fork records are written anyway, flagged FLAG_FILTERED or
FLAG_RATE_LIMITED, for the process cache (filtermaps "Context kinds"), which never delivers them.
"""
from __future__ import annotations

from kestrel_raw.asm import (
    BPF_ADD, BPF_AND, BPF_B, BPF_DIV, BPF_DW, BPF_H, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JNE, BPF_JSGE, BPF_JSLE,
    BPF_JLE, BPF_JSLT, BPF_MUL, BPF_OR, BPF_RSH, BPF_SUB, BPF_TO_BE, BPF_W, R0, R1, R2, R3, R4, R7, R8, R9, R10, alu64_imm, alu64_reg,
    atomic_op, call, endian, ja, jmp32_imm, jmp_imm, jmp_reg, label, ld_map_fd, ld_map_value, ldx_mem, mov64_imm,
    mov64_reg, st_mem, stx_mem,
)
from kestrel_raw.asm.opcode import BPF_CMPXCHG, BPF_FETCH
from kestrel_raw.kernel.uapi import AF_INET, AF_INET6, SIN6_ADDR, SIN_ADDR, SIN_PORT, SOCKADDR_IN6_SIZE, SOCKADDR_IN_SIZE
from kestrel_raw.programs import filtermaps as fm
from kestrel_raw.programs.builder import (
    SLOT_FFLAGS, SLOT_FKEY, SLOT_FTASK, SLOT_TASK, STAT_FILTERED, STAT_RATE_LIMITED, WORK_AREA, ProgramBuilder,
)
from kestrel_raw.spec import CONNECT, EXEC, EXIT, FLAG_FILTERED, FLAG_RATE_LIMITED, FORK, OPEN, Kind

# The kinds whose dropped records the process cache still needs (filtermaps "Context kinds").
CONTEXT_KINDS = (EXEC.id, EXIT.id, FORK.id)

V4_BYTES, V6_BYTES = 4, 16

# Where the keys of the LPM tries are built: the scratch value's work area, dead at the submit (the path
# walk's copies are done).  A trie's key is u32 prefixlen, then the set byte, then the data.
LPM_KEY = WORK_AREA
LPM_SET = LPM_KEY + 4
LPM_DATA = LPM_SET + 1

ELAPSED_MAX_NS = 1_000_000_000  # a bucket refills by at most one second's worth: it holds at most ``rate``
NS_PER_MS = 1_000_000  # tokens are counted in thousandths (fm.TOKEN): rate tokens/s = rate thousandths/ms


def apply(b: ProgramBuilder, kind: Kind) -> None:
    """The filters of ``kind`` on the record at r8: go on to the submit when they keep it, leave (``out``)
    when they drop it.  The internal records (the process cache's) are never filtered."""
    if kind.internal:
        return
    if b.layout is None:
        raise ValueError(f"{b.name}: the filters read kernel structs (the exe, the pid's ancestors): give "
                         "ProgramBuilder the KernelLayout (layout=...)")
    passed, dropped, limited = b.label("f_pass"), b.label("f_dropped"), b.label("f_limited")
    _row(b, kind, passed)
    _key(b, "outcome", kind, passed, dropped)
    _key(b, "uid", kind, passed, dropped)
    _key(b, "comm", kind, passed, dropped)
    _key(b, "cgroup", kind, passed, dropped)
    _key(b, "container", kind, passed, dropped)
    if kind.id == CONNECT.id:
        _key(b, "port", kind, passed, dropped)
        _key(b, "daddr", kind, passed, dropped)
    if kind.id == OPEN.id:
        _key(b, "path", kind, passed, dropped)
    _key(b, "exe", kind, passed, dropped)
    _key(b, "pid", kind, passed, dropped)
    _rate(b, kind, passed)  # falls through to ``limited`` when the bucket is empty
    _drop(b, kind, limited, STAT_RATE_LIMITED, FLAG_RATE_LIMITED, passed)
    _drop(b, kind, dropped, STAT_FILTERED, FLAG_FILTERED, passed)
    b.emit(label(passed))


# The keys whose value is the task's, known as soon as the header is built (``apply_early``), in the order
# ``apply`` takes them: the cheapest first.
TASK_KEYS = ("uid", "comm", "cgroup", "container", "exe", "pid")
TASK_BITS = sum(fm.KEY_BITS[name] for name in TASK_KEYS)


def apply_early(b: ProgramBuilder, kind: Kind, *, build_header: bool, count: bool) -> None:
    """The task's keys (TASK_KEYS) of ``kind``'s filters, before a program's costly part (the copies, the
    path walk): an event they drop leaves at once.  Sound because the keys are AND-ed: whatever the later
    keys say, a drop by one of these stands; ``apply`` at the submit takes them again with the others.

    ``build_header``: the program has no record yet: when the kind's row has a task key, what the keys read
    of the header (pid, uid, comm, cgroup_id: ``_task_fields``) is written into the scratch value (r8), not
    the whole header (its clock and helper calls); an entry program must set r8 again after, an exit
    program builds its header over them (the same values).
    ``count``: count the drop (STAT_FILTERED); an entry program's drop is not counted, its exit program
    drops the same event and counts it (a flip between the two at worst delivers the event, read at the
    exit: LATE_READ).  Nothing for the context kinds when the collector carries context (their records are
    flagged, not dropped: ``apply``)."""
    if kind.internal or (b.context and kind.id in CONTEXT_KINDS):
        return
    passed, dropped = b.label("f_early_pass"), b.label("f_early_drop")
    _row(b, kind, passed)
    b.note(f"filters at the start: only when the row's include or exclude mask has a task key ({TASK_BITS:#x})")
    _unless_keys(b, TASK_BITS, passed)
    if build_header:
        b.scratch()
        _task_fields(b, kind)
    for name in TASK_KEYS:
        _key(b, name, kind, passed, dropped)
    b.emit(ja(passed), label(dropped))
    if count:
        b.count(kind, STAT_FILTERED)
    b.emit(ja("out"), label(passed))


def _task_fields(b: ProgramBuilder, kind: Kind) -> None:
    """The header fields the task's keys read, into the record at r8: pid from pid_tgid (r7), uid, comm and
    cgroup_id from the task (BTF-typed loads, as ProgramBuilder.header reads them), and the current task in
    SLOT_TASK (the exe key and the pid walk start there)."""
    b.note("filters at the start: the header fields the task's keys read (pid, uid, comm, cgroup_id)")
    b.emit(mov64_reg(R1, R7), alu64_imm(BPF_RSH, R1, 32))
    b.store(kind.pid, R1)
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
    b.read_btf([kind.uid, kind.comm, kind.cgroup_id], b.layout)


def _unless_keys(b: ProgramBuilder, bits: int, skip: str) -> None:
    """Jump to ``skip`` when neither the include nor the exclude mask of the row (r9) has any of ``bits``."""
    b.emit(
        ldx_mem(BPF_W, R1, R9, fm.CFG_INCLUDE),
        ldx_mem(BPF_W, R2, R9, fm.CFG_EXCLUDE),
        alu64_reg(BPF_OR, R1, R2),
        alu64_imm(BPF_AND, R1, bits),
        jmp_imm(BPF_JEQ, R1, 0, skip),
    )


def _row(b: ProgramBuilder, kind: Kind, passed: str) -> None:
    """r9 = the kind's row in the active set; no filter for the kind (a row of zeros): to the submit."""
    b.note(f"filters: the active set ({fm.MAP_FSET}, kept in the keys' first u32), the kind's row "
           f"{fm.MAP_FCFG}[set * {fm.FILTER_KINDS} + {kind.id}]; all zero: no filter")
    b.emit(
        ld_map_value(R1, fm.MAP_FSET, 0),
        ldx_mem(BPF_W, R1, R1, 0),
        stx_mem(BPF_W, R10, R1, SLOT_FKEY),
        alu64_imm(BPF_MUL, R1, fm.FILTER_KINDS),
        alu64_imm(BPF_ADD, R1, kind.id),
    )
    b.array_lookup(fm.MAP_FCFG, missing=passed)  # never missing: the index is below SETS * FILTER_KINDS
    b.emit(
        mov64_reg(R9, R0),
        ldx_mem(BPF_DW, R1, R9, fm.CFG_INCLUDE),  # include | exclude << 32
        ldx_mem(BPF_DW, R2, R9, fm.CFG_OUTCOME),  # outcome | rate << 32
        alu64_reg(BPF_OR, R1, R2),
        jmp_imm(BPF_JEQ, R1, 0, passed),
    )


def _key(b: ProgramBuilder, name: str, kind: Kind, passed: str, dropped: str) -> None:
    """One key: skipped unless the row's include or exclude mask has its bit; its flags (``_FLAGS[name]``
    leaves them in r0, or jumps to ``done`` when the value is unknown), then the decision."""
    if name == "outcome":
        _outcome(b, kind, dropped)
        return
    done = b.label(f"f_{name}_done")
    bit = fm.KEY_BITS[name]
    b.note(f"filter {name}: only when the row's include or exclude mask has its bit ({bit:#x})")
    _unless_keys(b, bit, done)
    _FLAGS[name](b, kind, done)
    _decide(b, bit, dropped, done)
    b.emit(label(done))


def _decide(b: ProgramBuilder, bit: int, dropped: str, done: str) -> None:
    """r0 = the flags the event's value has: dropped when the key is included and the value lacks
    F_INCLUDE, or excluded and the value has F_EXCLUDE (an exclude wins: it is tested whatever the include
    said)."""
    excluded = b.label("f_excluded")
    b.emit(
        ldx_mem(BPF_W, R1, R9, fm.CFG_INCLUDE),
        alu64_imm(BPF_AND, R1, bit),
        jmp_imm(BPF_JEQ, R1, 0, excluded),
        mov64_reg(R2, R0),
        alu64_imm(BPF_AND, R2, fm.F_INCLUDE),
        jmp_imm(BPF_JEQ, R2, 0, dropped),
        label(excluded),
        ldx_mem(BPF_W, R1, R9, fm.CFG_EXCLUDE),
        alu64_imm(BPF_AND, R1, bit),
        jmp_imm(BPF_JEQ, R1, 0, done),
        mov64_reg(R2, R0),
        alu64_imm(BPF_AND, R2, fm.F_EXCLUDE),
        jmp_imm(BPF_JNE, R2, 0, dropped),
    )


def _lookup(b: ProgramBuilder, map_name: str, key: int = SLOT_FKEY, key_reg: int | None = None,
            unknown: str | None = None) -> None:
    """r0 = the flags under the key at r10 + ``key`` (or at ``key_reg``), 0 when there is none (or, with
    ``unknown``, jump there: the value is not known to the map)."""
    found = b.label("f_found")
    b.emit(ld_map_fd(R1, map_name))
    if key_reg is None:
        b.emit(mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, key))
    else:
        b.emit(mov64_reg(R2, key_reg))
    b.emit(call("map_lookup_elem"))
    if unknown is not None:
        b.emit(jmp_imm(BPF_JEQ, R0, 0, unknown), ldx_mem(BPF_W, R0, R0, 0))
        return
    b.emit(jmp_imm(BPF_JEQ, R0, 0, found), ldx_mem(BPF_W, R0, R0, 0), label(found))


# -- the keys ---------------------------------------------------------------------------------------------


def _outcome(b: ProgramBuilder, kind: Kind, dropped: str) -> None:
    """--failed-only / --success-only: the record's ``ret`` (a signed 32-bit result) against the row's
    outcome.  A kind without a ``ret`` has nothing to test (user space refuses the flag for it)."""
    if "ret" not in {w.name for w in kind.wire}:
        return
    done, success = b.label("f_outcome_done"), b.label("f_success_only")
    b.note(f"filter outcome: {fm.OUTCOME_FAILED} failed only (ret < 0), {fm.OUTCOME_SUCCESS} success only")
    b.emit(
        ldx_mem(BPF_W, R1, R9, fm.CFG_OUTCOME),
        jmp_imm(BPF_JEQ, R1, fm.OUTCOME_ANY, done),
        ldx_mem(BPF_W, R2, R8, kind.ret.offset),
        jmp_imm(BPF_JNE, R1, fm.OUTCOME_FAILED, success),
        jmp32_imm(BPF_JSGE, R2, 0, dropped),
        ja(done),
        label(success),
        jmp32_imm(BPF_JSLT, R2, 0, dropped),
        label(done),
    )


def _uid(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--uid: the record's real uid."""
    b.emit(ldx_mem(BPF_W, R1, R8, kind.uid.offset), stx_mem(BPF_W, R10, R1, SLOT_FKEY + 4))
    _lookup(b, fm.MAP_FUID)


def _comm(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--comm: the record's comm, 16 bytes NUL-padded as the kernel keeps it (copied 4 bytes at a time: the
    stack takes only aligned stores, and the comm starts 4 bytes into the key)."""
    for part in range(0, kind.comm.size, 4):
        b.emit(ldx_mem(BPF_W, R1, R8, kind.comm.offset + part), stx_mem(BPF_W, R10, R1, SLOT_FKEY + 4 + part))
    _lookup(b, fm.MAP_FCOMM)


def _cgroup_key(b: ProgramBuilder, kind: Kind, map_name: str, done: str) -> None:
    """--cgroup, --container: the record's cgroup_id (v2).  A cgroup user space has not scanned yet is not
    in the map: unknown, the key passes (fail-open: an event is never lost to a cgroup made since the last
    scan)."""
    b.emit(st_mem(BPF_W, R10, SLOT_FKEY + 4, 0), ldx_mem(BPF_DW, R1, R8, kind.cgroup_id.offset),
           stx_mem(BPF_DW, R10, R1, SLOT_FKEY + 8))
    _lookup(b, map_name, unknown=done)


def _cgroup(b: ProgramBuilder, kind: Kind, done: str) -> None:
    _cgroup_key(b, kind, fm.MAP_FCGROUP, done)


def _container(b: ProgramBuilder, kind: Kind, done: str) -> None:
    _cgroup_key(b, kind, fm.MAP_FCONTAINER, done)


def _sockaddr_family(b: ProgramBuilder, inet: str, inet6: str, other: str) -> None:
    """Jump by the family of the connect record's address copy (what the kernel was given; see
    programs/connect.py): ``inet`` for a whole sockaddr_in, ``inet6`` for a whole sockaddr_in6, ``other``
    for anything else (a unix socket, a short or unreadable address).  r1 = addr_len."""
    b.emit(
        ldx_mem(BPF_W, R1, R8, CONNECT.addr_len.offset),
        ldx_mem(BPF_H, R2, R8, CONNECT.addr.offset),
        jmp_imm(BPF_JNE, R2, AF_INET, f"{inet}_not"),
        jmp_imm(BPF_JGE, R1, SOCKADDR_IN_SIZE, inet),
        ja(other),
        label(f"{inet}_not"),
        jmp_imm(BPF_JNE, R2, AF_INET6, other),
        jmp_imm(BPF_JGE, R1, SOCKADDR_IN6_SIZE, inet6),
        ja(other),
    )


def _port(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--port: the destination port of the address copy, in host byte order; an address without a port (not
    AF_INET/AF_INET6) has no value: an include drops it, an exclude keeps it."""
    inet, other, have = b.label("f_port_inet"), b.label("f_port_none"), b.label("f_port_have")
    _sockaddr_family(b, inet, inet, other)
    b.emit(
        label(inet),
        ldx_mem(BPF_H, R1, R8, CONNECT.addr.offset + SIN_PORT),
        endian(BPF_TO_BE, R1, 16),
        stx_mem(BPF_W, R10, R1, SLOT_FKEY + 4),
    )
    _lookup(b, fm.MAP_FPORT)
    b.emit(ja(have), label(other), mov64_imm(R0, 0), label(have))


def _daddr(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--daddr: the destination address of the address copy, looked up in the LPM trie keyed (set, family,
    address) with every bit counted; built in the work area (the stack has no room for it next to the other
    keys, and a trie key is read whole).  No AF_INET/AF_INET6 address: no value."""
    inet, inet6, other, lookup, have = (b.label(f"f_daddr_{x}") for x in ("inet", "inet6", "none", "lookup",
                                                                          "have"))
    _sockaddr_family(b, inet, inet6, other)
    b.emit(label(inet), st_mem(BPF_W, R8, LPM_KEY, (2 + V4_BYTES) * 8), st_mem(BPF_B, R8, LPM_DATA, AF_INET),
           ldx_mem(BPF_W, R1, R8, CONNECT.addr.offset + SIN_ADDR), stx_mem(BPF_W, R8, R1, LPM_DATA + 1),
           ja(lookup))
    b.emit(label(inet6), st_mem(BPF_W, R8, LPM_KEY, (2 + V6_BYTES) * 8), st_mem(BPF_B, R8, LPM_DATA, AF_INET6))
    for part in range(0, V6_BYTES, 4):
        b.emit(ldx_mem(BPF_W, R1, R8, CONNECT.addr.offset + SIN6_ADDR + part),
               stx_mem(BPF_W, R8, R1, LPM_DATA + 1 + part))
    b.emit(label(lookup), ldx_mem(BPF_W, R1, R10, SLOT_FKEY), stx_mem(BPF_B, R8, R1, LPM_SET),
           mov64_reg(R3, R8), alu64_imm(BPF_ADD, R3, LPM_KEY))
    _lookup(b, fm.MAP_FDADDR, key_reg=R3)
    b.emit(ja(have), label(other), mov64_imm(R0, 0), label(have))


def _path(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--path-prefix: the opened file's absolute path (resolved_path, right after the given path) when the
    open succeeded and it was walked, the path as given otherwise; its first PATH_KEY_MAX bytes, copied
    into the trie's key in the work area (bpf_probe_read_kernel: one call for any length)."""
    given, copy, short = b.label("f_path_given"), b.label("f_path_copy"), b.label("f_path_short")
    b.emit(
        ldx_mem(BPF_W, R1, R8, OPEN.path_len.offset),
        jmp_imm(BPF_JGT, R1, OPEN.path.type.max, "out"),  # never (open.py bounds it): for the verifier
        mov64_reg(R3, R8),
        alu64_imm(BPF_ADD, R3, OPEN.path.offset),
        ldx_mem(BPF_W, R2, R8, OPEN.ret.offset),
        jmp32_imm(BPF_JSLT, R2, 0, given),
        ldx_mem(BPF_W, R2, R8, OPEN.resolved_len.offset),
        jmp_imm(BPF_JEQ, R2, 0, given),
        alu64_reg(BPF_ADD, R3, R1),  # resolved_path follows the path_len bytes of path
        ja(copy),
        label(given),
        mov64_reg(R2, R1),
        label(copy),
        jmp_imm(BPF_JLE, R2, fm.PATH_KEY_MAX, short),
        mov64_imm(R2, fm.PATH_KEY_MAX),
        label(short),
        # prefixlen: the set byte and the path's bytes, in bits
        mov64_reg(R1, R2),
        alu64_imm(BPF_ADD, R1, 1),
        alu64_imm(BPF_MUL, R1, 8),
        stx_mem(BPF_W, R8, R1, LPM_KEY),
        ldx_mem(BPF_W, R1, R10, SLOT_FKEY),
        stx_mem(BPF_B, R8, R1, LPM_SET),
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, LPM_DATA),
        call("probe_read_kernel"),
        mov64_reg(R3, R8),
        alu64_imm(BPF_ADD, R3, LPM_KEY),
    )
    _lookup(b, fm.MAP_FPATH, key_reg=R3)


def _exe(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--exe: the current task's executable, task->mm->exe_file->f_inode as (i_sb->s_dev, i_ino) (BTF-typed
    loads: a kernel thread's NULL mm reads as 0, no executable).  For a fork it is the parent's, which the
    child has."""
    layout = b.layout
    *inode_hops, (ino_off, ino_size) = layout.hops("task_struct.mm.exe_file.f_inode.i_ino")
    sb_off = layout.offset("inode.i_sb", 8)
    s_dev_off = layout.offset("super_block.s_dev", 4)
    if ino_size != 8:
        raise ValueError(f"inode.i_ino is {ino_size} bytes on this kernel; the exe key holds 8")
    b.emit(ldx_mem(BPF_DW, R2, R10, SLOT_TASK))
    for off, _ in inode_hops:
        b.emit(ldx_mem(BPF_DW, R2, R2, off))
    b.emit(
        ldx_mem(BPF_DW, R1, R2, ino_off),
        stx_mem(BPF_DW, R10, R1, SLOT_FKEY + 8),
        ldx_mem(BPF_DW, R2, R2, sb_off),
        ldx_mem(BPF_W, R1, R2, s_dev_off),
        stx_mem(BPF_W, R10, R1, SLOT_FKEY + 4),
    )
    _lookup(b, fm.MAP_FEXE)


def _pid(b: ProgramBuilder, kind: Kind, done: str) -> None:
    """--pid: the record's process, then its ancestors by task->real_parent, up to PID_DEPTH of them (the
    loop is unrolled: each step is a lookup), the flags of every one met OR-ed: a process and all its
    descendants, born before the filter or after.  The walk ends at the idle task (tgid 0: the parent of
    init and of kthreadd) or at a NULL read.

    The ancestors are walked from the current task: the record's process's parent for every kind but fork,
    whose program runs in the parent of the record's process (the child), so the walk starts there (a
    CLONE_PARENT child's parent is the caller's parent, not the caller: then the caller is walked too)."""
    layout = b.layout
    tgid_off = layout.offset("task_struct.tgid", 4)
    parent_off, _ = layout.hops("task_struct.real_parent")[0]
    walked = b.label("f_pid_walked")
    b.emit(ldx_mem(BPF_W, R1, R8, kind.pid.offset), stx_mem(BPF_W, R10, R1, SLOT_FKEY + 4))
    _lookup(b, fm.MAP_FPID)
    b.emit(stx_mem(BPF_DW, R10, R0, SLOT_FFLAGS), ldx_mem(BPF_DW, R1, R10, SLOT_TASK))
    if kind.id != FORK.id:
        b.emit(ldx_mem(BPF_DW, R1, R1, parent_off))
    b.emit(stx_mem(BPF_DW, R10, R1, SLOT_FTASK))
    for _ in range(fm.PID_DEPTH):
        b.emit(
            ldx_mem(BPF_DW, R1, R10, SLOT_FTASK),
            ldx_mem(BPF_W, R2, R1, tgid_off),
            jmp_imm(BPF_JEQ, R2, 0, walked),
            ldx_mem(BPF_DW, R1, R1, parent_off),
            stx_mem(BPF_DW, R10, R1, SLOT_FTASK),
            stx_mem(BPF_W, R10, R2, SLOT_FKEY + 4),
        )
        _lookup(b, fm.MAP_FPID)
        b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_FFLAGS), alu64_reg(BPF_OR, R0, R1), stx_mem(BPF_DW, R10, R0, SLOT_FFLAGS))
    b.emit(label(walked), ldx_mem(BPF_DW, R0, R10, SLOT_FFLAGS))


_FLAGS = {"uid": _uid, "comm": _comm, "cgroup": _cgroup, "container": _container, "port": _port,
          "daddr": _daddr, "path": _path, "exe": _exe, "pid": _pid}
assert set(_FLAGS) == set(fm.KEY_BITS), "a key of filtermaps.KEY_BITS without its piece here"


# -- the rate limit ---------------------------------------------------------------------------------------


def _rate(b: ProgramBuilder, kind: Kind, passed: str) -> None:
    """--rate-limit: a token bucket per kind (MAP_FRATE[kind]), counted in thousandths of a token.

    The refill: the time since the last one, at most a second, times the rate; only the CPU that moves
    ``last`` forward (a compare-and-exchange) adds it, so two CPUs do not both refill for the same time;
    and ``last`` moves only when at least a thousandth is added, so that frequent events do not round every
    refill to 0.  The bucket is then cut back to ``rate`` tokens (a plain store: a take racing with it may be
    undone, letting one token through).  The take: an atomic fetch-and-add of -TOKEN; a bucket that had
    less than a token gets it back, and the event is held back: the code after this piece is the way out of
    a held-back event.  Every event takes exactly one of the two ways: delivered or counted."""
    refilled, take = b.label("f_refilled"), b.label("f_take")
    b.note(f"rate limit: the row's rate (events/s; 0: none), the bucket {fm.MAP_FRATE}[{kind.id}]")
    b.emit(ldx_mem(BPF_W, R1, R9, fm.CFG_RATE), jmp_imm(BPF_JEQ, R1, 0, passed),
           stx_mem(BPF_DW, R10, R1, SLOT_FFLAGS))
    b.array_lookup(fm.MAP_FRATE, kind.id, missing=passed)  # never missing
    b.emit(
        mov64_reg(R9, R0),  # the bucket (the row is no longer needed)
        call("ktime_get_ns"),
        mov64_reg(R3, R0),  # now
        ldx_mem(BPF_DW, R0, R9, fm.RATE_LAST_NS),  # the last refill: cmpxchg's expected value
        jmp_reg(BPF_JGE, R0, R3, take),
        mov64_reg(R2, R3),
        alu64_reg(BPF_SUB, R2, R0),
        jmp_imm(BPF_JLE, R2, ELAPSED_MAX_NS, refilled),
        mov64_imm(R2, ELAPSED_MAX_NS),
        label(refilled),
        ldx_mem(BPF_DW, R1, R10, SLOT_FFLAGS),
        alu64_reg(BPF_MUL, R2, R1),
        alu64_imm(BPF_DIV, R2, NS_PER_MS),  # thousandths of a token
        jmp_imm(BPF_JEQ, R2, 0, take),
        mov64_reg(R4, R0),
        atomic_op(BPF_DW, BPF_CMPXCHG, R9, R3, fm.RATE_LAST_NS),
        jmp_reg(BPF_JNE, R0, R4, take),  # another CPU refilled for this time
        atomic_op(BPF_DW, BPF_ADD, R9, R2, fm.RATE_TOKENS),
        alu64_imm(BPF_MUL, R1, fm.TOKEN),
        ldx_mem(BPF_DW, R3, R9, fm.RATE_TOKENS),
        jmp_reg(BPF_JSLE, R3, R1, take),
        stx_mem(BPF_DW, R9, R1, fm.RATE_TOKENS),
        label(take),
        mov64_imm(R1, -fm.TOKEN),
        atomic_op(BPF_DW, BPF_ADD | BPF_FETCH, R9, R1, fm.RATE_TOKENS),
        jmp_imm(BPF_JSGE, R1, fm.TOKEN, passed),
        mov64_imm(R1, fm.TOKEN),
        atomic_op(BPF_DW, BPF_ADD, R9, R1, fm.RATE_TOKENS),
    )


def _drop(b: ProgramBuilder, kind: Kind, at: str, counter: int, flag: int, passed: str) -> None:
    """The way out of a dropped event: counted, then gone; or, for a context kind when the collector
    carries context, flagged and written all the same."""
    b.emit(label(at))
    b.count(kind, counter)
    if b.context and kind.id in CONTEXT_KINDS:
        b.set_flag(flag)
        b.emit(ja(passed))
    else:
        b.emit(ja("out"))
