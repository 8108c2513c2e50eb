"""The CI helper scripts in tools/: the vendored kernel-matrix copy and the binfmt check .ci/run makes.

The binfmt check runs against a fake binfmt_misc directory and a fake ``update-binfmts`` on PATH, so both
outcomes (the import mends it; nothing mends it) are exercised without touching the host's registrations.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
SHARED_MATRIX = ROOT.parent / "shared" / "tools" / "kernel-matrix.sh"
VENDOR_NOTE_LINES = 3  # the lines tools/kmx-matrix.sh adds after the shared copy's third line


def test_vendored_matrix_differs_from_the_shared_copy_only_in_its_note():
    if not SHARED_MATRIX.exists():
        pytest.skip(f"no shared copy at {SHARED_MATRIX} to compare with")
    ours = (TOOLS / "kmx-matrix.sh").read_text().splitlines()
    shared = SHARED_MATRIX.read_text().splitlines()
    note = ours[3:3 + VENDOR_NOTE_LINES]
    assert all(line.startswith("# ") for line in note) and "Vendored copy" in note[0]
    assert ours[:3] + ours[3 + VENDOR_NOTE_LINES:] == shared


def test_vendored_matrix_names_no_machine_path():
    head = (TOOLS / "kmx-matrix.sh").read_text().splitlines()[:8]
    assert not any("/work/" in line for line in head)


FAKE_UPDATE_BINFMTS = """#!/bin/sh
# fake update-binfmts: records its arguments; --import creates the entry when MEND=1
echo "$@" >> "$LOG"
if [ "$1" = --import ] && [ "$MEND" = 1 ]; then
  printf 'enabled\\ninterpreter /usr/libexec/qemu-binfmt/%s-binfmt-P\\n' "$2" > "$BINFMT/$2"
fi
exit 0
"""


def run_binfmt(tmp_path: Path, *, mend: bool, present: bool = False) -> subprocess.CompletedProcess:
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    (binfmt / "register").write_text("")
    if present:
        (binfmt / "qemu-aarch64").write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "update-binfmts"
    fake.write_text(FAKE_UPDATE_BINFMTS)
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", KMX_BINFMT_DIR=str(binfmt),
               LOG=str(tmp_path / "calls"), BINFMT=str(binfmt), MEND="1" if mend else "0")
    return subprocess.run([str(TOOLS / "kmx-binfmt.sh"), "arm64"], env=env, capture_output=True, text=True)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls"
    return log.read_text().splitlines() if log.exists() else []


def test_binfmt_missing_entry_is_imported(tmp_path):
    r = run_binfmt(tmp_path, mend=True)
    assert r.returncode == 0, r.stderr
    assert calls(tmp_path)[0] == "--import qemu-aarch64"
    assert r.stdout == "kmx-binfmt: qemu-aarch64 registered (enabled)\n"


def test_binfmt_present_entry_is_left_alone(tmp_path):
    r = run_binfmt(tmp_path, mend=False, present=True)
    assert r.returncode == 0, r.stderr
    assert calls(tmp_path) == []


def test_binfmt_entry_that_cannot_be_made_fails_in_one_line(tmp_path):
    r = run_binfmt(tmp_path, mend=False)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert "no qemu-aarch64 entry" in lines[0] and "update-binfmts --import qemu-aarch64" in lines[0]
