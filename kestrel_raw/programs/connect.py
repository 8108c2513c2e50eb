"""connect: where the socket was connected, and the result, at the syscall's exit.

connect(fd, uservaddr, addrlen).  Two sources, so that a rewritten address cannot pass for the real one:

- the sockaddr copied at the syscall's entry (kestrel_raw/programs/entry.py), what the kernel was given,
  and read again at the exit (a difference is flagged TOCTOU; no entry copy leaves the exit read, flagged
  LATE_READ);
- the destination the socket holds after the call (``struct sock_common``: family, port, IPv4 and IPv6
  address), reached from the fd: task->files->fdt->fd[fd]->private_data (struct socket)->sk.  For IPv4 and
  IPv6 that is what the kernel connected to; user space prefers it (kestrel_raw/codec/sockaddr.py).

The sockaddr is copied raw (at most sizeof(struct sockaddr_storage)) and decoded in user space, where a
hostile address (NULL, a too-short addrlen, an unknown family) costs a counted flag, not a verifier path.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_AND, BPF_DW, BPF_H, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JNE, BPF_JSLT, BPF_LSH
from kestrel_raw.asm import BPF_W
from kestrel_raw.asm import R0, R1, R2, R3, R8, R9, R10, alu64_imm, alu64_reg, call, ja, jmp_imm, jmp_reg, label
from kestrel_raw.asm import ldx_mem, mov32_reg, mov64_imm, mov64_reg, st_mem, stx_mem
from kestrel_raw.programs import entry, filter
from kestrel_raw.programs.builder import SLOT_A, SLOT_B, SLOT_BUF, SLOT_C, SLOT_TASK, STAT_READ_FAULT, ProgramBuilder
from kestrel_raw.spec import CONNECT, FLAG_FAULT, FLAG_LATE_READ, FLAG_TOCTOU

MAX_SOCKADDR = CONNECT.addr.type.max
S_IFMT = 0o170000  # include/uapi/linux/stat.h
S_IFSOCK = 0o140000


def build(b: ProgramBuilder, fmt, layout) -> list:
    arg = layout.syscall_args
    b.prologue()
    filter.apply_early(b, CONNECT, build_header=True, count=True)  # before the header, copies and socket reads
    b.scratch()
    b.header(CONNECT, layout)
    b.pt_regs(R9)
    clamp_done = b.label("clamped")
    too_long = b.label("too_long")
    b.fill(CONNECT.ret, fmt)
    b.fill(CONNECT.fd, layout=layout, regs=R9)
    exit_read_failed, exit_read_done = b.label("exit_read_failed"), b.label("exit_read_done")
    b.emit(ldx_mem(BPF_DW, R2, R9, arg[CONNECT.addrlen.source.index]))
    b.store(CONNECT.addrlen, R2)
    b.emit(
        # addrlen is a C int: one unsigned 32-bit compare clamps it and also catches a negative one.
        mov32_reg(R2, R2),
        jmp_imm(BPF_JGT, R2, MAX_SOCKADDR, too_long),
        ja(clamp_done),
    )
    b.emit(label(too_long), mov64_imm(R2, MAX_SOCKADDR), label(clamp_done))
    b.emit(
        # The address as the caller's memory holds it now, at the exit.
        stx_mem(BPF_DW, R10, R2, SLOT_A),
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, CONNECT.addr.offset),
        ldx_mem(BPF_DW, R3, R9, arg[1]),
        call("probe_read_user"),
        mov64_reg(R9, R0),  # 0, or -errno
        jmp_imm(BPF_JNE, R9, 0, exit_read_failed),
        ldx_mem(BPF_DW, R9, R10, SLOT_A),  # r9: the bytes read
        ja(exit_read_done),
        label(exit_read_failed),
        mov64_imm(R9, -1),
        label(exit_read_done),
    )

    # ... and as the kernel was given it, at the entry.
    no_entry, differ, have_len = b.label("no_entry"), b.label("differ"), b.label("have_len")
    entry.take(b, entry.MARK_CONNECT, SLOT_B, no_entry)
    b.emit(
        ldx_mem(BPF_DW, R0, R10, SLOT_B),
        ldx_mem(BPF_W, R1, R0, entry.ENTRY_RC),
        jmp_imm(BPF_JSLT, R1, 0, no_entry),  # the entry read failed
        jmp_imm(BPF_JGT, R1, MAX_SOCKADDR, no_entry),  # never
        jmp_reg(BPF_JNE, R1, R9, differ),
    )
    entry.compare(b, SLOT_B, CONNECT.addr.offset, R9, MAX_SOCKADDR, differ, have_len)
    b.emit(label(differ))
    b.set_flag(FLAG_TOCTOU)
    b.emit(ldx_mem(BPF_DW, R0, R10, SLOT_B), ldx_mem(BPF_W, R9, R0, entry.ENTRY_RC))
    entry.copy_in(b, SLOT_B, CONNECT.addr.offset, R9, MAX_SOCKADDR)
    b.emit(ja(have_len), label(no_entry), jmp_imm(BPF_JSLT, R9, 0, have_len))
    b.set_flag(FLAG_LATE_READ)
    b.emit(label(have_len))
    read_ok, unread = b.label("read_ok"), b.label("unread")
    b.emit(jmp_imm(BPF_JSLT, R9, 0, unread), ja(read_ok), label(unread))
    b.set_flag(FLAG_FAULT)
    b.count(CONNECT, STAT_READ_FAULT)
    b.emit(mov64_imm(R9, 0), label(read_ok))
    b.store(CONNECT.addr_len, R9)

    _socket_destination(b, layout)
    b.emit(ldx_mem(BPF_W, R1, R8, CONNECT.addr_len.offset), jmp_imm(BPF_JGT, R1, MAX_SOCKADDR, "out"))
    b.size_from(R1, CONNECT.addr.offset)
    b.submit(CONNECT)
    return b.epilogue()


def _socket_destination(b: ProgramBuilder, layout) -> None:
    """The record's sk_* fields: the destination the socket behind the record's fd holds (0 when the fd is
    not a socket the walk can read)."""
    done = b.label("sk_done")
    files_off, fdt_off = (off for off, _ in layout.hops("task_struct.files.fdt"))
    max_fds_off = layout.offset("fdtable.max_fds", 4)
    fd_array_off = layout.offset("fdtable.fd", 8)
    private_data = layout.offset("file.private_data", 8)
    f_inode = layout.offset("file.f_inode", 8)
    i_mode = layout.offset("inode.i_mode", 2)
    socket_sk = layout.offset("socket.sk", 8)
    family = layout.offset("sock_common.skc_family", 2)
    dport = layout.offset("sock_common.skc_dport", 2)
    daddr = layout.offset("sock_common.skc_daddr", 4)
    daddr6 = layout.offset("sock_common.skc_v6_daddr", 16)
    b.store_imm(CONNECT.sk_family, 0)
    b.store_imm(CONNECT.sk_dport, 0)
    b.emit(st_mem(BPF_W, R8, CONNECT.sk_daddr.offset, 0), st_mem(BPF_DW, R8, CONNECT.sk_daddr6.offset, 0),
           st_mem(BPF_DW, R8, CONNECT.sk_daddr6.offset + 8, 0),
           ldx_mem(BPF_W, R1, R8, CONNECT.fd.offset),
           jmp_imm(BPF_JGT, R1, 0x7FFFFFFF, done),
           stx_mem(BPF_DW, R10, R1, SLOT_C),
           ldx_mem(BPF_DW, R2, R10, SLOT_TASK),
           ldx_mem(BPF_DW, R2, R2, files_off),
           ldx_mem(BPF_DW, R2, R2, fdt_off),
           ldx_mem(BPF_W, R3, R2, max_fds_off),
           jmp_reg(BPF_JGE, R1, R3, done))
    b.probe_read_kernel(SLOT_A, 8, R2, fd_array_off)
    b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_A), ldx_mem(BPF_DW, R1, R10, SLOT_C), alu64_imm(BPF_LSH, R1, 3),
           alu64_reg(BPF_ADD, R3, R1))
    # fd[fd]: the struct file.  Its private_data is a struct socket only if its inode is a socket's (a
    # connect on another file fails with ENOTSOCK, and private_data is then something else entirely).
    b.probe_read_kernel(SLOT_A, 8, R3)
    b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_A), jmp_imm(BPF_JEQ, R3, 0, done), stx_mem(BPF_DW, R10, R3, SLOT_C))
    b.probe_read_kernel(SLOT_A, 8, R3, f_inode)
    b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_A), jmp_imm(BPF_JEQ, R3, 0, done))
    b.probe_read_kernel(SLOT_A, 2, R3, i_mode)
    b.emit(ldx_mem(BPF_H, R1, R10, SLOT_A), alu64_imm(BPF_AND, R1, S_IFMT), jmp_imm(BPF_JNE, R1, S_IFSOCK, done),
           ldx_mem(BPF_DW, R3, R10, SLOT_C))
    # file->private_data (the struct socket), socket->sk (the struct sock)
    for off in (private_data, socket_sk):
        b.probe_read_kernel(SLOT_A, 8, R3, off)
        b.emit(ldx_mem(BPF_DW, R3, R10, SLOT_A), jmp_imm(BPF_JEQ, R3, 0, done))
    # r3: struct sock *.  family, dport and the IPv4 address share a word; the IPv6 address is elsewhere.
    b.emit(stx_mem(BPF_DW, R10, R3, SLOT_A))
    lo = min(family, dport, daddr)
    b.probe_read_kernel(SLOT_BUF, max(family + 2, dport + 2, daddr + 4) - lo, R3, lo)
    b.emit(ldx_mem(BPF_H, R1, R10, SLOT_BUF + family - lo), stx_mem(BPF_H, R8, R1, CONNECT.sk_family.offset),
           ldx_mem(BPF_H, R1, R10, SLOT_BUF + dport - lo), stx_mem(BPF_H, R8, R1, CONNECT.sk_dport.offset),
           ldx_mem(BPF_W, R1, R10, SLOT_BUF + daddr - lo), stx_mem(BPF_W, R8, R1, CONNECT.sk_daddr.offset),
           ldx_mem(BPF_DW, R3, R10, SLOT_A),
           mov64_reg(R1, R8), alu64_imm(BPF_ADD, R1, CONNECT.sk_daddr6.offset), mov64_imm(R2, 16),
           alu64_imm(BPF_ADD, R3, daddr6), call("probe_read_kernel"),
           label(done))
