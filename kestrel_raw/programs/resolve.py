"""The path of a file, walked in the program: the file behind a file descriptor (what the kernel opened), the
process's executable and its working directory.

bpf_d_path() would do it, but the kernel allows it only in trampoline programs attached to a few
functions (not tracepoints, and trampolines are refused on this host).  So the walk is written out, as
d_path() does it: from the file's (dentry, vfsmount) up through each dentry's parent, prepending each name,
crossing to the parent mount at a mount's root, until the task's root (fs->root: a chrooted or containerised
process gets its own view, like /proc/PID/fd) or the namespace's root mount.

The fd's file comes from task->files->fdt->fd[fd], the executable's from task->mm->exe_file, the working
directory is task->fs->pwd; from there on the pointers are read with bpf_probe_read_kernel (the verifier
cannot type a pointer read out of an array).  The result goes into the record as one of its variable parts,
after those before it.  The name bytes are
written backwards into a work area of the per-CPU scratch value, then copied after the record's path.
Each component costs two reads (the dentry's parent and name, then the name's bytes).  A walk that does not
reach a root within MAX_COMPONENTS, or whose path would exceed MAX_PATH, gives up: resolved_len 0 (JSON
null), never a partial path.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_B, BPF_DW, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JNE, BPF_JSLT, BPF_LSH, BPF_OR
from kestrel_raw.asm import BPF_SUB, BPF_W, R0, R1, R2, R3, R4, R8, R10, alu64_imm, alu64_reg, call, ja, jmp_imm
from kestrel_raw.asm import jmp_reg, label, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem
from kestrel_raw.programs.builder import (
    SLOT_BUF, SLOT_C, SLOT_D, SLOT_E, SLOT_F, SLOT_G, SLOT_H, SLOT_I, SLOT_TASK, WORK_AREA, WORK_SIZE, ProgramBuilder,
)
from kestrel_raw.spec import MAX_PATH, Kind, Wire

MAX_COMPONENTS = 64
NAME_MAX = 255  # include/uapi/linux/limits.h: a component's bytes
END = MAX_PATH  # the walk writes backwards from WORK_AREA + END
SPAN_MAX = 32  # bytes SLOT_BUF holds

# Where the walk keeps its state: stack slots (8-byte spills keep what the verifier knows of them), but the
# write position in the scratch value, whose contents the verifier does not track.  That is on purpose: the
# verifier walks a bounded loop turn by turn and can skip a turn's path only when an earlier path reached
# the same point with at least the same ranges; a position spilled on the stack keeps a different exact
# range on every path (after k names of any lengths) and the paths multiply past its limit, while one
# read back from the map is "anything" each time, bounded again by a check.
_I, _MOUNT, _VFSMNT, _DENTRY, _ROOT_MNT, _ROOT_DENTRY, _MNT_ROOT = SLOT_C, SLOT_D, SLOT_E, SLOT_F, SLOT_G, SLOT_H, SLOT_I
_POS = WORK_AREA + WORK_SIZE - 8  # in the scratch value, past what the names can reach


def _span(layout, base: str, members: list[tuple[str, int]]) -> tuple[int, dict[str, int]]:
    """One read that covers ``members`` of ``base``: (start offset, member -> offset in the read)."""
    offs = {m: layout.offset(f"{base}.{m}", size) for m, size in members}
    lo = min(offs.values())
    hi = max(offs[m] + size for m, size in members)
    if hi - lo > SPAN_MAX:
        raise ValueError(f"{base}: {', '.join(offs)} span {hi - lo} bytes, more than one {SPAN_MAX}-byte read")
    return lo, {m: off - lo for m, off in offs.items()}


def build_resolved_path(b: ProgramBuilder, layout, kind: Kind, fd: Wire, part: Wire) -> None:
    """The absolute path of the file behind the record's ``fd`` field (a non-negative fd; anything else
    leaves the part empty), as the record's variable part ``part``.  Needs SLOT_TASK."""
    walk_path(b, layout, FromFd(fd), kind, part)


