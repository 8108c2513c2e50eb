"""The pieces every collector program is made of, as instruction sequences.

Register convention for all programs (r6-r9 survive helper calls, r0-r5 do not):

    r6  ctx (the tracepoint record)
    r7  bpf_get_current_pid_tgid() (tgid << 32 | tid)
    r8  the per-CPU scratch record being built (a map value pointer)
    r9  free for the program (the task's saved registers, a length)

Stack slots (r10 - N), fixed so that no two pieces overlap:

    -16  u32  key of the array lookups (scratch, rings, stats, filter)
    -24  u64  current task_struct pointer (BTF-typed: bpf_get_current_task_btf)
    -40  u64  record size, spilled across helper calls (a full 8-byte spill keeps the verifier's bounds)
    -48  u64  scratch value (exec: arg_start / connect: length)
    -56  u64  scratch value (exec: arg_end)

Kernel structs are read with plain loads from BTF-typed pointers (the current task, and what it points
to): the verifier checks each offset against the kernel's BTF and makes the load fault-safe
(BPF_PROBE_MEM: a NULL or stale pointer reads as 0), and each costs one instruction where
bpf_probe_read_kernel costs a helper call.

Syscalls are traced at their exit only, which carries the result; the arguments are read from the
task's saved user registers (``bpf_task_pt_regs``), which the syscall leaves as they were.  One program
per syscall, no map to join enter and exit: on this VM the enter tracepoint with an empty program added
~0.25 us to every open+close (12% of it), and our enter program as much again; and a syscall that began
before the attach is still reported.

Records are built in a per-CPU scratch map value and copied into the ring buffer with
``bpf_ringbuf_output``, so a record takes only the bytes it uses (an open of "/etc/passwd" takes 107
bytes, not the 4 KiB its path could have needed).  Tracepoint programs do not nest on one CPU
(``trace_call_bpf`` refuses re-entry), so one scratch value per CPU is enough.
"""
from __future__ import annotations

import itertools

from kestrel_raw import spec
from kestrel_raw.spec import HEADER, Btf, CallArg, CallRet, Chars, Const, Helper, Kind, PidTgid, SyscallArg, TpField, TtyDevice, Wire
from kestrel_raw.asm import (
    BPF_ADD, BPF_B, BPF_DIV, BPF_DW, BPF_H, BPF_JEQ, BPF_JGT, BPF_JNE, BPF_LSH, BPF_MOD, BPF_OR, BPF_RSH, BPF_W,
    R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, alu64_imm, alu64_reg, call, comment, exit_insn, jmp_imm, jmp_reg,
    label, ld_map_fd, ld_map_value, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem,
)
from kestrel_raw.asm.annotate import Provenance, Sourced
from kestrel_raw.kernel.uapi import BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP

# Stack slots (see the module docstring).
SLOT_ARRAY_KEY = -16
SLOT_TASK = -24
SLOT_SIZE = -40
SLOT_A = -48
SLOT_B = -56
# Slots of the longer pieces (the path walk, the copies made at a syscall's entry).
SLOT_C = -64
SLOT_D = -72
SLOT_E = -80
SLOT_F = -88
SLOT_G = -96
SLOT_H = -104
SLOT_I = -112
SLOT_J = -120
SLOT_BUF = -160  # 32 bytes, -160 .. -129: what one bpf_probe_read_kernel of a struct span brings
# The BTF-typed task_struct pointer a record describes when it is not the current task (fork: the child).
SLOT_SUBJECT = -168
# The filters' (kestrel_raw/programs/filter.py), at the submit: free above dns.py's slots (-288 .. -209).
SLOT_FTASK = -176  # the task the pid filter's ancestor walk is at
SLOT_FFLAGS = -184  # the pid filter's flags, OR-ed over the walk
SLOT_FKEY = -208  # 24 bytes, -208 .. -185: a filter map's key (the path's is in the scratch work area)

