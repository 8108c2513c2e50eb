"""Cross-checks with bpftool (a test dependency: .ci/run installs it): the kernel objects we create and free
are the ones bpftool sees.  A kernel test: the conftest policy decides what happens without the privilege,
and with KESTREL_REQUIRE_KERNEL=1 a missing bpftool fails it rather than skipping."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from kestrel_raw.kernel import bpf
from kestrel_raw.asm import R0, R1, exit_insn, ld_map_fd, mov64_imm
from kestrel_raw.maps import HashMap
from kestrel_raw.kernel.prog import Program

from helpers import BPFTOOL

pytestmark = [pytest.mark.kernel, pytest.mark.crosscheck]


def _bpftool(*args: str) -> subprocess.CompletedProcess:
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    return subprocess.run([BPFTOOL, "--json", *args], capture_output=True, text=True, timeout=30)


def _show(kind: str, obj_id: int) -> dict | None:
    r = _bpftool(kind, "show", "id", str(obj_id))
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def test_bpftool_sees_our_program_and_map_then_not():
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    m = HashMap(8, 8, 4, name="kr_xcheck")
    p = Program([ld_map_fd(R1, "m"), mov64_imm(R0, 0), exit_insn()], maps={"m": m}, name="kr_xcheck")
    info, minfo = p.info(), m.map_info()
    shown = _show("prog", info.id)
    assert shown is not None
    assert (shown["id"], shown["type"], shown["name"], shown["tag"]) == (info.id, "tracepoint", "kr_xcheck",
                                                                         info.tag.hex())
    assert shown["map_ids"] == [minfo.id]
    assert shown["bytes_xlated"] == info.xlated_prog_len
    mshown = _show("map", minfo.id)
    assert (mshown["type"], mshown["name"], mshown["bytes_key"], mshown["bytes_value"], mshown["max_entries"]) == (
        "hash", "kr_xcheck", 8, 8, 4)
    p.close()
    m.close()
    deadline = time.monotonic() + 5
    while (info.id in bpf.prog_ids() or minfo.id in bpf.map_ids()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _show("prog", info.id) is None
    assert _show("map", minfo.id) is None
