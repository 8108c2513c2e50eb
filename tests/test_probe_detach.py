"""After stop, the uprobes of shell_command and dns_query are gone: from the kernel (no program, no link, no
uprobe event) and from a process that maps the probed files (the kernel restores the instruction it had
replaced with its breakpoint).  Alone in its module: a collector of another test with these events attached
would keep the breakpoints in."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import trio

from kestrel_raw import CollectorConfig, KestrelCollector
from kestrel_raw.kernel import bpf
from kestrel_raw.probes.targets import bash_binary, function_offset, libc_binary, maps_of

pytestmark = pytest.mark.kernel


def _code_at(pid: int, path: str, file_offset: int, n: int = 4) -> bytes:
    """``n`` bytes of process ``pid``'s memory where it maps ``path``'s byte ``file_offset`` as code."""
    real = os.path.realpath(path)
    for m in maps_of(pid):
        if os.path.realpath(m.path) == real and "x" in m.perms and m.offset <= file_offset < m.offset + m.end - m.start:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(m.start + file_offset - m.offset)
                return mem.read(n)
    raise AssertionError(f"process {pid} does not map {path}'s offset 0x{file_offset:x} as code")


def _file_bytes(path: str, offset: int, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


async def test_probes_are_gone_from_the_kernel_and_from_a_running_process_after_stop():
    # A bash that keeps running through the test: it maps bash's readline and libc's getaddrinfo, where the
    # kernel writes its breakpoints while the probes are attached (every process mapping the file).
    sleeper = subprocess.Popen(["bash", "-c", "sleep 60; :"])
    try:
        targets = [(bash_binary(), "readline"), (libc_binary(), "getaddrinfo")]
        offsets = [(path, function_offset(path, sym)) for path, sym in targets]
        time.sleep(0.2)  # bash has started and mapped its libraries
        original = [_file_bytes(path, off) for path, off in offsets]
        assert [_code_at(sleeper.pid, path, off) for path, off in offsets] == original
        send, _recv = trio.open_memory_channel(100_000)
        c = KestrelCollector(send, CollectorConfig(event_types=["shell_command", "dns_query"], buffers=1,
                                                   context=False))
        async with trio.open_nursery() as nursery:
            await nursery.start(c.start)
            progs = {prog.info().id for _spec, prog in c._programs}
            links = {link.info().id for link in c._links.values()}
            assert len(progs) == 3 and len(links) == 3
            attached = [_code_at(sleeper.pid, path, off) for path, off in offsets]
            c.stop()
        assert all(a != o for a, o in zip(attached, original)), (attached, original)
        if os.uname().machine == "x86_64":
            assert [a[0] for a in attached] == [0xCC, 0xCC]  # int3
        assert [_code_at(sleeper.pid, path, off) for path, off in offsets] == original
        with trio.fail_after(10):
            while progs & set(bpf.prog_ids()) or links & set(bpf.link_ids()):
                await trio.sleep(0.05)
        # No uprobe event was made through tracefs either (the uprobe PMU makes none; none is left).
        for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            if os.path.exists(f"{tracefs}/uprobe_events"):
                with open(f"{tracefs}/uprobe_events") as f:
                    text = f.read()
                assert all(os.path.basename(path) not in text for path, _ in targets), text
    finally:
        sleeper.kill()
        sleeper.wait()