# Map names, shared by the programs and the loader.
MAP_RINGS = "rings"  # BPF_MAP_TYPE_ARRAY_OF_MAPS of BPF_MAP_TYPE_RINGBUF
MAP_SCRATCH = "scratch"  # BPF_MAP_TYPE_PERCPU_ARRAY, one value of SCRATCH_SIZE
MAP_STATS = "stats"  # BPF_MAP_TYPE_PERCPU_ARRAY of u64 counters
# BPF_MAP_TYPE_PERCPU_ARRAY of u64, one per program: its runs for the collector's own process, which it
# otherwise ignores.  The collector's check after attaching reads it (kestrel_raw/collector/selfcheck.py).
MAP_SELF_RUNS = "self_runs"
# BPF_MAP_TYPE_HASH u32 tgid -> u64 (the process start time in clock ticks, for the loader's pruning).
# FILTER_IGNORE: the programs skip the tgids listed (other collectors); FILTER_ONLY (debug and tests): they
# report only the tgids listed.  The kernel name carries the kr_ prefix so that other collectors can
# recognise the map (kestrel_raw/collector/).
MAP_FILTER = "kr_filter"
# BPF_MAP_TYPE_ARRAY of one u32, the collector's own tgid, created with BPF_F_RDONLY_PROG and frozen once
# written (kestrel_raw/collector/load.py): the programs read it (``ProgramBuilder(self_tgid=None)``) rather
# than carry the tgid as an immediate, so that a program's bytes, and its pinned digest, are the same in
# every run.  The read is a direct load from the map's value (ld_imm64 of the value's address, then one
# load: no helper call), and the verifier knows the value (a frozen read-only map's contents are constants
# to it).
MAP_SELF_TGID = "self_tgid"
# BPF_MAP_TYPE_PROG_ARRAY: the programs reached by bpf_tail_call (ProgramSpec.tail), by slot.
MAP_TAILS = "tails"
TAIL_OPEN_FINISH = 0  # the open programs' second half: the opened file's path, then the submit
TAIL_EXEC_EXE = 1  # exec: the exe's path, then TAIL_EXEC_CWD
TAIL_EXEC_CWD = 2  # exec: the working directory's path, then the submit
TAIL_PROC_CWD = 3  # the internal proc record: the working directory's path, then the submit
TAILS = 4  # slots
# BPF_MAP_TYPE_PROG_ARRAY of the tp_btf fork program's second halves: a prog array holds programs of one type
# (and, for BPF_PROG_TYPE_TRACING, one attach target), so they cannot share MAP_TAILS.
MAP_FORK_TAILS = "fork_tails"
TAIL_FORK_EXE = 0  # fork: the exe's path, then TAIL_FORK_CWD
TAIL_FORK_CWD = 1  # fork: the working directory's path, then the submit
FORK_TAILS = 2
FILTER_IGNORE = "ignore"
FILTER_ONLY = "only"

# The scratch value holds the record being built, then a work area (where the path walk writes backwards,
# kestrel_raw/programs/resolve.py).  The record part must hold the largest record plus what a
# bounded-but-unproven length could reach: the exec arguments go at the file name's end, both bounded by
# 4096 for the verifier.
RECORD_AREA = spec.MAX_RECORD + 64
WORK_AREA = RECORD_AREA  # offset of the work area
WORK_SIZE = spec.MAX_PATH + 512  # the walk's END, a name of NAME_MAX past it, and slack
SCRATCH_SIZE = RECORD_AREA + WORK_SIZE

# Kernel-side loss counters: stats[kind * STATS_PER_KIND + counter], per CPU.
STAT_RINGBUF_FULL = 0  # bpf_ringbuf_output failed: the reader is behind, the record is lost
STAT_READ_FAULT = 1  # user memory could not be read; the event is reported with FLAG_FAULT
STAT_FILTERED = 2  # a filter dropped the event (kestrel_raw/programs/filter.py): never written, or FLAG_FILTERED
STAT_RATE_LIMITED = 3  # the kind's rate limit held the event back: never written, or FLAG_RATE_LIMITED
STATS_PER_KIND = 4
STATS_ENTRIES = (max(spec.KINDS) + 1) * STATS_PER_KIND
STAT_NAMES = ("ringbuf_full", "read_fault", "filtered", "rate_limited")


_LOAD_SIZES = {1: BPF_B, 2: BPF_H, 4: BPF_W, 8: BPF_DW}
MINORBITS = 20  # include/linux/kdev_t.h: dev_t is major << 20 | minor

