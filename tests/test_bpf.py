"""bpf(2) commands: attr layouts, name checks, loading, verifier errors, object ids, stats."""
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys

import pytest

from kestrel_raw.kernel import bpf, syscall, uapi
from kestrel_raw.asm import (
    assemble, atomic_op, BPF_ADD, BPF_DW, BPF_JEQ, BPF_W, R0, R1, R2, R10, alu64_imm, call, exit_insn,
    jmp_imm, label, ld_map_fd, ldx_mem, mov64_imm, mov64_reg, st_mem,
)
from kestrel_raw.errors import BPFError, ConfigError, VerifierError
from kestrel_raw.maps import ArrayMap
from kestrel_raw.kernel.prog import Program

# (layout in kernel/uapi.py, field, offset, size): the uapi offsets of union bpf_attr's members for each
# command we use, and of bpf_prog_info / bpf_map_info / bpf_link_info, from include/uapi/linux/bpf.h.  A union
# member is pinned under each of its names.
ATTR_LAYOUT = [
    ("MapCreateAttr", "map_type", 0, 4), ("MapCreateAttr", "key_size", 4, 4),
    ("MapCreateAttr", "value_size", 8, 4), ("MapCreateAttr", "max_entries", 12, 4),
    ("MapCreateAttr", "map_flags", 16, 4), ("MapCreateAttr", "inner_map_fd", 20, 4),
    ("MapCreateAttr", "numa_node", 24, 4), ("MapCreateAttr", "map_name", 28, 16),
    ("MapElemAttr", "map_fd", 0, 4), ("MapElemAttr", "key", 8, 8), ("MapElemAttr", "value", 16, 8),
    ("MapElemAttr", "next_key", 16, 8), ("MapElemAttr", "flags", 24, 8),
    ("MapBatchAttr", "in_batch", 0, 8), ("MapBatchAttr", "out_batch", 8, 8), ("MapBatchAttr", "keys", 16, 8),
    ("MapBatchAttr", "values", 24, 8), ("MapBatchAttr", "count", 32, 4), ("MapBatchAttr", "map_fd", 36, 4),
    ("MapBatchAttr", "elem_flags", 40, 8), ("MapBatchAttr", "flags", 48, 8),
    ("ProgLoadAttr", "prog_type", 0, 4), ("ProgLoadAttr", "insn_cnt", 4, 4), ("ProgLoadAttr", "insns", 8, 8),
    ("ProgLoadAttr", "license", 16, 8), ("ProgLoadAttr", "log_level", 24, 4),
    ("ProgLoadAttr", "log_size", 28, 4), ("ProgLoadAttr", "log_buf", 32, 8),
    ("ProgLoadAttr", "kern_version", 40, 4), ("ProgLoadAttr", "prog_flags", 44, 4),
    ("ProgLoadAttr", "prog_name", 48, 16), ("ProgLoadAttr", "prog_ifindex", 64, 4),
    ("ProgLoadAttr", "expected_attach_type", 68, 4), ("ProgLoadAttr", "prog_btf_fd", 72, 4),
    ("ProgLoadAttr", "attach_btf_id", 108, 4), ("ProgLoadAttr", "attach_btf_obj_fd", 112, 4),
    ("ProgLoadAttr", "attach_prog_fd", 112, 4),
    ("InfoByFdAttr", "bpf_fd", 0, 4), ("InfoByFdAttr", "info_len", 4, 4), ("InfoByFdAttr", "info", 8, 8),
    ("LinkCreateAttr", "prog_fd", 0, 4), ("LinkCreateAttr", "target_fd", 4, 4),
    ("LinkCreateAttr", "attach_type", 8, 4), ("LinkCreateAttr", "flags", 12, 4),
    ("LinkCreateAttr", "bpf_cookie", 16, 8),
    ("RawTracepointAttr", "name", 0, 8), ("RawTracepointAttr", "prog_fd", 8, 4),
    ("GetIdAttr", "start_id", 0, 4), ("GetIdAttr", "next_id", 4, 4), ("GetIdAttr", "open_flags", 8, 4),
    ("GetIdAttr", "prog_id", 0, 4), ("GetIdAttr", "map_id", 0, 4), ("GetIdAttr", "link_id", 0, 4),
    ("EnableStatsAttr", "type", 0, 4),
    ("BpfProgInfo", "type", 0, 4), ("BpfProgInfo", "id", 4, 4), ("BpfProgInfo", "tag", 8, 8),
    ("BpfProgInfo", "jited_prog_len", 16, 4), ("BpfProgInfo", "xlated_prog_len", 20, 4),
    ("BpfProgInfo", "xlated_prog_insns", 32, 8), ("BpfProgInfo", "nr_map_ids", 52, 4),
    ("BpfProgInfo", "map_ids", 56, 8), ("BpfProgInfo", "name", 64, 16), ("BpfProgInfo", "btf_id", 128, 4),
    ("BpfProgInfo", "run_time_ns", 192, 8), ("BpfProgInfo", "run_cnt", 200, 8),
    ("BpfProgInfo", "recursion_misses", 208, 8), ("BpfProgInfo", "verified_insns", 216, 4),
    ("BpfMapInfo", "type", 0, 4), ("BpfMapInfo", "id", 4, 4), ("BpfMapInfo", "key_size", 8, 4),
    ("BpfMapInfo", "max_entries", 16, 4), ("BpfMapInfo", "map_flags", 20, 4), ("BpfMapInfo", "name", 24, 16),
    ("BpfMapInfo", "map_extra", 80, 8),
    ("BpfLinkInfo", "type", 0, 4), ("BpfLinkInfo", "id", 4, 4), ("BpfLinkInfo", "prog_id", 8, 4),
]