class FromFd:
    """Start at the file behind the record's ``fd`` field: task->files->fdt->fd[fd]->f_path."""

    def __init__(self, fd: Wire) -> None:
        self.fd = fd

    def emit(self, b: ProgramBuilder, layout, give_up: str) -> None:
        fdt_hops = layout.hops("task_struct.files.fdt")
        (files_off, _), (fdt_off, _) = fdt_hops
        max_fds_off = layout.offset("fdtable.max_fds", 4)
        fd_array_off = layout.offset("fdtable.fd", 8)
        f_path_lo, f_path = _span(layout, "file.f_path", [("mnt", 8), ("dentry", 8)])
        b.emit(
            ldx_mem(BPF_W, R1, R8, self.fd.offset),
            jmp_imm(BPF_JGT, R1, 0x7FFFFFFF, give_up),  # a negative result: no file
            stx_mem(BPF_DW, R10, R1, _I),  # the fd, until the loop needs the slot
            # task->files->fdt, BTF-typed: the verifier checks these offsets
            ldx_mem(BPF_DW, R2, R10, SLOT_TASK),
            ldx_mem(BPF_DW, R2, R2, files_off),
            ldx_mem(BPF_DW, R2, R2, fdt_off),
            ldx_mem(BPF_W, R3, R2, max_fds_off),
            jmp_reg(BPF_JGE, R1, R3, give_up),
        )
        b.probe_read_kernel(_MOUNT, 8, R2, fd_array_off)  # fdt->fd: the array's address
        b.emit(ldx_mem(BPF_DW, R3, R10, _MOUNT), ldx_mem(BPF_DW, R1, R10, _I), alu64_imm(BPF_LSH, R1, 3),
               alu64_reg(BPF_ADD, R3, R1))  # &fd[fd]
        b.probe_read_kernel(_MOUNT, 8, R3)  # fd[fd]: the struct file
        b.emit(ldx_mem(BPF_DW, R3, R10, _MOUNT), jmp_imm(BPF_JEQ, R3, 0, give_up))
        b.probe_read_kernel(SLOT_BUF, 16, R3, f_path_lo)
        b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_BUF + f_path["mnt"]), stx_mem(BPF_DW, R10, R1, _VFSMNT),
               ldx_mem(BPF_DW, R1, R10, SLOT_BUF + f_path["dentry"]), stx_mem(BPF_DW, R10, R1, _DENTRY))


class FromExe:
    """Start at the current task's executable: task->mm->exe_file->f_path (none for a kernel thread)."""

    def emit(self, b: ProgramBuilder, layout, give_up: str) -> None:
        mm_off, exe_off = (off for off, _ in layout.hops("task_struct.mm.exe_file"))
        f_path_lo, f_path = _span(layout, "file.f_path", [("mnt", 8), ("dentry", 8)])
        b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_TASK), ldx_mem(BPF_DW, R3, R3, mm_off),
               ldx_mem(BPF_DW, R3, R3, exe_off), jmp_imm(BPF_JEQ, R3, 0, give_up))
        b.probe_read_kernel(SLOT_BUF, 16, R3, f_path_lo)
        b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_BUF + f_path["mnt"]), stx_mem(BPF_DW, R10, R1, _VFSMNT),
               ldx_mem(BPF_DW, R1, R10, SLOT_BUF + f_path["dentry"]), stx_mem(BPF_DW, R10, R1, _DENTRY))


class FromCwd:
    """Start at the current task's working directory: task->fs->pwd."""

    def emit(self, b: ProgramBuilder, layout, give_up: str) -> None:
        fs_off, _ = layout.hops("task_struct.fs")[0]
        pwd_lo, pwd = _span(layout, "fs_struct.pwd", [("mnt", 8), ("dentry", 8)])
        b.emit(ldx_mem(BPF_DW, R2, R10, SLOT_TASK), ldx_mem(BPF_DW, R2, R2, fs_off), jmp_imm(BPF_JEQ, R2, 0, give_up))
        b.probe_read_kernel(SLOT_BUF, 16, R2, pwd_lo)
        b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_BUF + pwd["mnt"]), stx_mem(BPF_DW, R10, R1, _VFSMNT),
               ldx_mem(BPF_DW, R1, R10, SLOT_BUF + pwd["dentry"]), stx_mem(BPF_DW, R10, R1, _DENTRY))


