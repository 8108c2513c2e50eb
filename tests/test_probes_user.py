"""Your own programs (kestrel_raw/probes/user.py): assembled with kestrel_raw.asm, attached to uprobes and
uretprobes (on a function of a program built here, with its argument and its return value; on a stripped
program's dynamic symbol; in one process, found through its /proc/PID/maps), kprobes, kretprobes, fentry and
fexit where the kernel has them (the qemu guests: Debian's 6.1 and 6.12; this host refuses them in one line),
their records read by the collector's pollers; and the README's example, run as written."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time

import pytest
import trio
from construct import Int32ul, Int64sl, Struct

from kestrel_raw import CollectorConfig, KestrelCollector
from kestrel_raw.asm import (
    BPF_ADD, BPF_ARSH, BPF_DW, BPF_JNE, BPF_LSH, BPF_RSH, BPF_W, R0, R1, R2, R3, R4, R6, R10, alu64_imm, call, exit_insn, jmp_imm,
    label, ld_map_fd, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem,
)
from kestrel_raw.elf import ElfFile
from kestrel_raw.errors import ConfigError, SetupError
from kestrel_raw.maps import RingBufReader
from kestrel_raw.probes import AsmMap, AsmObject, AsmProgram, call_registers

from helpers import ENV, REPO, probe_binary

Record = Struct("which" / Int32ul, "tgid" / Int32ul, "value" / Int64sl)
RECORD = struct.Struct("<IIq")
RING = 1 << 16
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


def record_program(which: int, load_value: list, tgid: int | None = None) -> list:
    """A program that writes (which, its tgid, r1 after ``load_value``) into ring "events" (r6 = ctx);
    ``tgid``: for that process alone."""
    insns = [mov64_reg(R6, R1), call("get_current_pid_tgid"), alu64_imm(BPF_RSH, R0, 32)]
    if tgid is not None:
        insns.append(jmp_imm(BPF_JNE, R0, tgid, "out"))
    return [
        *insns,
        st_mem(BPF_W, R10, -16, which),
        stx_mem(BPF_W, R10, R0, -12),
        *load_value,
        stx_mem(BPF_DW, R10, R1, -8),
        ld_map_fd(R1, "events"), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -16), mov64_imm(R3, 16),
        mov64_imm(R4, 0), call("ringbuf_output"),
        label("out"), mov64_imm(R0, 0), exit_insn(),
    ]


def reg(offset: int) -> list:
    """r1 = the u64 at ctx + offset (a register of the ctx's pt_regs, or an fentry/fexit argument slot)."""
    return [ldx_mem(BPF_DW, R1, R6, offset)]


def int_reg(offset: int) -> list:
    """r1 = the C int at ctx + offset, sign-extended: an int argument or return value fills the low half of its
    register or slot alone (the upper half is not defined to be its sign)."""
    return [*reg(offset), alu64_imm(BPF_LSH, R1, 32), alu64_imm(BPF_ARSH, R1, 32)]


def events(*programs: AsmProgram) -> AsmObject:
    return AsmObject("t", programs, maps={"events": AsmMap.ringbuf(RING)})


def records(loaded, want: int, timeout: float = 10.0) -> list[tuple[int, int, int]]:
    fd, size = loaded.ringbufs()["events"]
    out = []
    with RingBufReader(fd.fileno(), size) as reader:
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            out += [RECORD.unpack(r[:16]) for r in reader.drain()]
            time.sleep(0.01)
    return out


class Squarer:
    """The probed program (tests/c_src/uprobe_target.c): kr_square of each number written to it."""

    def __init__(self, path) -> None:
        self.proc = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n"  # its libraries are mapped, its code is in
        self.pid = self.proc.pid

    def square(self, x: int) -> int:
        self.proc.stdin.write(f"{x}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


# -- the API's refusals (no kernel) ---------------------------------------------------------------------------

NOP = [mov64_imm(R0, 0), exit_insn()]


@pytest.mark.parametrize("program, message", [
    (AsmProgram("p", NOP, "xdp/eth0"), "program 'p': section 'xdp/eth0' names no probe type this API attaches; "
                                       "give one of tracepoint/..., raw_tracepoint/..., tp_btf/..., uprobe/..., "
                                       "uretprobe/..., kprobe/..., kretprobe/..., fentry/..., fexit/..."),
    (AsmProgram("p", NOP, "kprobe"), "program 'p': section 'kprobe' names no target \\(write it as kprobe/TARGET\\)"),
    (AsmProgram("p", NOP, "kprobe/do_sys_openat2", pid=1), "program 'p': pid is for uprobes; a kprobe program sees "
                                                           "every process"),
])
def test_a_section_the_api_cannot_attach_is_refused_when_the_object_is_made(program, message):
    with pytest.raises(ConfigError, match=message):
        events(program)


def test_an_object_needs_programs_with_distinct_names_and_known_maps():
    with pytest.raises(ConfigError, match="AsmObject 't' has no programs"):
        AsmObject("t", [])
    with pytest.raises(ConfigError, match=r"AsmObject 't': program names repeat \(p, p\)"):
        AsmObject("t", [AsmProgram("p", NOP, "tp_btf/sched_switch")] * 2)
    with pytest.raises(ConfigError, match="map type 'stack_trace' is unknown; give one of hash, array"):
        AsmObject("t", [AsmProgram("p", NOP, "tp_btf/sched_switch")], maps={"m": AsmMap("stack_trace", 4, 8, 1)})


# -- uprobes on a program built here ------------------------------------------------------------------------

@pytest.mark.kernel
def test_uprobe_and_uretprobe_see_the_argument_and_the_return_value(tmp_path):
    binary = probe_binary("uprobe_target", tmp_path)
    regs = call_registers()
    obj = events(AsmProgram("sq_call", record_program(0, reg(regs.args[0])), f"uprobe/{binary}:kr_square"),
                 AsmProgram("sq_ret", record_program(1, reg(regs.ret)), f"uretprobe/{binary}:kr_square"))
    with obj.load() as loaded:
        loaded.attach()
        squarer = Squarer(binary)
        assert [squarer.square(x) for x in (7, -3, 1 << 20)] == [50, 10, (1 << 40) + 1]
        squarer.close()
        got = records(loaded, 6)
    pid = squarer.pid
    assert got == [(0, pid, 7), (1, pid, 50), (0, pid, -3), (1, pid, 10), (0, pid, 1 << 20), (1, pid, (1 << 40) + 1)]


@pytest.mark.kernel
def test_uprobe_on_a_stripped_programs_dynamic_symbol(tmp_path):
    binary = probe_binary("uprobe_target_stripped", tmp_path)
    elf = ElfFile.load(str(binary))
    assert not elf.has_section(".symtab") and elf.symbol("kr_square").table == ".dynsym"
    obj = events(AsmProgram("sq_call", record_program(0, reg(call_registers().args[0])),
                            f"uprobe/{binary}:kr_square"))
    with obj.load() as loaded:
        loaded.attach()
        squarer = Squarer(binary)
        assert squarer.square(12) == 145
        squarer.close()
        assert records(loaded, 1) == [(0, squarer.pid, 12)]


@pytest.mark.kernel
def test_a_uprobe_for_one_process_finds_its_file_through_its_maps(tmp_path):
    binary = probe_binary("uprobe_target", tmp_path)
    one, other = Squarer(binary), Squarer(binary)
    try:
        # By file name: the file process `one` maps under that name (/proc/PID/maps), for it alone.
        obj = events(AsmProgram("sq_one", record_program(0, reg(call_registers().args[0])),
                                f"uprobe/{binary.name}:kr_square", pid=one.pid))
        with obj.load() as loaded:
            loaded.attach()
            assert (other.square(5), one.square(6), other.square(7)) == (26, 37, 50)
            assert records(loaded, 2, timeout=1.0) == [(0, one.pid, 6)]
    finally:
        one.close()
        other.close()


@pytest.mark.kernel
async def test_records_go_through_the_collector_parsed_by_the_schema(tmp_path):
    binary = probe_binary("uprobe_target", tmp_path)
    obj = events(AsmProgram("sq_ret", record_program(1, reg(call_registers().ret)), f"uretprobe/{binary}:kr_square"))
    send, recv = trio.open_memory_channel(100)
    c = KestrelCollector(send, CollectorConfig(asm_object=obj, record_schema=Record, event_types=()))
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        squarer = await trio.to_thread.run_sync(Squarer, binary)
        assert await trio.to_thread.run_sync(squarer.square, 9) == 82
        with trio.fail_after(10):
            record = await recv.receive()
        c.stop()
    squarer.close()
    assert (record.object, record.map, record.value) == ("t", "events", {"which": 1, "tgid": squarer.pid, "value": 82})
    assert record.data[:16] == RECORD.pack(1, squarer.pid, 82)
    assert c.stats().delivered["t:events"] == 1


# -- kprobes and trampolines: the qemu guests have them; this host refuses them in one line --------------------

@pytest.mark.kernel
def test_kprobe_and_kretprobe_where_the_kernel_has_them():
    regs, me = call_registers(), os.getpid()
    obj = events(AsmProgram("k_call", record_program(0, int_reg(regs.args[0]), me), "kprobe/do_sys_openat2"),
                 AsmProgram("k_ret", record_program(1, reg(regs.ret), me), "kretprobe/do_sys_openat2"))
    with obj.load() as loaded:
        if not os.path.exists(KPROBE_PMU):
            with pytest.raises(SetupError) as e:
                loaded.attach()
            assert str(e.value) == (f"this kernel has no kprobe PMU ({KPROBE_PMU}/type is absent): kprobe programs "
                                    "cannot be attached here (the kernel needs CONFIG_KPROBE_EVENTS)")
            return
        loaded.attach()
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
        got = records(loaded, 2)
    # os.open is openat(AT_FDCWD, ...): do_sys_openat2's first argument is -100; it returns the fd.
    assert (0, me, -100) in got and (1, me, fd) in got


@pytest.mark.kernel
def test_fentry_and_fexit_where_the_kernel_has_trampolines():
    me = os.getpid()
    # fentry/fexit: the ctx is the function's arguments as u64s, then (fexit) its return value:
    # do_sys_openat2(int dfd, const char __user *filename, struct open_how *how).
    obj = events(AsmProgram("f_entry", record_program(2, int_reg(0), me), "fentry/do_sys_openat2"),
                 AsmProgram("f_exit", record_program(3, reg(24), me), "fexit/do_sys_openat2"))
    try:
        loaded = obj.load()
    except SetupError as e:
        assert str(e) == ("program 'f_entry' (fentry/do_sys_openat2): this kernel refuses fentry programs (BPF "
                          "trampolines: EPERM; under lockdown, or without CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS)")
        return
    with loaded:
        try:
            loaded.attach()
        except SetupError as e:          # loaded, but no trampoline to attach it with (Debian's arm64 6.1)
            assert str(e) == ("this kernel cannot attach fentry programs (ENOTSUPP from BPF_RAW_TRACEPOINT_OPEN: "
                              "no BPF trampoline on this kernel or architecture): program 'f_entry' "
                              "(fentry/do_sys_openat2)"), e
            return
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
        got = records(loaded, 2)
    assert (2, me, -100) in got and (3, me, fd) in got


# -- the README's example ---------------------------------------------------------------------------------

def readme_example() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)
    (example,) = [b for b in blocks if "AsmObject(" in b]
    return example


@pytest.mark.kernel
def test_readme_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.splitlines()
    m = re.fullmatch(r"getpid events \{'tgid': (\d+), 'ret': (\d+)\}", line)
    assert m and m.group(1) == m.group(2), line
