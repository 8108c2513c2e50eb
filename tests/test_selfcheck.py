"""The check after attaching (kestrel_raw/collector/selfcheck.py): each tracepoint is made to fire in the collector's
own process and its program seen to run; an attachment that does not run is made again, or the start
fails with an error that names it."""
from __future__ import annotations

import subprocess
import uuid

import pytest
import trio

from kestrel_raw.kernel import bpf
from kestrel_raw import programs
from kestrel_raw.collector import attach as attach_module
from kestrel_raw.collector import selfcheck
from kestrel_raw.asm import format_program
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig
from kestrel_raw.errors import SetupError
from kestrel_raw.programs.builder import ProgramBuilder

# A syscall neither the collector nor the test calls: a program attached there instead of where it
# belongs stands for an attachment the kernel accepted but never runs.
NEVER_CALLED = "sys_exit_setdomainname"


def _prologue_and_epilogue(self_tgid: int | None = 1234, **kw) -> str:
    b = ProgramBuilder("kr_t", self_tgid=self_tgid, nrings=2, wakeup_threshold=0, **kw)
    b.prologue()
    return format_program(b.epilogue())


def test_own_runs_are_counted_after_the_exit_off_every_other_path():
    # The own-tgid test jumps past the exit, to the count; every other process takes the same
    # instructions as without it.  The collector's programs read their own tgid from a frozen map
    # (self_tgid=None), so that their bytes are the same in every run (a pin file names them).
    assert _prologue_and_epilogue(self_tgid=None, self_index=3) == """\
; r6 = ctx (the tracepoint record); r7 = bpf_get_current_pid_tgid()
   0: (bf) r6 = r1
   1: (85) call bpf_get_current_pid_tgid#14
   2: (bf) r7 = r0
   3: (bf) r1 = r7
   4: (77) r1 >>= 32
; the collector's own tgid, from self_tgid (a frozen map): skip it
   5: (18) r2 = map[self_tgid][0]+0
   7: (61) r2 = *(u32 *)(r2 +0)
   8: (1d) if r1 == r2 goto pc+9
; skip the tgids in kr_filter
   9: (63) *(u32 *)(r10 -16) = r1
  10: (18) r1 = map[kr_filter]
  12: (bf) r2 = r10
  13: (07) r2 += -16
  14: (85) call bpf_map_lookup_elem#1
  15: (55) if r0 != 0x0 goto pc+0
; return 0
  16: (b7) r0 = 0
  17: (95) exit
; the collector's own run: self_runs[3] += 1 (this CPU), return 0
  18: (62) *(u32 *)(r10 -16) = 3
  19: (18) r1 = map[self_runs]
  21: (bf) r2 = r10
  22: (07) r2 += -16
  23: (85) call bpf_map_lookup_elem#1
  24: (15) if r0 == 0x0 goto pc-9
  25: (79) r1 = *(u64 *)(r0 +0)
  26: (07) r1 += 1
  27: (7b) *(u64 *)(r0 +0) = r1
  28: (b7) r0 = 0
  29: (95) exit"""
    # With the tgid as an immediate (bench/staircase.py's cut programs), one jump instead of three slots.
    imm = _prologue_and_epilogue(self_index=3).splitlines()
    assert imm[6:8] == ["; the collector's own tgid (1234): skip it", "   5: (15) if r1 == 0x4d2 goto pc+9"]
    # Without a slot: the own tgid returns at once.
    plain = _prologue_and_epilogue()
    assert "   5: (15) if r1 == 0x4d2 goto pc+7" in plain and "self_runs" not in plain
    assert plain.splitlines()[8:] == imm[8:18]


def test_every_tracepoint_but_execs_can_be_provoked():
    # A program added without a way to provoke it would go unchecked: say so here.
    tracepoints = {(s.group, s.tracepoint) for specs in programs.SPECS.values() for s in specs if s.tail is None}
    assert tracepoints - selfcheck.PROVOKE.keys() - selfcheck.NEEDS_COLLECTOR == {("sched", "sched_process_exec")}
    assert selfcheck.PROVOKE.keys() | selfcheck.NEEDS_COLLECTOR <= tracepoints
    # bash's readline is made to run by the collector's own bash (collector/shellcheck.py)
    assert selfcheck.NEEDS_COLLECTOR == {("uretprobe", "readline")}


