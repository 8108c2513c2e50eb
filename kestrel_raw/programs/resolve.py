"""The path of the file behind a file descriptor, walked in the program: what the kernel opened.

bpf_d_path() would do it, but the kernel allows it only in trampoline programs attached to a few
functions (not tracepoints, and trampolines are refused on this host).  So the walk is written out, as
d_path() does it: from the file's (dentry, vfsmount) up through each dentry's parent, prepending each name,
crossing to the parent mount at a mount's root, until the task's root (fs->root: a chrooted or containerised
process gets its own view, like /proc/PID/fd) or the namespace's root mount.

The fd's file comes from task->files->fdt->fd[fd]; from there on the pointers are read with
bpf_probe_read_kernel (the verifier cannot type a pointer read out of an array).  The name bytes are
written backwards into a work area of the per-CPU scratch value, then copied after the record's path.
Each component costs two reads (the dentry's parent and name, then the name's bytes).  A walk that does not
reach a root within MAX_COMPONENTS, or whose path would exceed MAX_PATH, gives up: resolved_len 0 (JSON
null), never a partial path.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_B, BPF_DW, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JNE, BPF_JSLT, BPF_LSH
from kestrel_raw.asm import BPF_SUB, BPF_W, R0, R1, R2, R3, R4, R8, R10, alu64_imm, alu64_reg, call, ja, jmp_imm
from kestrel_raw.asm import jmp_reg, label, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem
from kestrel_raw.programs.builder import (
    SLOT_BUF, SLOT_C, SLOT_D, SLOT_E, SLOT_F, SLOT_G, SLOT_H, SLOT_I, SLOT_TASK, WORK_AREA, WORK_SIZE, ProgramBuilder,
)
from kestrel_raw.spec import MAX_PATH, Wire

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


def build_resolved_path(b: ProgramBuilder, layout, fd: Wire, path: Wire, path_len: Wire, out_len: Wire) -> None:
    """After the record's path: the absolute path of the file behind the record's ``fd`` field (a
    non-negative fd; anything else leaves ``out_len`` 0), its length in ``out_len``.  Needs SLOT_TASK."""
    give_up, done, resolved = b.label("resolve_none"), b.label("resolve_done"), b.label("resolved")
    loop, not_root, cross, finish = (b.label(x) for x in ("walk", "not_root", "cross_mount", "finish"))
    fdt_hops = layout.hops("task_struct.files.fdt")
    (files_off, _), (fdt_off, _) = fdt_hops
    max_fds_off = layout.offset("fdtable.max_fds", 4)
    fd_array_off = layout.offset("fdtable.fd", 8)
    f_path_lo, f_path = _span(layout, "file.f_path", [("mnt", 8), ("dentry", 8)])
    fs_off, _ = layout.hops("task_struct.fs")[0]
    root_lo, root = _span(layout, "fs_struct.root", [("mnt", 8), ("dentry", 8)])
    mnt_root_off = layout.offset("vfsmount.mnt_root", 8)
    d_lo, d = _span(layout, "dentry", [("d_parent", 8), ("d_name.len", 4), ("d_name.name", 8)])
    m_lo, m = _span(layout, "mount", [("mnt_parent", 8), ("mnt_mountpoint", 8)])
    mount_mnt = layout.offset("mount.mnt")

    b.emit(
        st_mem(BPF_W, R8, out_len.offset, 0),
        ldx_mem(BPF_W, R1, R8, fd.offset),
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
           ldx_mem(BPF_DW, R1, R10, SLOT_BUF + f_path["dentry"]), stx_mem(BPF_DW, R10, R1, _DENTRY),
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
        jmp_reg(BPF_JEQ, R1, R2, done),  # a root that is no mount's: a detached tree or a pseudo file system
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
        ldx_mem(BPF_W, R1, R8, path_len.offset),
        jmp_imm(BPF_JGT, R1, MAX_PATH, give_up),
        alu64_imm(BPF_ADD, R1, path.offset),
        alu64_reg(BPF_ADD, R1, R8),
        alu64_imm(BPF_ADD, R3, WORK_AREA),
        alu64_reg(BPF_ADD, R3, R8),
        call("probe_read_kernel"),
        jmp_imm(BPF_JEQ, R0, 0, resolved),
        label(give_up),
        st_mem(BPF_W, R8, out_len.offset, 0),
        label(resolved),
    )