_label_ids = itertools.count()


def put(field: Wire, reg: int):
    """The instruction that stores ``reg`` into the record's ``field`` (r8 holds the record), at the
    field's spec offset and size."""
    return stx_mem(_LOAD_SIZES[field.size], R8, reg, field.offset)


def put_imm(field: Wire, value: int):
    """The instruction that stores the immediate ``value`` into the record's ``field``."""
    return st_mem(_LOAD_SIZES[field.size], R8, field.offset, value)


_FLAG_NAMES = {value: name[len("FLAG_"):] for name, value in vars(spec).items()
               if name.startswith("FLAG_") and isinstance(value, int)}


class ProgramBuilder:
    """Accumulates one program's instructions.  Every piece that jumps gets labels of its own.

    The pieces head what they emit with a comment (``kestrel_raw.asm.comment``) saying what it does, for
    the listings of ``kestrel-raw disasm`` and ``--dump-programs``; comments are not bytes.  ``annotate``
    False leaves them out (the check that they change no byte builds both ways).

    ``self_tgid``: the collector's tgid, which the programs skip (counting the run, see ``self_index``):
    None (what the collector uses) reads it from MAP_SELF_TGID, an int compares with it as an immediate.

    ``layout``: the kernel's (KernelLayout), which the filters' reads need (``submit``); ``context``: the
    collector carries context, so that exec, exit and fork records a filter drops are still written, flagged
    (kestrel_raw/programs/filtermaps.py "Context kinds").  ``filters`` False leaves the filters out of
    ``submit`` (bench/staircase.py's cut programs, which have no filter maps).
    """

    annotate = True

    def __init__(self, name: str, self_tgid: int | None, nrings: int, wakeup_threshold: int,
                 filter_mode: str = FILTER_IGNORE, self_index: int | None = None, threads: bool = False,
                 layout=None, context: bool = False, filters: bool = True) -> None:
        if filter_mode not in (FILTER_IGNORE, FILTER_ONLY):
            raise ValueError(f"filter_mode must be {FILTER_IGNORE!r} or {FILTER_ONLY!r}, got {filter_mode!r}")
        self.name = name
        self.self_tgid = self_tgid
        self.self_index = self_index  # this program's slot in MAP_SELF_RUNS; None: runs not counted
        self.filter_mode = filter_mode
        self.nrings = nrings
        self.wakeup_threshold = wakeup_threshold
        self.threads = threads  # fork: report new threads too (--threads)
        self.layout = layout
        self.context = context
        self.filters = filters
        self.insns: list = []

    def label(self, what: str) -> str:
        return f"{self.name}_{what}_{next(_label_ids)}"

    def emit(self, *insns) -> None:
        self.insns.extend(insns)

    def note(self, text: str) -> None:
        """Head the next instruction emitted with the comment ``text`` (when annotating)."""
        if self.annotate:
            self.insns.append(comment(text))

    def _own_tgid(self, target: str) -> None:
        """Jump to ``target`` when r1 (a tgid) is the collector's own; r2 is clobbered."""
        if self.self_tgid is None:
            self.note(f"the collector's own tgid, from {MAP_SELF_TGID} (a frozen map): skip it")
            self.emit(ld_map_value(R2, MAP_SELF_TGID, 0), ldx_mem(BPF_W, R2, R2, 0), jmp_reg(BPF_JEQ, R1, R2, target))
        else:
            self.note(f"the collector's own tgid ({self.self_tgid}): skip it")
            self.emit(jmp_imm(BPF_JEQ, R1, self.self_tgid, target))

    # -- prologue / epilogue ------------------------------------------------------------------------

    def prologue(self, filtered: bool = True) -> None:
        """r6 = ctx; r7 = pid_tgid; leave at once for the collector's own process, and (``filtered``) for the
        tgids of the filter map (FILTER_IGNORE) or for every tgid not in it (FILTER_ONLY).  A program that
        reports nothing itself (one that copies a syscall's arguments at its entry) skips the filter: the
        lookup would cost every process more than the copy it saves."""
        self.note("r6 = ctx (the tracepoint record); r7 = bpf_get_current_pid_tgid()")
        self.emit(
            mov64_reg(R6, R1),
            call("get_current_pid_tgid"),
            mov64_reg(R7, R0),
        )
        if filtered:
            self.skip_filtered("out")
        else:
            self.emit(mov64_reg(R1, R7), alu64_imm(BPF_RSH, R1, 32))
            self._own_tgid("self" if self.self_index is not None else "out")

    def skip_filtered(self, target: str, tgid_loaded: bool = False) -> None:
        """Jump to ``target`` for the tgids the filter map excludes, and for the collector's own tgid (by
        way of counting the run in MAP_SELF_RUNS, when the program has a slot there).  The tgid is the
        current task's, or (``tgid_loaded``) the one the caller put in r1."""
        if not tgid_loaded:
            self.emit(mov64_reg(R1, R7), alu64_imm(BPF_RSH, R1, 32))
        self._own_tgid("self" if self.self_index is not None else target)
        self.note(f"skip the tgids {'in' if self.filter_mode == FILTER_IGNORE else 'not in'} {MAP_FILTER}")
        self.emit(
            stx_mem(BPF_W, R10, R1, SLOT_ARRAY_KEY),
            ld_map_fd(R1, MAP_FILTER),
            mov64_reg(R2, R10),
            alu64_imm(BPF_ADD, R2, SLOT_ARRAY_KEY),
            call("map_lookup_elem"),
            jmp_imm(BPF_JNE if self.filter_mode == FILTER_IGNORE else BPF_JEQ, R0, 0, target),
        )

    def epilogue(self) -> list:
        self.note("return 0")
        self.emit(label("out"), mov64_imm(R0, 0), exit_insn())
        if self.self_index is not None:
            # The collector's own runs, counted after the exit: off every other process's path.
            self.emit(label("self"))
            self.note(f"the collector's own run: {MAP_SELF_RUNS}[{self.self_index}] += 1 (this CPU), return 0")
            self.array_lookup(MAP_SELF_RUNS, self.self_index)
            self.emit(ldx_mem(BPF_DW, R1, R0, 0), alu64_imm(BPF_ADD, R1, 1), stx_mem(BPF_DW, R0, R1, 0),
                      mov64_imm(R0, 0), exit_insn())
        return self.insns

    # -- maps ----------------------------------------------------------------------------------------

    def array_lookup(self, map_name: str, index: int | None = None, missing: str = "out") -> None:
        """r0 = &map[index] (index in r1 when None); jump to ``missing`` on NULL."""
        if index is None:
            self.emit(stx_mem(BPF_W, R10, R1, SLOT_ARRAY_KEY))
        else:
            self.emit(st_mem(BPF_W, R10, SLOT_ARRAY_KEY, index))
        self.emit(
            ld_map_fd(R1, map_name),
            mov64_reg(R2, R10),
            alu64_imm(BPF_ADD, R2, SLOT_ARRAY_KEY),
            call("map_lookup_elem"),
            jmp_imm(BPF_JEQ, R0, 0, missing),
        )

    def scratch(self) -> None:
        """r8 = this CPU's scratch record."""
        self.note(f"r8 = this CPU's record being built ({MAP_SCRATCH}[0])")
        self.array_lookup(MAP_SCRATCH, 0)
        self.emit(mov64_reg(R8, R0))

    def count(self, kind: Kind, counter: int) -> None:
        """stats[kind][counter] += 1 on this CPU (per-CPU value: no atomic needed)."""
        done = self.label("counted")
        self.note(f"{MAP_STATS}[{kind.label}.{STAT_NAMES[counter]}] += 1 (this CPU)")
        self.array_lookup(MAP_STATS, kind.id * STATS_PER_KIND + counter, missing=done)
        self.emit(
            ldx_mem(BPF_DW, R1, R0, 0),
            alu64_imm(BPF_ADD, R1, 1),
            stx_mem(BPF_DW, R0, R1, 0),
            label(done),
        )

    # -- reading -------------------------------------------------------------------------------------

    def load_ctx(self, dst: int, field) -> None:
        """dst = the tracepoint field (a tracefs format field), read at its own size."""
        self.emit(ldx_mem(_LOAD_SIZES[field.size], dst, R6, field.offset))

    def load_call(self, dst: int, src: CallArg | CallRet, layout) -> None:
        """dst = a function's argument or return value (the spec's ``CallArg``/``CallRet``), read from the
        registers a uprobe or kprobe program gets as its ctx (r6): the architecture's calling convention,
        offsets from BTF struct pt_regs (kestrel_raw/programs/layout.py)."""
        offset = layout.call_ret if isinstance(src, CallRet) else layout.call_args[src.index]
        self.emit(ldx_mem(BPF_DW, dst, R6, offset))

    def load_kernel_chain(self, hops, dst_reg: int, dst_off: int, base_slot: int = SLOT_TASK) -> None:
        """*(dst_reg + dst_off) = the value at the end of ``hops``, from the BTF-typed pointer in base_slot.

        One load per hop (r1 is clobbered).  A NULL pointer on the way (a kernel thread's mm, say) makes
        the fault-safe loads after it read 0, so a broken chain yields 0, not garbage.
        """
        self.note("read " + " -> ".join(_hop_name(offset) for offset, _ in hops))
        self.emit(ldx_mem(BPF_DW, R1, R10, base_slot))
        for i, (offset, size) in enumerate(hops):
            if i < len(hops) - 1:
                self.emit(ldx_mem(BPF_DW, R1, R1, offset))
                continue
            width = _LOAD_SIZES.get(size)
            if width is None:
                raise ValueError(f"cannot load a {size}-byte kernel value with one instruction "
                                 "(1, 2, 4 or 8 bytes)")
            self.emit(ldx_mem(width, R1, R1, offset), stx_mem(width, dst_reg, R1, dst_off))

    def pt_regs(self, dst: int = R9) -> None:
        """dst = the current task's saved user registers (BTF-typed struct pt_regs); needs ``header``."""
        self.note(f"r{dst} = the task's saved user registers (bpf_task_pt_regs): the syscall's arguments")
        self.emit(ldx_mem(BPF_DW, R1, R10, SLOT_TASK), call("task_pt_regs"), mov64_reg(dst, R0))

    def header(self, kind: Kind, layout, subject: int | None = None) -> None:
        """Fill the common header of the record at r8, field by field from the spec's sources
        (kestrel_raw/spec.py HEADER), and keep the BTF-typed current task pointer in SLOT_TASK.

        ``subject``: a stack slot holding the BTF-typed task the record describes when it is not the current
        one (fork: the child); its pid, tgid and BTF paths are read from it, the helpers still run for the
        current task (the time, the CPU)."""
        fields = {w.name: w for w in kind.wire[:len(HEADER)]}
        kind_field, flags_field = fields["kind"], fields["header_flags"]
        self.note(f"record header: kind = {kind.id} ({kind.label}), header_flags = 0")
        if flags_field.offset == kind_field.offset + 2 and (kind_field.size, flags_field.size) == (2, 2):
            # kind, and flags = 0, in one 32-bit store
            self.emit(st_mem(BPF_W, R8, kind_field.offset, kind.id))
        else:
            self.store_imm(kind_field, kind.id)
            self.store_imm(flags_field, 0)
        btf_reads = []
        tty = None
        for w in fields.values():
            src = w.source
            if w.name in ("kind", "header_flags"):
                continue
            if not isinstance(src, (Btf, Const)):  # store_imm says what a constant is
                self.note(f"record.{w.name} = {src.describe()}")
            if isinstance(src, Helper):
                self.emit(call(src.name))
                self.store(w, R0)
            elif isinstance(src, PidTgid) and subject is not None:
                # the subject's own: task->tgid for the process, task->pid for the thread
                btf_reads.append(Wire(w.name, w.type, Btf("task_struct." + ("tgid" if src.half == "tgid" else "pid")),
                                      w.doc, w.offset))
            elif isinstance(src, PidTgid):
                if src.half == "pid":
                    self.store(w, R7)  # the low half of pid_tgid
                else:
                    self.emit(mov64_reg(R1, R7), alu64_imm(BPF_RSH, R1, 32))
                    self.store(w, R1)
            elif isinstance(src, Const) and w.padding:
                self.store_imm(w, 0)
            elif isinstance(src, Btf):
                btf_reads.append(w)
            elif isinstance(src, TtyDevice):
                tty = w
            else:
                raise ValueError(f"header field {w.name}: the builder cannot fill a {type(src).__name__} source")
        self.note("the current task (BTF-typed: the verifier checks the loads from it), kept at r10 "
                  f"{SLOT_TASK}")
        self.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
        base = SLOT_TASK if subject is None else subject
        self.read_btf(btf_reads, layout, base)
        if tty is not None:
            self.tty_device(tty, layout, base)

    def tty_device(self, field: Wire, layout, base_slot: int = SLOT_TASK) -> None:
        """record.field = MKDEV(tty->driver->major, tty->driver->minor_start + tty->index) of the task's
        controlling terminal (task->signal->tty), 0 when it has none: the loads through a NULL tty read 0."""
        signal_off, tty_off = (off for off, _ in layout.hops("task_struct.signal.tty"))
        index_off = layout.offset("tty_struct.index", 4)
        driver_off = layout.offset("tty_struct.driver", 8)
        major_off = layout.offset("tty_driver.major", 4)
        minor_start_off = layout.offset("tty_driver.minor_start", 4)
        self.emit(
            ldx_mem(BPF_DW, R1, R10, base_slot),
            ldx_mem(BPF_DW, R1, R1, signal_off),
            ldx_mem(BPF_DW, R1, R1, tty_off),
            ldx_mem(BPF_W, R3, R1, index_off),
            ldx_mem(BPF_DW, R2, R1, driver_off),
            ldx_mem(BPF_W, R4, R2, major_off),
            ldx_mem(BPF_W, R5, R2, minor_start_off),
            alu64_reg(BPF_ADD, R3, R5),
            alu64_imm(BPF_LSH, R4, MINORBITS),
            alu64_reg(BPF_OR, R3, R4),
        )
        self.store(field, R3)

    def read_btf(self, fields: list[Wire], layout, base_slot: int = SLOT_TASK) -> None:
        """Store each field's BTF source (a path from the task in ``base_slot``) into the record at r8.

        Plain loads from the BTF-typed task pointer: the verifier checks each offset against BTF and makes
        each load fault-safe.  Fields behind the same pointers share the pointer loads: r1 holds the task,
        r2 the struct a pointer path leads to, r3 the value (what bpf_probe_read_kernel would cost a call
        each).  A NULL pointer on the way (a kernel thread's mm, say) makes the loads after it read 0.
        """
        if not fields:
            return
        groups: dict[tuple[int, ...], list[tuple[Wire, tuple[int, int]]]] = {}
        for w in fields:
            hops = layout.hops(w.source.path)
            *pointers, (offset, size) = hops
            if size != w.size:
                raise ValueError(f"{w.source.path} is {size} bytes in this kernel's BTF, the record's {w.name} "
                                 f"has {w.size}: the spec and this kernel disagree")
            groups.setdefault(tuple(off for off, _ in pointers), []).append((w, (offset, size)))
        self.emit(ldx_mem(BPF_DW, R1, R10, base_slot))
        for pointers, members in groups.items():
            base = R1
            for i, off in enumerate(pointers):
                self.note(f"r2 = {' -> '.join(('task', *(_hop_name(p) for p in pointers[:i + 1])))}")
                self.emit(ldx_mem(BPF_DW, R2, base, off))
                base = R2
            for w, (offset, size) in members:
                self.note(f"record.{w.name} = {w.source.describe()} (BTF)")
                for part in range(0, size, 8) if isinstance(w.type, Chars) else (0,):
                    width = min(8, size - part) if isinstance(w.type, Chars) else size
                    bpf_size = _LOAD_SIZES.get(width)
                    if bpf_size is None:
                        raise ValueError(f"{w.name}: cannot load {width} bytes with one instruction")
                    self.emit(ldx_mem(bpf_size, R3, base, _plus(offset, part)),
                              stx_mem(bpf_size, R8, R3, w.offset + part))

    def store(self, field: Wire, reg: int) -> None:
        """record.field = reg (the field's own size)."""
        self.emit(put(field, reg))

    def store_imm(self, field: Wire, value: int) -> None:
        """record.field = value (an immediate; a u64 field gets it sign-extended, as the ISA does)."""
        self.note(f"record.{field.name} = {value}")
        self.emit(put_imm(field, value))

    def fill(self, field: Wire, fmt=None, layout=None, regs: int | None = None) -> None:
        """record.field = its spec source: a tracepoint field (``fmt``, the tracefs format), a syscall
        argument (``regs``: the register holding the task's saved user registers, see ``pt_regs``), or, in a
        uprobe or kprobe program, a function's argument or return value (from the ctx's registers)."""
        src = field.source
        if not isinstance(src, Btf):
            self.note(f"record.{field.name} = {src.describe()}")
        if isinstance(src, TpField):
            self.load_ctx(R1, fmt.field(src.name))
        elif isinstance(src, SyscallArg):
            self.emit(ldx_mem(BPF_DW, R1, regs, layout.syscall_args[src.index]))
        elif isinstance(src, (CallArg, CallRet)):
            self.load_call(R1, src, layout)
        elif isinstance(src, Btf):
            self.read_btf([field], layout)
            return
        else:
            raise ValueError(f"{field.name}: fill() takes tracepoint fields, syscall arguments and BTF paths, "
                             f"not {type(src).__name__}; the program writes this one itself")
        self.store(field, R1)

    def probe_read_kernel(self, dst_slot: int, size: int, src: int, src_off: int = 0) -> None:
        """*(r10 + dst_slot) = ``size`` bytes at src + src_off (src a register holding a kernel address:
        a pointer the verifier cannot type, such as one read out of an array).  r0-r5 are clobbered."""
        where = f"r{src} + {_hop_name(src_off)}" if src_off else f"r{src}"
        self.note(f"r10 {dst_slot} = {size} bytes at {where} (bpf_probe_read_kernel)")
        self.emit(mov64_reg(R3, src))
        if src_off:
            self.emit(alu64_imm(BPF_ADD, R3, src_off))
        self.emit(mov64_reg(R1, R10), alu64_imm(BPF_ADD, R1, dst_slot), mov64_imm(R2, size),
                  call("probe_read_kernel"))

    def tail_call(self, slot: int, map_name: str | None = None) -> None:
        """Go on in the program at slot ``slot`` of ``map_name`` (MAP_TAILS by default; with the same ctx;
        registers and stack do not carry over: the scratch record does, on this CPU).  Returns here only if
        that slot is empty."""
        tails = map_name or MAP_TAILS
        self.note(f"go on in the program at {tails}[{slot}] (bpf_tail_call); past here only if it is empty")
        self.emit(mov64_reg(R1, R6), ld_map_fd(R2, tails), mov64_imm(R3, slot), call("tail_call"))

    def set_flag(self, flag: int) -> None:
        """header_flags |= flag on the record at r8 (clobbers r1)."""
        flags = spec.EXEC.header_flags
        size = _LOAD_SIZES[flags.size]
        self.note(f"header_flags |= {_FLAG_NAMES.get(flag, hex(flag))}")
        self.emit(
            ldx_mem(size, R1, R8, flags.offset),
            alu64_imm(BPF_OR, R1, flag),
            stx_mem(size, R8, R1, flags.offset),
        )

    # -- output --------------------------------------------------------------------------------------

    def submit(self, kind: Kind) -> None:
        """Copy SLOT_SIZE bytes of the record at r8 into ring[pid % nrings], ``pid`` the record's own (the
        process it describes: the current one, or a fork's child, so that the fork record is in the child's
        ring ahead of everything the child does).

        Wakeups: with a threshold T, the record is written with BPF_RB_NO_WAKEUP unless it takes the
        ring's unread bytes past a multiple of T (before // T != after // T), so the reader is woken once
        per T bytes, not once per record: the wakeup is an irq_work (a self-IPI, a VM exit here) charged
        to the traced syscall.  Waking on every record once the ring holds T bytes would wake on every
        record exactly when the reader is behind and awake anyway; that made a traced openat twice as
        dear.  Waking at every multiple, not just the first, means two CPUs racing across T (neither
        seeing the other's bytes) only delay the wakeup to the next multiple.  The reader also drains
        on a deadline, so a lone record is never stranded.  A threshold of 0 keeps the kernel's own
        policy; a negative one never wakes the reader (it polls).

        First the filters (kestrel_raw/programs/filter.py): a record they drop leaves here unwritten.
        """
        if self.filters:
            from kestrel_raw.programs import filter as filters  # filter.py builds on this module

            filters.apply(self, kind)
        sent = self.label("sent")
        pid = spec.EXEC.pid
        self.note(f"send the record: r9 = {MAP_RINGS}[pid % {self.nrings}] (the record's pid: fork's is the child's)")
        self.emit(
            ldx_mem(_LOAD_SIZES[pid.size], R1, R8, pid.offset),
            alu64_imm(BPF_MOD, R1, self.nrings),
        )
        self.array_lookup(MAP_RINGS)
        self.emit(mov64_reg(R9, R0))  # the ring (r9 is no longer needed by any program at this point)
        if self.wakeup_threshold < 0:
            # The reader polls without sleeping (low-latency mode): a wakeup would only cost the syscall.
            self.note("r4 = BPF_RB_NO_WAKEUP: the reader polls")
            self.emit(mov64_imm(R4, BPF_RB_NO_WAKEUP))
        elif self.wakeup_threshold > 0:
            wake = self.label("wake")
            self.note(f"r4 = BPF_RB_FORCE_WAKEUP when the ring's unread bytes cross a multiple of "
                      f"{self.wakeup_threshold}, else BPF_RB_NO_WAKEUP")
            self.emit(
                mov64_reg(R1, R9),
                mov64_imm(R2, BPF_RB_AVAIL_DATA),
                call("ringbuf_query"),
                ldx_mem(BPF_DW, R3, R10, SLOT_SIZE),
                alu64_reg(BPF_ADD, R3, R0),  # r3 = unread bytes after this record
                alu64_imm(BPF_DIV, R0, self.wakeup_threshold),
                alu64_imm(BPF_DIV, R3, self.wakeup_threshold),
                mov64_imm(R4, BPF_RB_FORCE_WAKEUP),
                jmp_reg(BPF_JNE, R0, R3, wake),
                mov64_imm(R4, BPF_RB_NO_WAKEUP),
                label(wake),
            )
        else:
            self.note("r4 = 0: the kernel's own wakeup policy")
            self.emit(mov64_imm(R4, 0))
        self.note(f"bpf_ringbuf_output(ring, record, size at r10 {SLOT_SIZE}, r4)")
        self.emit(
            mov64_reg(R1, R9),
            mov64_reg(R2, R8),
            ldx_mem(BPF_DW, R3, R10, SLOT_SIZE),
            jmp_imm(BPF_JGT, R3, RECORD_AREA, "out"),
            call("ringbuf_output"),
            jmp_imm(BPF_JEQ, R0, 0, sent),
        )
        self.count(kind, STAT_RINGBUF_FULL)
        self.emit(label(sent))

    def size_from(self, reg: int, base: int) -> None:
        """SLOT_SIZE = base + reg (reg is clobbered)."""
        self.note(f"record size = {base} + r{reg}, kept at r10 {SLOT_SIZE}")
        self.emit(alu64_imm(BPF_ADD, reg, base), stx_mem(BPF_DW, R10, reg, SLOT_SIZE))

    def size_const(self, size: int) -> None:
        self.note(f"record size = {size}, kept at r10 {SLOT_SIZE}")
        self.emit(mov64_imm(R1, size), stx_mem(BPF_DW, R10, R1, SLOT_SIZE))


def _hop_name(offset) -> str:
    """What an offset reads, for a comment: its BTF member path when it carries one (``Sourced``), else
    the number."""
    provenance = getattr(offset, "provenance", None)
    return provenance.name if provenance is not None else str(int(offset))


def _plus(offset, part: int):
    """``offset + part``, still naming where ``offset`` was read (``task_struct.comm+8``) when it did."""
    provenance = getattr(offset, "provenance", None)
    if provenance is None or not part:
        return offset + part if part else offset
    return Sourced(offset + part, Provenance(provenance.source, f"{provenance.name}+{part}", provenance.type_id))
