"""dns_query: the name a process asked the C library's ``getaddrinfo`` to resolve, and what it answered.

    int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                    struct addrinfo **res);

Two programs, joined per thread by a task storage slot (``kr_dns``), as the syscall programs' entry copies
are (kestrel_raw/programs/entry.py), but in a map of their own: getaddrinfo makes syscalls (it opens
/etc/hosts, connects to the name server), whose entry copies would overwrite the slot they share.

- At the call (a uprobe): the name and the service are copied from the caller's memory (another thread
  could rewrite them while the resolver works: the copy is what getaddrinfo was given), with hints'
  ai_family, the ``res`` pointer and the time.
- At the return (a uretprobe): the return value, then, when it is 0, the result list ``*res`` walked:
  each entry's family, socket type and sockaddr.  The list repeats every address once per socket type
  (SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, in that order, unless hints asked for one), so the entries of the
  first entry's socket type are the distinct addresses; up to DNS_ADDRS of them are kept, from the list's
  first WALK entries.  The list is getaddrinfo's own answer, read before the caller gets it.

A return whose call was not seen (it began before the collector attached) reports nothing.  A nested call
(an NSS module calling getaddrinfo) reuses the slot: the outer return then finds it taken and reports
nothing.

The layouts read in user memory are the C library's ABI, the same in glibc and musl on the 64-bit
architectures kestrel-raw supports (netdb.h, netinet/in.h): not kernel layouts, so not in BTF.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_DW, BPF_H, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JLE, BPF_JNE, BPF_MUL
from kestrel_raw.asm import BPF_SUB, BPF_W, R0, R1, R2, R3, R4, R8, R9, R10, alu64_imm, alu64_reg, call, ja
from kestrel_raw.asm import jmp_imm, jmp_reg, label, ldx_mem, mov64_imm, mov64_reg
from kestrel_raw.asm import st_mem, stx_mem
from kestrel_raw.programs.builder import SLOT_B, SLOT_C, SLOT_D, SLOT_TASK, STAT_READ_FAULT, ProgramBuilder
from kestrel_raw.kernel.uapi import AF_INET, AF_INET6, SIN6_ADDR, SIN_ADDR, SIN_PORT, SOCKADDR_IN6_SIZE
from kestrel_raw.programs.entry import task_slot
from kestrel_raw.programs.strings import string_length
from kestrel_raw.spec import (
    DNS_ADDR_SIZE, DNS_ADDRS, DNS_QUERY, FLAG_FAULT, FLAG_TRUNCATED, MAX_QUERY, MAX_SERVICE, CallArg,
)

MAP_DNS = "kr_dns"  # BPF_MAP_TYPE_TASK_STORAGE: one slot per thread, made at its first getaddrinfo call

# The getaddrinfo arguments, as the spec names them.
NODE = DNS_QUERY.query.source
SERVICE = DNS_QUERY.service.source
HINTS = CallArg(2, "hints")
RES = CallArg(3, "res")

# Bytes a string read may take: one more than the limit (to see that it is longer), plus the NUL.
QUERY_READ = MAX_QUERY + 2
SERVICE_READ = MAX_SERVICE + 2

# The slot's layout.
SLOT_MARKER = 0  # u32: 1 once the call armed it, 0 once the return took it
SLOT_QUERY_RC = 4  # s32: probe_read_user_str's result for node (bytes with the NUL, -errno); 0: node NULL
SLOT_SERVICE_RC = 8  # s32: the same for service
SLOT_FAMILY = 12  # s32: hints->ai_family (0 without hints)
SLOT_START = 16  # u64: bpf_ktime_get_ns() at the call
SLOT_RES = 24  # u64: the res argument (struct addrinfo **)
SLOT_QUERY = 32
SLOT_SERVICE = SLOT_QUERY + (QUERY_READ + 7) // 8 * 8
DNS_VALUE_SIZE = SLOT_SERVICE + (SERVICE_READ + 7) // 8 * 8

# struct addrinfo (LP64): int ai_flags, ai_family, ai_socktype, ai_protocol; socklen_t ai_addrlen;
# struct sockaddr *ai_addr; char *ai_canonname; struct addrinfo *ai_next.
AI_FAMILY = 4
AI_SOCKTYPE = 8
AI_ADDRLEN = 16
AI_ADDR = 24
AI_NEXT = 40
ADDRINFO_SIZE = 48
SOCKADDR_READ = SOCKADDR_IN6_SIZE  # the most of an entry's sockaddr read

WALK = 3 * DNS_ADDRS  # list entries walked at most: DNS_ADDRS addresses in each of three socket types

# Stack slots of the return program, below the builder's (kestrel_raw/programs/builder.py).
SLOT_AI = -256  # 48 bytes: the list entry being read
SLOT_SA = -288  # 32 bytes: its sockaddr
SLOT_NEXT = SLOT_C  # u64: the next entry's address
SLOT_SOCKTYPE = SLOT_D  # u64: the first entry's socket type


def build_call(b: ProgramBuilder, fmt, layout) -> list:
    """The uprobe at getaddrinfo's first instruction: copy its arguments into the thread's slot."""
    b.prologue()
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
    task_slot(b, create=True, missing="out", map_name=MAP_DNS)
    b.emit(mov64_reg(R8, R0), st_mem(BPF_W, R8, SLOT_MARKER, 1), call("ktime_get_ns"),
           stx_mem(BPF_DW, R8, R0, SLOT_START), st_mem(BPF_W, R8, SLOT_FAMILY, 0))
    b.load_call(R1, RES, layout)
    b.emit(stx_mem(BPF_DW, R8, R1, SLOT_RES))
    no_hints = b.label("no_hints")
    b.load_call(R3, HINTS, layout)
    b.emit(jmp_imm(BPF_JEQ, R3, 0, no_hints), alu64_imm(BPF_ADD, R3, AI_FAMILY), mov64_reg(R1, R8),
           alu64_imm(BPF_ADD, R1, SLOT_FAMILY), mov64_imm(R2, 4), call("probe_read_user"), label(no_hints))
    for arg, rc, data, size in ((NODE, SLOT_QUERY_RC, SLOT_QUERY, QUERY_READ),
                                (SERVICE, SLOT_SERVICE_RC, SLOT_SERVICE, SERVICE_READ)):
        null, done = b.label("null"), b.label("copied")
        b.load_call(R3, arg, layout)
        b.emit(jmp_imm(BPF_JEQ, R3, 0, null), mov64_reg(R1, R8), alu64_imm(BPF_ADD, R1, data), mov64_imm(R2, size),
               call("probe_read_user_str"), stx_mem(BPF_W, R8, R0, rc), ja(done),
               label(null), st_mem(BPF_W, R8, rc, 0), label(done))
    return b.epilogue()


def _string(b: ProgramBuilder, rc_off: int, data_off: int, limit: int, length_field, dst_extra: int | None) -> None:
    """Copy one string of the slot (SLOT_B) into the record: its length into ``length_field``, its bytes at
    the record's query offset (+ the query's length when ``dst_extra`` is that field's offset).  A failed
    read at the call sets FAULT, a longer string than ``limit`` TRUNCATED."""
    kind = DNS_QUERY
    b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_B), ldx_mem(BPF_W, R9, R1, rc_off))  # an s32: the read's -errno
    string_length(b, kind, R9, limit, rc32=True)  # 0: NULL, nothing given
    b.store(length_field, R9)
    b.emit(
        jmp_imm(BPF_JGT, R9, limit, "out"),  # never: bounds the length for the verifier
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, kind.query.offset),
    )
    if dst_extra is not None:
        b.emit(ldx_mem(BPF_W, R2, R8, dst_extra), jmp_imm(BPF_JGT, R2, MAX_QUERY, "out"), alu64_reg(BPF_ADD, R1, R2))
    b.emit(mov64_reg(R2, R9), ldx_mem(BPF_DW, R3, R10, SLOT_B), alu64_imm(BPF_ADD, R3, data_off),
           call("probe_read_kernel"))


def _entry(b: ProgramBuilder, first: bool, walked: str) -> None:
    """One entry of the result list (its address in SLOT_NEXT): keep its address when its socket type is
    the first entry's; r9 counts the addresses kept."""
    kind = DNS_QUERY
    nxt, keep, v6, stored, sized = b.label("next"), b.label("keep"), b.label("v6"), b.label("stored"), b.label("sized")
    b.emit(
        ldx_mem(BPF_DW, R3, R10, SLOT_NEXT),
        jmp_imm(BPF_JEQ, R3, 0, walked),
        mov64_reg(R1, R10), alu64_imm(BPF_ADD, R1, SLOT_AI), mov64_imm(R2, ADDRINFO_SIZE),
        call("probe_read_user"),
        jmp_imm(BPF_JNE, R0, 0, f"{walked}_fault"),
        ldx_mem(BPF_DW, R1, R10, SLOT_AI + AI_NEXT), stx_mem(BPF_DW, R10, R1, SLOT_NEXT),
        ldx_mem(BPF_W, R1, R10, SLOT_AI + AI_SOCKTYPE),
    )
    if first:
        b.emit(stx_mem(BPF_DW, R10, R1, SLOT_SOCKTYPE))
    else:
        b.emit(ldx_mem(BPF_DW, R2, R10, SLOT_SOCKTYPE), jmp_reg(BPF_JNE, R1, R2, nxt))
    b.emit(
        ldx_mem(BPF_W, R1, R10, SLOT_AI + AI_FAMILY),
        jmp_imm(BPF_JEQ, R1, AF_INET, keep),
        jmp_imm(BPF_JNE, R1, AF_INET6, nxt),
        label(keep),
        jmp_imm(BPF_JGE, R9, DNS_ADDRS, f"{walked}_more"),
        ldx_mem(BPF_DW, R3, R10, SLOT_AI + AI_ADDR),
        jmp_imm(BPF_JEQ, R3, 0, nxt),
        ldx_mem(BPF_W, R2, R10, SLOT_AI + AI_ADDRLEN),
        jmp_imm(BPF_JLE, R2, SOCKADDR_READ, sized),
        mov64_imm(R2, SOCKADDR_READ),
        label(sized),
        st_mem(BPF_DW, R10, SLOT_SA, 0), st_mem(BPF_DW, R10, SLOT_SA + 8, 0),
        st_mem(BPF_DW, R10, SLOT_SA + 16, 0), st_mem(BPF_DW, R10, SLOT_SA + 24, 0),
        mov64_reg(R1, R10), alu64_imm(BPF_ADD, R1, SLOT_SA),
        call("probe_read_user"),
        jmp_imm(BPF_JNE, R0, 0, f"{walked}_fault"),
        # the slot: r4 = record + addrs + naddrs * DNS_ADDR_SIZE
        jmp_imm(BPF_JGE, R9, DNS_ADDRS, f"{walked}_more"),  # never: bounds r9 for the verifier
        mov64_reg(R1, R9), alu64_imm(BPF_MUL, R1, DNS_ADDR_SIZE), mov64_reg(R4, R8), alu64_reg(BPF_ADD, R4, R1),
        ldx_mem(BPF_W, R1, R10, SLOT_AI + AI_FAMILY), stx_mem(BPF_H, R4, R1, kind.addrs.offset),
        ldx_mem(BPF_H, R1, R10, SLOT_SA + SIN_PORT), stx_mem(BPF_H, R4, R1, kind.addrs.offset + 2),
        ldx_mem(BPF_W, R2, R10, SLOT_AI + AI_FAMILY),
        jmp_imm(BPF_JEQ, R2, AF_INET6, v6),
        ldx_mem(BPF_W, R1, R10, SLOT_SA + SIN_ADDR), stx_mem(BPF_W, R4, R1, kind.addrs.offset + 4),
        ja(stored),
        label(v6),
    )
    for word in range(0, 16, 4):
        b.emit(ldx_mem(BPF_W, R1, R10, SLOT_SA + SIN6_ADDR + word), stx_mem(BPF_W, R4, R1, kind.addrs.offset + 4 + word))
    b.emit(label(stored), alu64_imm(BPF_ADD, R9, 1), label(nxt))


