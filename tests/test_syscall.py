"""Pure tests of the syscall layer: syscall numbers, perf_event_attr layout, ioctl numbers, error text."""
from __future__ import annotations

import errno

import pytest

from kestrel_raw.kernel import perf, syscall, uapi
from kestrel_raw.errors import BPFError, PrivilegeError, SetupError, bpf_error
from kestrel_raw.kernel.syscall import syscall_numbers


def test_syscall_numbers_per_arch():
    assert syscall_numbers("x86_64") == {"__NR_bpf": 321, "__NR_perf_event_open": 298, "__NR_execveat": 322}
    assert syscall_numbers("aarch64") == {"__NR_bpf": 280, "__NR_perf_event_open": 241, "__NR_execveat": 281}
    assert syscall_numbers("arm64") == syscall_numbers("aarch64")
    assert syscall_numbers("amd64") == syscall_numbers("x86_64")


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(SetupError) as e:
        syscall_numbers("riscv64")
    assert str(e.value) == (
        "unsupported architecture 'riscv64': kestrel-raw knows the bpf(2) and perf_event_open(2) syscall "
        "numbers only for aarch64, x86_64; add this architecture's numbers to kestrel_raw/kernel/syscall.py "
        "SYSCALL_NUMBERS")


# (field, offset, size) of struct perf_event_attr, include/uapi/linux/perf_event.h; a union member under each
# of its names.
PERF_EVENT_ATTR_LAYOUT = [
    ("type", 0, 4), ("size", 4, 4), ("config", 8, 8), ("sample_period", 16, 8), ("sample_freq", 16, 8),
    ("sample_type", 24, 8), ("read_format", 32, 8), ("wakeup_events", 48, 4), ("wakeup_watermark", 48, 4),
    ("bp_type", 52, 4), ("bp_addr", 56, 8), ("kprobe_func", 56, 8), ("uprobe_path", 56, 8), ("config1", 56, 8),
    ("bp_len", 64, 8), ("kprobe_addr", 64, 8), ("probe_offset", 64, 8), ("config2", 64, 8),
    ("branch_sample_type", 72, 8), ("sample_regs_user", 80, 8), ("sample_stack_user", 88, 4),
    ("clockid", 92, 4), ("sample_regs_intr", 96, 8), ("aux_watermark", 104, 4), ("sample_max_stack", 108, 2),
    ("__reserved_2", 110, 2), ("aux_sample_size", 112, 4), ("__reserved_3", 116, 4), ("sig_data", 120, 8),
    ("config3", 128, 8),
]
# The flag bits of the u64 at offset 40, least significant first.
PERF_EVENT_ATTR_BITS = [
    "disabled", "inherit", "pinned", "exclusive", "exclude_user", "exclude_kernel", "exclude_hv", "exclude_idle",
    "mmap", "comm", "freq", "inherit_stat", "enable_on_exec", "task", "watermark", "precise_ip", "precise_ip",
    "mmap_data", "sample_id_all", "exclude_host", "exclude_guest", "exclude_callchain_kernel",
    "exclude_callchain_user", "mmap2", "comm_exec", "use_clockid", "context_switch", "write_backward",
    "namespaces", "ksymbol", "bpf_event", "aux_output", "cgroup", "text_poke", "build_id", "inherit_thread",
    "remove_on_exec", "sigtrap",
] + ["__reserved_1"] * 26


@pytest.mark.parametrize("field,offset,size", PERF_EVENT_ATTR_LAYOUT)
def test_perf_event_attr_offsets(field, offset, size):
    f = uapi.PerfEventAttr.field(field)
    assert (f.offset, f.size, f.bit_size) == (offset, size, 0)


def test_perf_event_attr_bits():
    owners = []
    for bit in range(64):
        [name] = [n for n, f in uapi.PerfEventAttr.fields.items()
                  if f.bit_size and f.bit_offset <= bit < f.bit_offset + f.bit_size]
        assert uapi.PerfEventAttr.field(name).offset == 40
        owners.append(name)
    assert owners == PERF_EVENT_ATTR_BITS


def test_perf_event_attr_size_is_a_published_revision():
    a = uapi.PerfEventAttr
    assert a.size == uapi.PERF_ATTR_SIZE_VER8 == 136
    # The revisions end where the fields that grew them end.
    assert a.offsetofend("config2") == uapi.PERF_ATTR_SIZE_VER1
    assert a.offsetofend("branch_sample_type") == uapi.PERF_ATTR_SIZE_VER2
    assert a.offsetofend("clockid") == uapi.PERF_ATTR_SIZE_VER3
    assert a.offsetofend("sample_regs_intr") == uapi.PERF_ATTR_SIZE_VER4
    assert a.offsetofend("__reserved_2") == uapi.PERF_ATTR_SIZE_VER5
    assert a.offsetofend("__reserved_3") == uapi.PERF_ATTR_SIZE_VER6
    assert a.offsetofend("sig_data") == uapi.PERF_ATTR_SIZE_VER7


