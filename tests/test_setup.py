"""Wrong set-up: one clear line on stderr and a non-zero exit, never a traceback (issue 4 item 5).

Each case runs `python -m kestrel_raw run` in a child, with the host made wrong for that child only:
capabilities taken away with setpriv(1), BTF pointed at a missing or corrupt file with --btf, tracefs
unmounted in a private mount namespace (unshare(1)) where the child lacks CAP_SYS_ADMIN to mount it again.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from kestrel_raw.kernel import bpf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)
SETPRIV = shutil.which("setpriv")
UNSHARE = shutil.which("unshare")
RUN = [sys.executable, "-m", "kestrel_raw", "run", "--duration", "1"]


def run_cli(args, prefix=(), timeout=60):
    proc = subprocess.run([*prefix, *RUN, *args], env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kestrel-raw: "), stderr
    return lines[0]


def _kr_progs() -> set[int]:
    out = set()
    for prog_id in bpf.prog_ids():
        try:
            with bpf.prog_get_fd_by_id(prog_id) as fd:
                if bpf.prog_info(fd.fileno()).name.startswith("kr_"):
                    out.add(prog_id)
        except OSError:
            pass  # freed meanwhile
    return out


# -- configuration (no kernel needed: refused before anything is loaded) ------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--events", "exec,chdir"], "kestrel-raw: --events: unknown event type 'chdir'; valid: exec, open, connect, exit, "
                                 "fork, shell_command, dns_query"),
    (["--events", "status"], "kestrel-raw: --events: status is not collected from the kernel"),
    (["--ancestors", "65"], "kestrel-raw: --ancestors must be an integer from 0 to 64, got 65"),
    (["--ancestors", "2", "--no-context"], "kestrel-raw: --ancestors needs context=True"),
    (["--events", ","], "kestrel-raw: --events: none given in ','"),
    (["--buffer-size", "12288"], "kestrel-raw: --buffer-size 12288 is not a power of two; the kernel requires one "
                                 "for ring buffers (e.g. 16384)"),
    (["--buffer-size", "1024"], "kestrel-raw: --buffer-size 1024 is not a multiple of the page size"),
    (["--buffers", "0"], "kestrel-raw: --buffers must be at least 1, got 0"),
    (["--queue-size", "0"], "kestrel-raw: --queue-size must be at least 1, got 0"),
    (["--wakeup-bytes", "16777216"], "kestrel-raw: --wakeup-bytes 16777216 must be at least 0 and below "
                                     "--buffer-size (8388608)"),
    (["--dump-programs", "/no/such/dir"], "kestrel-raw: --dump-programs '/no/such/dir' is not a directory; create it or leave it unset"),
    (["--user", "0"], "kestrel-raw: --user must be a non-root id (1 to 4294967294), got 0"),
    (["--duration", "-1"], "--duration must be a positive number of seconds, got -1.0"),
    (["--user", "no-such-user-kr"], "--user 'no-such-user-kr': no such user"),
])
def test_bad_configuration_is_one_line_exit_2(args, needle):
    rc, out, err = run_cli(args)
    assert rc == 2, err
    assert out == ""
    assert needle in one_line(err)


def test_bad_queue_policy_is_refused_by_the_parser():
    rc, _out, err = run_cli(["--queue-policy", "lossy"])
    assert rc == 2
    assert "Traceback" not in err
    assert "argument --queue-policy: invalid choice: 'lossy' (choose from 'block', 'drop')" in err


# -- the host is wrong ---------------------------------------------------------------------------------------

@pytest.mark.kernel
def test_missing_btf_file(tmp_path):
    before = _kr_progs()
    missing = tmp_path / "no-vmlinux"
    rc, out, err = run_cli(["--btf", str(missing)])
    assert rc == 1
    assert out == ""
    assert one_line(err) == (f"kestrel-raw: no kernel BTF at {missing}: kestrel-raw takes kernel struct layouts "
                             f"from BTF, so it needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    assert _kr_progs() <= before  # nothing of it stays loaded


@pytest.mark.kernel
@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"garbage that is not BTF at all" * 10, "truncated"])
def test_corrupt_btf_file(tmp_path, content):
    if content == "truncated":
        with open("/sys/kernel/btf/vmlinux", "rb") as f:
            content = f.read(4096)  # a valid header whose sections run past the end
    path = tmp_path / "vmlinux"
    path.write_bytes(content)
    rc, out, err = run_cli(["--btf", str(path)])
    assert rc == 1
    line = one_line(err)
    assert line.startswith(f"kestrel-raw: the kernel BTF at {path} cannot be used: "), line


@pytest.mark.kernel
def test_btf_from_environment(tmp_path):
    missing = tmp_path / "env-vmlinux"
    proc = subprocess.run(RUN, env=dict(ENV, KESTREL_BTF=str(missing)), cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert one_line(proc.stderr).startswith(f"kestrel-raw: no kernel BTF at {missing}:")


def _needs_setpriv():
    if SETPRIV is None:
        pytest.skip("setpriv(1) is not installed")


@pytest.mark.kernel
def test_no_capabilities_at_all():
    """uid 0 with empty capability sets (bounding too): refused at the first map."""
    _needs_setpriv()
    rc, out, err = run_cli([], prefix=[SETPRIV, "--inh-caps=-all", "--bounding-set=-all", "--"])
    assert rc == 1
    assert one_line(err) == (
        "kestrel-raw: insufficient privilege: BPF_MAP_CREATE failed: EPERM (Operation not permitted); the "
        "process needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): run as root or grant the capabilities")


@pytest.mark.kernel
def test_not_root():
    """A plain user (nobody).  It keeps CAP_DAC_READ_SEARCH alone, as an ambient capability, only so that
    it can reach an interpreter installed under /root; that capability has nothing to do with BPF."""
    _needs_setpriv()
    prefix = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+dac_read_search",
              "--ambient-caps=+dac_read_search", "--"]
    rc, out, err = run_cli([], prefix=prefix)
    assert rc == 1, err
    line = one_line(err)
    assert line.startswith("kestrel-raw: insufficient privilege: BPF_MAP_CREATE failed: EPERM"), line
    assert "CAP_BPF" in line


@pytest.mark.kernel
def test_no_cap_bpf():
    """root without CAP_BPF and CAP_SYS_ADMIN (CAP_PERFMON kept): the message names CAP_BPF."""
    _needs_setpriv()
    rc, out, err = run_cli([], prefix=[SETPRIV, "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin", "--"])
    assert rc == 1
    line = one_line(err)
    assert line.startswith("kestrel-raw: insufficient privilege: BPF_MAP_CREATE failed: EPERM"), line
    assert "CAP_BPF" in line


@pytest.mark.kernel
def test_tracefs_cannot_be_mounted():
    """tracefs unmounted in a private mount namespace, and no CAP_SYS_ADMIN to mount it (CAP_BPF and
    CAP_PERFMON kept, so the maps are made and the failure is tracefs's)."""
    _needs_setpriv()
    if UNSHARE is None:
        pytest.skip("unshare(1) is not installed")
    script = ('umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; '
              'exec "$@"')
    prefix = [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script, "sh",
              SETPRIV, "--inh-caps=-all", "--bounding-set=-sys_admin", "--"]
    rc, out, err = run_cli([], prefix=prefix)
    assert rc == 1, err
    line = one_line(err)
    assert line.startswith("kestrel-raw: could not mount tracefs at /sys/kernel/tracing: "), line


@pytest.mark.kernel
def test_output_file_that_cannot_be_created(tmp_path):
    before = _kr_progs()
    target = tmp_path / "no-such-dir" / "events.jsonl"
    rc, out, err = run_cli(["--output", str(target)])
    assert rc == 1
    assert one_line(err) == f"kestrel-raw: --output {target}: No such file or directory"
    assert _kr_progs() <= before