def build_return(b: ProgramBuilder, fmt, layout) -> list:
    """The uretprobe at getaddrinfo's return: the record, from the slot and the result list."""
    kind = DNS_QUERY
    b.prologue()
    b.scratch()
    b.header(kind, layout)
    task_slot(b, create=False, missing="out", map_name=MAP_DNS)
    b.emit(ldx_mem(BPF_W, R1, R0, SLOT_MARKER), jmp_imm(BPF_JNE, R1, 1, "out"), st_mem(BPF_W, R0, SLOT_MARKER, 0),
           stx_mem(BPF_DW, R10, R0, SLOT_B))
    b.fill(kind.ret, layout=layout)
    b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_B), ldx_mem(BPF_W, R1, R1, SLOT_FAMILY))
    b.store(kind.family, R1)
    b.emit(call("ktime_get_ns"), ldx_mem(BPF_DW, R1, R10, SLOT_B), ldx_mem(BPF_DW, R1, R1, SLOT_START),
           alu64_reg(BPF_SUB, R0, R1))
    b.store(kind.duration_ns, R0)
    b.store_imm(kind._pad1, 0)
    _string(b, SLOT_QUERY_RC, SLOT_QUERY, MAX_QUERY, kind.query_len, None)
    _string(b, SLOT_SERVICE_RC, SLOT_SERVICE, MAX_SERVICE, kind.service_len, kind.query_len.offset)

    # The addresses: the area zeroed, then the list walked when getaddrinfo succeeded.
    for off in range(0, kind.addrs.size, 8):
        b.emit(st_mem(BPF_DW if kind.addrs.size - off >= 8 else BPF_W, R8, kind.addrs.offset + off, 0))
    walked = b.label("walked")
    b.emit(mov64_imm(R9, 0), ldx_mem(BPF_W, R1, R8, kind.ret.offset), jmp_imm(BPF_JNE, R1, 0, walked),
           mov64_reg(R1, R10), alu64_imm(BPF_ADD, R1, SLOT_NEXT), mov64_imm(R2, 8),
           ldx_mem(BPF_DW, R3, R10, SLOT_B), ldx_mem(BPF_DW, R3, R3, SLOT_RES),
           call("probe_read_user"),  # *res: the list's first entry
           jmp_imm(BPF_JNE, R0, 0, f"{walked}_fault"))
    for i in range(WALK):
        _entry(b, i == 0, walked)
    # Entries left unwalked may hold more addresses.
    b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_NEXT), jmp_imm(BPF_JEQ, R1, 0, walked), label(f"{walked}_more"))
    b.set_flag(FLAG_TRUNCATED)
    b.emit(ja(walked), label(f"{walked}_fault"))
    b.set_flag(FLAG_FAULT)
    b.count(kind, STAT_READ_FAULT)
    b.emit(label(walked))
    b.store(kind.naddrs, R9)
    b.emit(ldx_mem(BPF_W, R1, R8, kind.query_len.offset), ldx_mem(BPF_W, R2, R8, kind.service_len.offset),
           jmp_imm(BPF_JGT, R1, MAX_QUERY, "out"), jmp_imm(BPF_JGT, R2, MAX_SERVICE, "out"),
           alu64_reg(BPF_ADD, R1, R2))
    b.size_from(R1, kind.fixed_size)
    b.submit(kind)
    return b.epilogue()


__all__ = ["MAP_DNS", "DNS_VALUE_SIZE", "build_call", "build_return"]