def test_perf_flag_bits_sit_in_the_u64_at_40_lsb_first():
    a = uapi.PerfEventAttr.pack(disabled=1, exclude_kernel=1, precise_ip=2, sigtrap=1)
    assert bytes(a)[40:48] == (1 | 1 << 5 | 2 << 15 | 1 << 37).to_bytes(8, "little")
    assert a[:40] == bytes(40) and a[48:] == bytes(136 - 48)
    back = uapi.PerfEventAttr.unpack(a)
    assert (back["disabled"], back["inherit"], back["exclude_kernel"], back["precise_ip"], back["sigtrap"]) == \
        (1, 0, 1, 2, 1)


def test_tracepoint_attr_bytes():
    a = perf.tracepoint_attr(782)
    assert type(a) is bytearray
    assert len(a) == 136
    assert a[:16] == bytes.fromhex("02000000" "88000000" "0e03000000000000")
    assert a[16:] == bytes(120)


# --- handing bytes to the kernel -------------------------------------------------------------------------

def test_pinned_gives_the_address_of_the_bytearray_itself():
    import ctypes  # the test reads the memory the way the kernel would; the package never imports ctypes here
    buf = bytearray(b"kestrel")
    with syscall.pinned(buf) as addr:
        assert ctypes.string_at(addr, len(buf)) == b"kestrel"
        ctypes.memmove(addr, b"K", 1)  # what the kernel writes lands in buf: no copy in between
        with pytest.raises(BufferError):
            buf.extend(b"!")  # pinned: it cannot be resized, so its bytes cannot move
    assert buf == bytearray(b"Kestrel")
    buf.extend(b"!")  # released after the block
    with syscall.pinned(None) as addr:
        assert addr == 0


def test_pinned_refuses_what_the_kernel_must_not_write_into():
    with pytest.raises(TypeError, match="must be a bytearray .the kernel may write into it., got bytes"):
        with syscall.pinned(b"immutable"):
            pass


def test_an_attr_size_past_its_end_is_refused_before_the_call():
    with pytest.raises(ValueError, match="size 17 is past the end of the 16-byte attr"):
        syscall.bpf_errno(uapi.BPF_MAP_CREATE, bytearray(16), 17)
    with pytest.raises(TypeError, match="the bpf.2. attr must be a bytearray"):
        syscall.bpf_errno(uapi.BPF_MAP_CREATE, bytes(16), 16)


def test_perf_ioctl_numbers():
    # _IO('$', 0), _IO('$', 1), _IOW('$', 8, __u32) in the asm-generic encoding (x86_64 and arm64).
    assert uapi.PERF_EVENT_IOC_ENABLE == 0x2400
    assert uapi.PERF_EVENT_IOC_DISABLE == 0x2401
    assert uapi.PERF_EVENT_IOC_SET_BPF == 0x40042408
    assert uapi.PERF_FLAG_FD_CLOEXEC == 8
    assert uapi.PERF_TYPE_TRACEPOINT == 2


def test_eperm_names_the_missing_capability():
    e = bpf_error("BPF_PROG_LOAD", errno.EPERM)
    assert type(e) is PrivilegeError
    assert str(e) == ("BPF_PROG_LOAD failed: EPERM (Operation not permitted); the process needs CAP_BPF and "
                      "CAP_PERFMON (or CAP_SYS_ADMIN): run as root or grant the capabilities")
    e = bpf_error("BPF_ENABLE_STATS", errno.EPERM)
    assert "needs CAP_SYS_ADMIN" in str(e)
    e = bpf_error("perf_event_open", errno.EACCES)
    assert type(e) is PrivilegeError and "needs CAP_PERFMON (or CAP_SYS_ADMIN)" in str(e)


def test_other_errnos_are_bpf_errors():
    e = bpf_error("BPF_MAP_CREATE", errno.E2BIG)
    assert type(e) is BPFError and e.errno == errno.E2BIG and e.op == "BPF_MAP_CREATE"
    assert str(e) == ("BPF_MAP_CREATE failed: E2BIG (Argument list too long); the kernel is older than the "
                      "attr layout used; it refuses non-zero bytes it does not know")


def test_a_perf_event_attr_shorter_than_its_size_field_is_refused_before_the_call():
    attr = uapi.PerfEventAttr.pack(type=uapi.PERF_TYPE_TRACEPOINT, size=uapi.PerfEventAttr.size)
    with pytest.raises(ValueError, match="the perf_event_attr says it is 136 bytes but is 72"):
        syscall.perf_event_open(attr[:72], -1, 0, -1, 0)
    with pytest.raises(ValueError, match="says it is 64 bytes but is 16"):  # size 0: the first revision
        syscall.perf_event_open(bytearray(16), -1, 0, -1, 0)


def test_an_empty_buffer_has_nothing_to_point_to():
    with pytest.raises(ValueError, match="a buffer handed to the kernel is empty: there is no byte to point to "
                                         r"\(pass None for a NULL pointer\)"):
        syscall.pinned(bytearray())