@pytest.mark.parametrize("layout,field,offset,size", ATTR_LAYOUT, ids=[f"{s}.{f}" for s, f, _, _ in ATTR_LAYOUT])
def test_attr_offsets_pinned(layout, field, offset, size):
    f = getattr(uapi, layout).field(field)
    assert (f.offset, f.size, f.bit_size) == (offset, size, 0)


def test_gpl_compatible_is_bit_0_of_the_u32_at_84():
    f = uapi.BpfProgInfo.field("gpl_compatible")
    assert (f.offset, f.size, f.bit_offset, f.bit_size) == (84, 4, 0, 1)
    info = bytearray(uapi.BpfProgInfo.size)
    info[84:88] = (0xFFFFFFFE | 1).to_bytes(4, "little")  # the 31 unnamed bits set too: only bit 0 is read
    assert uapi.BpfProgInfo.unpack(info)["gpl_compatible"] == 1


def test_attr_sizes_fit_debian_6_1():
    # Debian 6.1's union bpf_attr is 144 bytes; every size we pass must fit in it.
    sizes = {
        "map_create": uapi.MapCreateAttr.offsetofend("map_name"),
        "map_elem": uapi.MapElemAttr.offsetofend("flags"),
        "map_batch": uapi.MapBatchAttr.offsetofend("flags"),
        "prog_load": uapi.ProgLoadAttr.offsetofend("expected_attach_type"),
        "prog_load_btf": uapi.ProgLoadAttr.offsetofend("attach_btf_obj_fd"),
        "info": uapi.InfoByFdAttr.offsetofend("info"),
        "link_create": uapi.LinkCreateAttr.offsetofend("bpf_cookie"),
        "raw_tp": uapi.RawTracepointAttr.offsetofend("prog_fd"),
        "get_id": uapi.GetIdAttr.offsetofend("open_flags"),
        "stats": uapi.EnableStatsAttr.offsetofend("type"),
    }
    assert sizes == {"map_create": 44, "map_elem": 32, "map_batch": 56, "prog_load": 72, "prog_load_btf": 116, "info": 16,
                     "link_create": 24, "raw_tp": 12, "get_id": 12, "stats": 4}
    assert (uapi.BpfProgInfo.size, uapi.BpfMapInfo.size, uapi.BpfLinkInfo.size) == (232, 88, 12)


@pytest.mark.parametrize("name,message", [
    ("sixteen_chars_xx", "program name 'sixteen_chars_xx' is 16 characters long; the kernel allows at most 15"),
    ("bad-name", "program name 'bad-name' contains '-'; the kernel allows only letters, digits, '_' and '.'"),
    ("a b/c", "program name 'a b/c' contains ' /'; the kernel allows only letters, digits, '_' and '.'"),
])
def test_bad_names_rejected_before_the_call(name, message):
    with pytest.raises(ConfigError) as e:
        bpf.check_object_name(name, "program")
    assert str(e.value) == message


def test_good_names():
    assert bpf.check_object_name("kestrel.open_1", "map") == b"kestrel.open_1"
    assert bpf.check_object_name("", "map") == b""
    assert bpf.check_object_name("x" * 15, "map") == b"x" * 15


def test_program_must_be_whole_instructions():
    with pytest.raises(ValueError, match="8-byte instructions, got 12 bytes"):
        bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, b"\0" * 12)


# --- kernel --------------------------------------------------------------------------------------------