def _misdirect(monkeypatch, times: int) -> list[str]:
    """Attach kr_openat to NEVER_CALLED the first ``times`` times; returns the tracepoints attached."""
    real = attach_module.attach_tracepoint
    made: list[str] = []

    def attach(prog, group, name, *args, **kwargs):
        if name == "sys_exit_openat" and made.count(f"{group}:{name}") < times:
            made.append(f"{group}:{name}")
            return real(prog, "syscalls", NEVER_CALLED, *args, **kwargs)
        made.append(f"{group}:{name}")
        return real(prog, group, name, *args, **kwargs)

    monkeypatch.setattr(attach_module, "attach_tracepoint", attach)
    # Syscall programs run before the syscall returns: a short wait is plenty for them.
    monkeypatch.setattr(attach_module, "SELF_CHECK_WAIT", 0.3)
    return made


@pytest.mark.kernel
async def test_each_provoked_program_has_run_once_attached():
    send, _recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(buffers=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        runs = c._maps[programs.MAP_SELF_RUNS]
        ran = {spec.name: runs.sum_u64(i) for i, (spec, _prog) in enumerate(c._programs) if spec.tail is None}
        c.stop()
    assert c.reattached == []
    assert set(ran) == {"kr_exec", "kr_openat_e", "kr_openat2_e", "kr_openat", "kr_openat2", "kr_connect_e",
                        "kr_connect", "kr_exit",
                        # the process cache's (context=True, the default) and failed execs'
                        "kr_fork", "kr_execve_e", "kr_execveat_e", "kr_execve_x", "kr_execveat_x", "kr_chdir",
                        "kr_fchdir", "kr_chroot", "kr_unshare", "kr_setns", "kr_sethostname"}
    assert all(ran[name] >= 1 for name in ran if name != "kr_exec"), ran


@pytest.mark.kernel
async def test_an_attachment_that_does_not_run_is_made_again(monkeypatch):
    made = _misdirect(monkeypatch, times=1)
    send, recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, context=False))
    path = f"/tmp/kestrel-selfcheck-{uuid.uuid4().hex}"
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        assert c.reattached == ["syscalls:sys_exit_openat"]
        assert made == ["syscalls:sys_enter_openat", "syscalls:sys_enter_openat2", "syscalls:sys_exit_openat",
                        "syscalls:sys_exit_openat2", "syscalls:sys_exit_openat"]
        assert [link.target for link in c._links.values()] == [
            "syscalls:sys_enter_openat", "syscalls:sys_enter_openat2", "syscalls:sys_exit_openat",
            "syscalls:sys_exit_openat2"]
        # The attachment made again delivers.
        await trio.to_thread.run_sync(lambda: subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL))
        with trio.fail_after(10):
            async for ev in recv:
                if ev.get("path") == path:  # the status event has none
                    break
        c.stop()


@pytest.mark.kernel
async def test_an_attachment_that_never_runs_fails_the_start_and_detaches_everything(monkeypatch):
    made = _misdirect(monkeypatch, times=99)
    send, _recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, context=False))
    c.load()
    progs = {prog.info().id for _spec, prog in c._programs}
    with pytest.raises(SetupError) as err:
        await c.start()  # the error comes before start() would report started (and outside any nursery)
    message = str(err.value)
    assert "kr_openat at syscalls:sys_exit_openat" in message and "kr_openat2" not in message
    assert "3 tries" in message and "Events there would be missed" in message
    assert made.count("syscalls:sys_exit_openat") == attach_module.SELF_CHECK_TRIES
    assert c.reattached == ["syscalls:sys_exit_openat"] * (attach_module.SELF_CHECK_TRIES - 1)
    # Nothing is left attached or loaded (the kernel frees programs after a grace period).
    with trio.fail_after(5):
        while progs & set(bpf.prog_ids()):
            await trio.sleep(0.05)


@pytest.mark.kernel
def test_the_cli_reports_a_start_failure_in_one_line(monkeypatch, tmp_path, capsys):
    # The error leaves collector.start inside the CLI's nursery: trio 0.25 and later wrap it in an
    # ExceptionGroup, which must still end as main's one line and exit status 1, not a traceback.
    from kestrel_raw import cli

    _misdirect(monkeypatch, times=99)
    status = cli.main(["run", "--events", "open", "--buffers", "1", "--keep-privileges", "--no-context",
                       "--output", str(tmp_path / "events.jsonl")])
    err = capsys.readouterr().err
    assert status == cli.EXIT_SETUP, err
    summary, error = err.strip().splitlines()  # the summary (nothing was delivered), then the error
    assert summary.startswith("kestrel-raw: records=0 "), err
    assert error.startswith("kestrel-raw: the kernel accepted kr_openat at syscalls:sys_exit_openat"), err