def walk_path(b: ProgramBuilder, layout, start, kind: Kind, part: Wire, flags: Wire | None = None,
              deleted_flag: int = 0, pseudo_flag: int = 0) -> None:
    """The absolute path of the file ``start`` leads to, written into the record as its variable part
    ``part`` (after the fixed part and the variable parts before it, whose lengths the record holds), with
    its length in the part's length field (0: no path).  Needs SLOT_TASK.

    ``flags`` (a record field) gets ``deleted_flag`` when the file's dentry is unlinked (d_unlinked: unhashed
    and not its own parent), and ``pseudo_flag`` when it is a file of no directory (its own parent and not
    its mount's root: a memfd's dentry, made by d_alloc_pseudo): its path is then "/" and its name, as
    d_path() writes it (simple_dname), where otherwise such a root stops the walk.
    """
    give_up, done, resolved = b.label("resolve_none"), b.label("resolve_done"), b.label("resolved")
    loop, not_root, cross, finish = (b.label(x) for x in ("walk", "not_root", "cross_mount", "finish"))
    fs_off, _ = layout.hops("task_struct.fs")[0]
    root_lo, root = _span(layout, "fs_struct.root", [("mnt", 8), ("dentry", 8)])
    mnt_root_off = layout.offset("vfsmount.mnt_root", 8)
    d_lo, d = _span(layout, "dentry", [("d_parent", 8), ("d_name.len", 4), ("d_name.name", 8)])
    m_lo, m = _span(layout, "mount", [("mnt_parent", 8), ("mnt_mountpoint", 8)])
    mount_mnt = layout.offset("mount.mnt")
    out_len = getattr(kind, part.type.length)
    before = [v for v in kind.var[:kind.var.index(part)]]
    if part.type.max > END:
        raise ValueError(f"{kind.label}.{part.name}: the walk writes at most {END} bytes, the part allows more")

    b.emit(st_mem(BPF_W, R8, out_len.offset, 0))
    start.emit(b, layout, give_up)
    if deleted_flag:
        pprev = layout.offset("dentry.d_hash.pprev", 8)
        parent = layout.offset("dentry.d_parent", 8)
        linked = b.label("linked")
        b.emit(ldx_mem(BPF_DW, R3, R10, _DENTRY))
        b.probe_read_kernel(SLOT_BUF, 8, R3, pprev)
        b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_BUF), jmp_imm(BPF_JNE, R1, 0, linked),
               ldx_mem(BPF_DW, R3, R10, _DENTRY))
        b.probe_read_kernel(SLOT_BUF, 8, R3, parent)
        b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_BUF), ldx_mem(BPF_DW, R2, R10, _DENTRY), jmp_reg(BPF_JEQ, R1, R2, linked))
        _set_flags(b, flags, deleted_flag)
        b.emit(label(linked))
    b.emit(
        # the task's root: where its view of the file system starts
        ldx_mem(BPF_DW, R2, R10, SLOT_TASK), ldx_mem(BPF_DW, R2, R2, fs_off))
    b.probe_read_kernel(SLOT_BUF, 16, R2, root_lo)
    b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_BUF + root["mnt"]), stx_mem(BPF_DW, R10, R1, _ROOT_MNT),
           ldx_mem(BPF_DW, R1, R10, SLOT_BUF + root["dentry"]), stx_mem(BPF_DW, R10, R1, _ROOT_DENTRY),
           ldx_mem(BPF_DW, R2, R10, _VFSMNT))
    b.probe_read_kernel(_MNT_ROOT, 8, R2, mnt_root_off)
    b.emit(mov64_imm(R1, END), stx_mem(BPF_DW, R8, R1, _POS), mov64_imm(R1, 0), stx_mem(BPF_DW, R10, R1, _I))

    b.emit(
        label(loop),
        ldx_mem(BPF_DW, R1, R10, _I),
        jmp_imm(BPF_JGE, R1, MAX_COMPONENTS, give_up),
        alu64_imm(BPF_ADD, R1, 1),
        stx_mem(BPF_DW, R10, R1, _I),
        ldx_mem(BPF_DW, R1, R10, _DENTRY),
        ldx_mem(BPF_DW, R2, R10, _ROOT_DENTRY),
        jmp_reg(BPF_JNE, R1, R2, not_root),
        ldx_mem(BPF_DW, R2, R10, _VFSMNT),
        ldx_mem(BPF_DW, R3, R10, _ROOT_MNT),
        jmp_reg(BPF_JEQ, R2, R3, done),  # the task's root
        label(not_root),
        ldx_mem(BPF_DW, R2, R10, _MNT_ROOT),
        jmp_reg(BPF_JEQ, R1, R2, cross),  # the top of this mount: go on in the mount above
    )
    b.probe_read_kernel(SLOT_BUF, SPAN_MAX, R1, d_lo)
    b.emit(
        ldx_mem(BPF_DW, R1, R10, _DENTRY),
        ldx_mem(BPF_DW, R2, R10, SLOT_BUF + d["d_parent"]),
    )
    if pseudo_flag:
        # A root that is no mount's: the file's own dentry (nothing written yet) is a pseudo file's, named
        # like d_path() names it; a root met higher up ends the walk (a detached tree).
        component = b.label("component")
        b.emit(jmp_reg(BPF_JNE, R1, R2, component), ldx_mem(BPF_DW, R3, R8, _POS), jmp_imm(BPF_JNE, R3, END, done))
        _set_flags(b, flags, pseudo_flag)
        b.emit(ldx_mem(BPF_DW, R1, R10, _DENTRY), ldx_mem(BPF_DW, R2, R10, SLOT_BUF + d["d_parent"]),
               label(component))
    else:
        b.emit(jmp_reg(BPF_JEQ, R1, R2, done))  # a root that is no mount's: a detached tree or a pseudo file system
    b.emit(
        stx_mem(BPF_DW, R10, R2, _DENTRY),
        ldx_mem(BPF_W, R4, R10, SLOT_BUF + d["d_name.len"]),
        jmp_imm(BPF_JGT, R4, NAME_MAX, give_up),
        ldx_mem(BPF_DW, R3, R8, _POS),
        alu64_reg(BPF_SUB, R3, R4),
        alu64_imm(BPF_SUB, R3, 1),
        jmp_imm(BPF_JSLT, R3, 0, give_up),  # longer than MAX_PATH
        jmp_imm(BPF_JGT, R3, END, give_up),  # never: bounds pos for the verifier
        stx_mem(BPF_DW, R8, R3, _POS),
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, WORK_AREA),
        alu64_reg(BPF_ADD, R1, R3),
        st_mem(BPF_B, R1, 0, ord("/")),
        alu64_imm(BPF_ADD, R1, 1),
        mov64_reg(R2, R4),
        ldx_mem(BPF_DW, R3, R10, SLOT_BUF + d["d_name.name"]),
        call("probe_read_kernel"),
        ja(loop),

        label(cross),
        ldx_mem(BPF_DW, R2, R10, _VFSMNT),
        alu64_imm(BPF_SUB, R2, mount_mnt),  # container_of(vfsmnt, struct mount, mnt)
        stx_mem(BPF_DW, R10, R2, _MOUNT),
    )
    b.probe_read_kernel(SLOT_BUF, 16, R2, m_lo)
    b.emit(
        ldx_mem(BPF_DW, R1, R10, SLOT_BUF + m["mnt_parent"]),
        ldx_mem(BPF_DW, R2, R10, _MOUNT),
        jmp_reg(BPF_JEQ, R1, R2, done),  # the namespace's root mount: nothing above
        ldx_mem(BPF_DW, R2, R10, SLOT_BUF + m["mnt_mountpoint"]),
        stx_mem(BPF_DW, R10, R2, _DENTRY),
        alu64_imm(BPF_ADD, R1, mount_mnt),
        stx_mem(BPF_DW, R10, R1, _VFSMNT),
    )
    b.probe_read_kernel(_MNT_ROOT, 8, R1, mnt_root_off)
    b.emit(
        ja(loop),

        label(done),
        ldx_mem(BPF_DW, R3, R8, _POS),
        jmp_imm(BPF_JNE, R3, END, finish),
        mov64_imm(R3, END - 1),  # the root itself: "/"
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, WORK_AREA + END - 1),
        st_mem(BPF_B, R1, 0, ord("/")),
        label(finish),
        jmp_imm(BPF_JGT, R3, END - 1, give_up),  # never: bounds pos for the verifier
        mov64_imm(R2, END),
        alu64_reg(BPF_SUB, R2, R3),  # the length, 1 .. END
        stx_mem(BPF_W, R8, R2, out_len.offset),
        stx_mem(BPF_DW, R10, R3, _I),  # pos, while the destination is computed
    )
    # Where the part goes: after the fixed part and the variable parts before it (each length bounded for
    # the verifier by its limit: never more, but the verifier cannot know what the map value holds).
    b.emit(mov64_imm(R1, kind.fixed_size))
    for v in before:
        length = getattr(kind, v.type.length)
        b.emit(ldx_mem(BPF_W, R4, R8, length.offset), jmp_imm(BPF_JGT, R4, v.type.max, give_up),
               alu64_reg(BPF_ADD, R1, R4))
    b.emit(
        alu64_reg(BPF_ADD, R1, R8),
        ldx_mem(BPF_DW, R3, R10, _I),
        jmp_imm(BPF_JGT, R3, END - 1, give_up),  # never
        alu64_imm(BPF_ADD, R3, WORK_AREA),
        alu64_reg(BPF_ADD, R3, R8),
        ldx_mem(BPF_W, R2, R8, out_len.offset),
        jmp_imm(BPF_JGT, R2, END, give_up),  # never
        call("probe_read_kernel"),
        jmp_imm(BPF_JEQ, R0, 0, resolved),
        label(give_up),
        st_mem(BPF_W, R8, out_len.offset, 0),
        label(resolved),
    )


def _set_flags(b: ProgramBuilder, flags: Wire, bit: int) -> None:
    b.emit(ldx_mem(BPF_W, R1, R8, flags.offset), alu64_imm(BPF_OR, R1, bit), stx_mem(BPF_W, R8, R1, flags.offset))