RET0 = [mov64_imm(R0, 0), exit_insn()]


@pytest.mark.kernel
def test_map_name_rejected_before_the_kernel_sees_it():
    with pytest.raises(ConfigError, match="map name 'no-dashes' contains '-'"):
        ArrayMap(8, 1, name="no-dashes")


@pytest.mark.kernel
def test_load_and_info():
    with ArrayMap(8, 1, name="kr_info") as m:
        prog = [
            st_mem(BPF_W, R10, -4, 0),                  # key = 0
            mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
            ld_map_fd(R1, "m"),
            call("map_lookup_elem"),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
        with Program(prog, maps={"m": m}, name="kr_info") as p:
            info = p.info()
            assert info.name == "kr_info"
            assert info.type == uapi.BPF_PROG_TYPE_TRACEPOINT
            assert info.map_ids == (m.map_info().id,)
            assert info.gpl_compatible is True
            # The verifier rewrites the program (it inlines an array lookup), so only the kernel's length counts.
            assert len(p.xlated()) == info.xlated_prog_len and info.xlated_prog_len % 8 == 0
            assert p.xlated()[:8] == p.code[:8]  # the first store is left as written
            assert len(info.tag) == 8 and info.tag != bytes(8)


@pytest.mark.kernel
def test_verifier_rejection_carries_the_log():
    # exit with r0 never written: the verifier's "R0 !read_ok".
    with pytest.raises(VerifierError) as e:
        Program([exit_insn()], name="kr_noret")
    assert e.value.errno == errno.EACCES
    assert "R0 !read_ok" in e.value.log.splitlines()
    assert "R0 !read_ok" in str(e.value)
    assert str(e.value).startswith("BPF_PROG_LOAD failed: EACCES (Permission denied); the verifier rejected")


@pytest.mark.kernel
def test_verifier_rejects_a_load_through_a_scalar():
    # r1 = 0; r0 = *(u64 *)(r1 + 0): a number is not a pointer.
    with pytest.raises(VerifierError) as e:
        Program([mov64_imm(R1, 0), ldx_mem(BPF_DW, R0, R1, 0), mov64_imm(R0, 0), exit_insn()], name="kr_scalar")
    assert "R1 invalid mem access 'scalar'" in e.value.log.splitlines()


@pytest.mark.kernel
def test_gpl_only_helper_from_non_gpl_program():
    with pytest.raises(VerifierError) as e:
        Program([call("get_current_task"), mov64_imm(R0, 0), exit_insn()], name="kr_lic", license="MIT")
    assert "cannot call GPL-restricted function from non-GPL compatible program" in e.value.log


@pytest.mark.kernel
def test_verifier_log_grows_past_enospc():
    # A small starting buffer for a program whose failure log is longer: the load retries with a larger one
    # and still returns the whole log (ending with the error), not a truncated one.
    long = []
    for i in range(200):
        long += [mov64_imm(R0, i)]
    long += [ldx_mem(BPF_DW, R0, R2, 0), exit_insn()]
    code = assemble(long)
    with pytest.raises(VerifierError) as e:
        bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, code, name="kr_grow", log_size=256)
    assert len(e.value.log) > 256
    assert "R2 !read_ok" in e.value.log


@pytest.mark.kernel
def test_closed_program_map_and_link_ids_are_gone():
    from kestrel_raw.kernel.attach import attach_raw_tracepoint
    m = ArrayMap(8, 1, name="kr_gone")
    p = Program([ld_map_fd(R1, "m"), mov64_imm(R0, 0), exit_insn()], maps={"m": m}, name="kr_gone",
                prog_type=uapi.BPF_PROG_TYPE_RAW_TRACEPOINT)
    link = attach_raw_tracepoint(p, "sys_enter")
    prog_id, map_id, link_id = p.info().id, m.map_info().id, link.info().id
    assert prog_id in bpf.prog_ids() and map_id in bpf.map_ids() and link_id in bpf.link_ids()
    with bpf.prog_get_fd_by_id(prog_id) as again:
        assert bpf.prog_info(again.fileno()).name == "kr_gone"
    link.close()
    p.close()
    m.close()
    link.close()  # idempotent
    p.close()
    m.close()
    assert (link.fd, p.fd, m.fd) == (-1, -1, -1)
    # Freeing happens after an RCU grace period; the ids disappear shortly after the last fd closes.
    _wait_gone(lambda: link_id in bpf.link_ids() or prog_id in bpf.prog_ids() or map_id in bpf.map_ids())
    assert link_id not in bpf.link_ids()
    assert prog_id not in bpf.prog_ids()
    assert map_id not in bpf.map_ids()
    with pytest.raises(BPFError) as e:
        bpf.prog_get_fd_by_id(prog_id)
    assert str(e.value) == (f"BPF_PROG_GET_FD_BY_ID failed: ENOENT (No such file or directory); no program has id "
                            f"{prog_id} (it was unloaded)")


