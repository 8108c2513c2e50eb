"""Pure tests of the syscall layer: syscall numbers, perf_event_attr layout, ioctl numbers, error text."""
from __future__ import annotations

import ctypes
import errno

import pytest

from kestrel_raw.kernel import perf, uapi
from kestrel_raw.errors import BPFError, PrivilegeError, SetupError, bpf_error
from kestrel_raw.kernel.syscall import syscall_numbers


def test_syscall_numbers_per_arch():
    assert syscall_numbers("x86_64") == {"__NR_bpf": 321, "__NR_perf_event_open": 298}
    assert syscall_numbers("aarch64") == {"__NR_bpf": 280, "__NR_perf_event_open": 241}
    assert syscall_numbers("arm64") == syscall_numbers("aarch64")
    assert syscall_numbers("amd64") == syscall_numbers("x86_64")


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(SetupError) as e:
        syscall_numbers("riscv64")
    assert str(e.value) == (
        "unsupported architecture 'riscv64': kestrel-raw knows the bpf(2) and perf_event_open(2) syscall "
        "numbers only for aarch64, x86_64; add this architecture's numbers to kestrel_raw/kernel/syscall.py "
        "SYSCALL_NUMBERS")


# (field, offset, size) of struct perf_event_attr, include/uapi/linux/perf_event.h
PERF_EVENT_ATTR_LAYOUT = [
    ("type", 0, 4), ("size", 4, 4), ("config", 8, 8), ("sample_period", 16, 8), ("sample_type", 24, 8),
    ("read_format", 32, 8), ("wakeup_events", 48, 4), ("bp_type", 52, 4), ("config1", 56, 8),
    ("config2", 64, 8), ("branch_sample_type", 72, 8), ("sample_regs_user", 80, 8),
    ("sample_stack_user", 88, 4), ("clockid", 92, 4), ("sample_regs_intr", 96, 8), ("aux_watermark", 104, 4),
    ("sample_max_stack", 108, 2), ("aux_sample_size", 112, 4), ("sig_data", 120, 8), ("config3", 128, 8),
]


@pytest.mark.parametrize("field,offset,size", PERF_EVENT_ATTR_LAYOUT)
def test_perf_event_attr_offsets(field, offset, size):
    f = getattr(uapi.PerfEventAttr, field)
    assert f.offset == offset
    assert f.size == size


def test_perf_event_attr_size_is_a_published_revision():
    assert ctypes.sizeof(uapi.PerfEventAttr) == uapi.PERF_ATTR_SIZE_VER8 == 136
    # The revisions end where the fields that grew them end.
    assert uapi.PerfEventAttr.config2.offset + 8 == uapi.PERF_ATTR_SIZE_VER1
    assert uapi.PerfEventAttr.branch_sample_type.offset + 8 == uapi.PERF_ATTR_SIZE_VER2
    assert uapi.PerfEventAttr.clockid.offset + 4 == uapi.PERF_ATTR_SIZE_VER3
    assert uapi.PerfEventAttr.sample_regs_intr.offset + 8 == uapi.PERF_ATTR_SIZE_VER4
    assert uapi.PerfEventAttr.sample_max_stack.offset + 4 == uapi.PERF_ATTR_SIZE_VER5
    assert uapi.PerfEventAttr.aux_sample_size.offset + 8 == uapi.PERF_ATTR_SIZE_VER6
    assert uapi.PerfEventAttr.sig_data.offset + 8 == uapi.PERF_ATTR_SIZE_VER7


def test_perf_flag_bits_sit_in_the_u64_at_40_lsb_first():
    a = uapi.PerfEventAttr()
    a.disabled = 1
    a.exclude_kernel = 1
    a.precise_ip = 2
    assert bytes(a)[40:48] == (1 | 1 << 5 | 2 << 15).to_bytes(8, "little")


def test_tracepoint_attr_bytes():
    a = perf.tracepoint_attr(782)
    raw = bytes(a)
    assert len(raw) == 136
    assert raw[:16] == bytes.fromhex("02000000" "88000000" "0e03000000000000")
    assert raw[16:] == bytes(120)


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
