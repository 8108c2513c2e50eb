"""Where a uprobe goes (kestrel_raw/probes/targets.py): a file by path, by name, or as a running process maps
it (/proc/PID/maps, opened through /proc/PID/map_files), and the offset of a symbol in it; the errors say what
is missing.  Reads /proc and files only: no BPF."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from kestrel_raw.elf import ElfFile
from kestrel_raw.errors import SetupError
from kestrel_raw.probes.targets import (
    Uprobe, bash_binary, function_offset, libc_binary, mapped_file, maps_of, resolve_binary,
)


def test_this_process_maps_its_libc_and_the_map_files_link_opens_that_very_file():
    libc = libc_binary()
    assert any(m.path == libc and "x" in m.perms for m in maps_of(os.getpid()))
    link, shown = mapped_file(os.getpid(), "libc.so.6")
    assert shown == libc
    assert os.stat(link).st_ino == os.stat(libc).st_ino
    assert link.startswith(f"/proc/{os.getpid()}/map_files/") or link == f"/proc/{os.getpid()}/root{libc}"
    # A name's stem finds the same file ("libc" for libc.so.6).
    assert mapped_file(os.getpid(), "libc")[1] == libc


def test_a_deleted_file_is_still_found_as_the_process_maps_it(tmp_path):
    copy = tmp_path / "sleep-copy"
    shutil.copy2(shutil.which("sleep"), copy)
    proc = subprocess.Popen([str(copy), "30"])
    try:
        deadline = time.monotonic() + 10
        while not any(m.path == str(copy) for m in maps_of(proc.pid)):
            assert time.monotonic() < deadline, "the copy never ran"
            time.sleep(0.01)
        copy.unlink()
        (m,) = [m for m in maps_of(proc.pid) if m.path == str(copy) and "x" in m.perms]
        assert m.deleted
        link, shown = mapped_file(proc.pid, "sleep-copy")
        assert shown == str(copy) and link.startswith(f"/proc/{proc.pid}/map_files/")
        assert os.stat(link).st_nlink == 0        # the unlinked file, still open through the mapping
    finally:
        proc.kill()
        proc.wait()


def test_names_and_paths_resolve_as_libbpf_resolves_them():
    assert resolve_binary("/bin/bash") == ("/bin/bash", "/bin/bash")
    path, shown = resolve_binary("libc.so.6")
    assert path == shown and os.path.samefile(path, libc_binary())
    assert os.path.samefile(resolve_binary("bash")[0], bash_binary())
    # With a pid, a name is what that process maps.
    link, shown = resolve_binary("libc.so.6", os.getpid())
    assert shown == libc_binary() and link.startswith("/proc/")


def test_the_offset_is_the_elf_readers_and_a_missing_symbol_says_so():
    libc = libc_binary()
    assert function_offset(libc, "getaddrinfo") == ElfFile.load(libc).symbol_file_offset("getaddrinfo")
    probe = Uprobe("readline", True, bash_binary)
    assert probe.kind == "uretprobe"
    assert probe.locate() == (bash_binary(), ElfFile.load(bash_binary()).symbol_file_offset("readline"))
    with pytest.raises(SetupError, match=r"^cannot place a uprobe on 'no_such_function_kr': .*no symbol "
                                         r"'no_such_function_kr'"):
        function_offset(libc, "no_such_function_kr")
    with pytest.raises(SetupError, match=r"^cannot open uprobe target '/nonexistent/kr': No such file"):
        function_offset("/nonexistent/kr", "main")


def test_what_cannot_be_found_is_named():
    with pytest.raises(SetupError, match=rf"^process {os.getpid()} maps no file named 'libkr-none.so' \(it maps: "):
        mapped_file(os.getpid(), "libkr-none.so")
    with pytest.raises(SetupError, match=r"^no process 999999999 \(/proc/999999999/maps is absent\)"):
        maps_of(999999999)
    with pytest.raises(SetupError, match=r"uprobe binary 'libkr-none.so' found in none of"):
        resolve_binary("libkr-none.so")