def _wait_gone(still_there, timeout=5.0):
    import time
    deadline = time.monotonic() + timeout
    while still_there() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.kernel
def test_e2big_for_unknown_nonzero_attr_bytes():
    # An attr longer than this kernel's bpf_attr with a non-zero byte past the end: the kernel's answer to a
    # caller that depends on a field it does not know.
    attr = bytearray(4096)
    attr[4095] = 1
    with pytest.raises(BPFError) as e:
        syscall.bpf(uapi.BPF_MAP_CREATE, attr)
    assert e.value.errno == errno.E2BIG
    assert str(e.value) == ("BPF_MAP_CREATE failed: E2BIG (Argument list too long); the kernel is older than "
                            "the attr layout used; it refuses non-zero bytes it does not know")


PR_CAPBSET_DROP = 24  # include/uapi/linux/prctl.h


def _run_unprivileged(code: str) -> str:
    """Run ``code`` in a child that stays root but has no capabilities: with every capability dropped from
    the bounding set before exec, the new image's permitted and effective sets are empty."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def drop():
        libc = ctypes.CDLL(None, use_errno=True)
        cap = 0
        while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            cap += 1
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": root},
                       preexec_fn=drop, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.kernel
def test_eperm_says_which_capability_is_missing():
    out = _run_unprivileged(
        "from kestrel_raw.kernel import bpf, uapi\n"
        "from kestrel_raw.errors import PrivilegeError\n"
        "try:\n    bpf.enable_stats(uapi.BPF_STATS_RUN_TIME)\n"
        "except PrivilegeError as e:\n    print(type(e).__name__, e)\n")
    assert out == ("PrivilegeError BPF_ENABLE_STATS failed: EPERM (Operation not permitted); the process needs "
                   "CAP_SYS_ADMIN: run as root or grant the capabilities")
    out = _run_unprivileged(
        "from kestrel_raw.kernel import bpf, uapi\n"
        "from kestrel_raw.errors import PrivilegeError\n"
        "try:\n    bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, bytes.fromhex('b700000000000000' '9500000000000000'))\n"
        "except PrivilegeError as e:\n    print(type(e).__name__, e)\n")
    assert out == ("PrivilegeError BPF_PROG_LOAD failed: EPERM (Operation not permitted); the process needs "
                   "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load this program type; under kernel lockdown, "
                   "some program types and helpers are refused outright")


@pytest.mark.kernel
def test_enable_stats_counts_runs():
    import struct
    from kestrel_raw.kernel.attach import attach_raw_tracepoint
    with ArrayMap(8, 1, name="kr_stats") as m:
        # Count this process's own getpid() calls; sys_enter's args[1] is the syscall number.
        prog = [
            st_mem(BPF_W, R10, -4, 0),
            mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
            ld_map_fd(R1, "m"), call("map_lookup_elem"),
            jmp_imm(BPF_JEQ, R0, 0, "out"),
            mov64_imm(R1, 1),
            atomic_op(BPF_DW, BPF_ADD, R0, R1, 0),
            label("out"),
            mov64_imm(R0, 0), exit_insn(),
        ]
        with Program(prog, maps={"m": m}, name="kr_stats", prog_type=uapi.BPF_PROG_TYPE_RAW_TRACEPOINT) as p:
            with bpf.enable_stats(uapi.BPF_STATS_RUN_TIME):
                with attach_raw_tracepoint(p, "sys_enter"):
                    for _ in range(100):
                        os.getppid()
                info = p.info()
                runs = struct.unpack("<Q", m[0])[0]
            # Every run the program counted in its map, the kernel counted too (the map counter runs on
            # every syscall of every process, so only >= 100 is certain).
            assert runs >= 100
            assert info.run_cnt == runs
            assert info.run_time_ns > 0
            # With stats off, the counters stop (unless the kernel.bpf_stats_enabled sysctl, which a
            # benchmark may have set, turns them on for everyone).
            with attach_raw_tracepoint(p, "sys_enter"):
                for _ in range(100):
                    os.getppid()
            with open("/proc/sys/kernel/bpf_stats_enabled") as f:
                sysctl_on = f.read().strip() != "0"
            if not sysctl_on:
                assert p.info().run_cnt == info.run_cnt
