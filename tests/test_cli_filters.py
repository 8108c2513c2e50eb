"""Issue 15 on the command line: the filter flags (each repeatable, each with its --exclude-... twin,
--failed-only, --success-only, --rate-limit TYPE=N), the same as config file keys, flags overriding the file;
a bad value is one line naming the flag (or the file and line), exit 2, and nothing loaded (no bpf(2) call
at all); SIGHUP applies a changed file's filters to the running collector and names what waits for the next
start.  No kernel needed.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from kestrel_raw.cli import build_parser, main
from kestrel_raw.cli.run import FILTER_DESTS, _reload, make_plan
from kestrel_raw.cli.settings import load, options
from kestrel_raw.errors import ConfigError
from kestrel_raw.filters import Filters
from kestrel_raw.filters.values import KEYS, config_key
from kestrel_raw.kernel import syscall

from helpers import CLI_ENV, REPO


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", *args], env=CLI_ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def run_parser():
    return build_parser()._subparsers._group_actions[0].choices["run"]


def plan_of(*argv):
    args = build_parser().parse_args(["run", *argv])
    return make_plan(load(args._parser, args))


BAD = [
    (["--uid", "-1"], "--uid -1 is not a user id: give a number from 0 to 4294967294"),
    (["--daddr", "300.1.1.1"], "--daddr 300.1.1.1 is not an IPv4 or IPv6 address or network: give ADDR or "
                               "ADDR/PREFIX (10.0.0.0/8, ::1, 2001:db8::/32)"),
    (["--port", "70000"], "--port 70000 is not a port: give a number from 1 to 65535"),
    (["--exclude-comm", "a-very-long-name"], "--exclude-comm 'a-very-long-name' is 16 bytes long: the kernel keeps at "
                                             "most 15 bytes of a command name, so it could never match; give its "
                                             "first 15 ('a-very-long-nam')"),
    (["--path-prefix", "/" * 256], "--path-prefix is 256 bytes long: the kernel compares at most 255 bytes of a path, "
                                   "give a shorter prefix"),
    (["--rate-limit", "open=x"], "--rate-limit open=x: N must be a whole number of events per second, from 1 to "
                                 "1000000"),
    (["--events", "exec", "--port", "80"], "--port applies to connect events, and the events collected are exec: add "
                                           "connect to --events, or drop the filter"),
    (["--failed-only", "--success-only"], "--failed-only and --success-only exclude each other: give one"),
    (["--exe", "/nonexistent/kestrel-exe"], "--exe /nonexistent/kestrel-exe: no such file; give the path of an "
                                            "executable (a process matches when it runs that file)"),
    (["--cgroup", "/kestrel-no-such.slice"], "--cgroup /kestrel-no-such.slice: no such cgroup under the cgroup v2 "
                                             "hierarchy at {mount} (give a path under it, or relative to its root, "
                                             "as /proc/PID/cgroup shows it after 0::)"),
    (["--container", "0123456789abcdef"], "--container 0123456789abcdef: no running container's id starts with it"),
]


def _mount() -> str:
    from kestrel_raw.context.cgroups import read_cgroup2_mount

    m = read_cgroup2_mount()
    return m.mount_point if m else ""


@pytest.mark.parametrize("args, expected", BAD)
def test_a_bad_filter_is_one_line_naming_the_flag_and_exit_2(args, expected):
    rc, out, err = cli("run", *args)
    assert (rc, out) == (2, ""), err
    line = one_line(err)
    assert line.startswith("kestrel-raw: " + expected.format(mount=_mount())), line


@pytest.mark.parametrize("args, expected", BAD)
def test_a_bad_filter_loads_nothing(args, expected, monkeypatch, capsys):
    """In this process, with bpf(2) and perf_event_open(2) recorded: refused before any is made."""
    calls = []
    monkeypatch.setattr(syscall, "_syscall", lambda *a: calls.append(a) or -1)
    assert main(["run", *args]) == 2
    assert calls == []
    assert one_line(capsys.readouterr().err).startswith("kestrel-raw: --")


@pytest.mark.parametrize("text, expected", [
    ("uid = [0, -1]\n", "{p} line 1: uid -1 is not a user id: give a number from 0 to 4294967294"),
    ("events = [\"open\", \"exec\"]\n\n# the network\nexclude-daddr = \"300.1.1.1\"\n",
     "{p} line 4: exclude-daddr 300.1.1.1 is not an IPv4 or IPv6 address or network: give ADDR or ADDR/PREFIX "
     "(10.0.0.0/8, ::1, 2001:db8::/32)"),
    ("port = 70000\n", "{p} line 1: port 70000 is not a port: give a number from 1 to 65535"),
    ("rate-limit = {open = \"x\"}\n", "{p} line 1: rate-limit open=x: N must be a whole number of events per second, "
                                      "from 1 to 1000000"),
    ("failed-only = 1\n", "{p} line 1: failed-only takes true or false, got 1"),
    ("uid = 0\nexclude-comm = [\"sshd\",, \"cron\"]\nport = 80\n", "{p} line 2: not valid TOML: Invalid value (column 24)"),
    ("events = [\"exec\"]\npath-prefix = [\"/etc/\"]\n", "{p} line 2: path-prefix applies to open events, and the "
                                                         "events collected are exec: add open to --events, or drop "
                                                         "the filter"),
])
def test_a_bad_config_file_names_the_file_and_line(tmp_path, text, expected):
    p = tmp_path / "kr.toml"
    p.write_text(text)
    rc, out, err = cli("run", "--config", str(p))
    assert (rc, out) == (2, ""), err
    assert one_line(err) == "kestrel-raw: " + expected.format(p=p)


def test_every_filter_flag_has_an_exclude_twin_and_is_a_config_key():
    keys = set(options(run_parser()))
    for key in KEYS:
        assert config_key(key) in keys and config_key(key, True) in keys
    assert {"failed-only", "success-only", "rate-limit"} <= keys
    assert {options(run_parser())[k].dest for k in keys} >= set(FILTER_DESTS)


def test_flags_are_repeatable_and_become_the_collector_config_filters(tmp_path):
    plan = plan_of("--events", "open,connect,exec", "--uid", "0", "--uid", "1000", "--exclude-comm", "sshd",
                   "--exclude-comm", "cron", "--path-prefix", "/etc/", "--daddr", "10.0.0.0/8", "--port", "443",
                   "--failed-only", "--rate-limit", "open=100", "--rate-limit", "exec=5", "--pid", "1",
                   "--exe", sys.executable)
    assert plan.config.filters == Filters.parse(
        {"uid": [0, 1000], "path_prefix": ["/etc/"], "daddr": ["10.0.0.0/8"], "port": [443], "pid": [1],
         "exe": [sys.executable]}, {"comm": ["sshd", "cron"]}, failed_only=True, rate_limits={"open": 100, "exec": 5})
    assert plan_of().config.filters == Filters()


def test_the_config_file_keys_and_flags_overriding_them(tmp_path):
    p = tmp_path / "kr.toml"
    p.write_text('events = ["open", "exec"]\npath-prefix = ["/etc/"]\nexclude-comm = ["sshd"]\n'
                 'rate-limit = {open = 100}\nsuccess-only = true\nuid = 0\n')
    plan = plan_of("--config", str(p))
    assert plan.config.filters.to_json() == {"uid": [0], "path-prefix": ["/etc/"], "exclude-comm": ["sshd"],
                                             "success-only": True, "rate-limit": {"open": 100}}
    # A flag replaces the file's values of that key (not added to them); the file's other keys stay.
    plan = plan_of("--config", str(p), "--exclude-comm", "cron", "--rate-limit", "exec=1")
    assert plan.config.filters.to_json() == {"uid": [0], "path-prefix": ["/etc/"], "exclude-comm": ["cron"],
                                             "success-only": True, "rate-limit": {"exec": 1}}


# -- SIGHUP ------------------------------------------------------------------------------------------------

class FakeCollector:
    def __init__(self, refuse: str | None = None):
        self.set = []
        self.refuse = refuse

    def set_filters(self, filters):
        if self.refuse:
            raise ConfigError(self.refuse)
        self.set.append(filters)


def settings_of(*argv):
    args = build_parser().parse_args(["run", *argv])
    return load(args._parser, args)


def test_sighup_swaps_the_filters_and_names_what_waits_for_the_next_start(tmp_path, capsys):
    p = tmp_path / "kr.toml"
    p.write_text('events = ["open"]\nexclude-comm = ["sshd"]\nbuffers = 2\n')
    s = settings_of("--config", str(p))
    c = FakeCollector()
    p.write_text('events = ["open"]\nexclude-comm = ["sshd", "cron"]\npath-prefix = ["/tmp/"]\nbuffers = 3\n')
    now = _reload(s, c)
    assert c.set == [Filters.parse({"path_prefix": ["/tmp/"]}, {"comm": ["sshd", "cron"]})]
    assert capsys.readouterr().err.splitlines() == [
        f'kestrel-raw: SIGHUP: read {p}: filters changed (exclude-comm, path-prefix), in force now: '
        f'{{"path-prefix":["/tmp/"],"exclude-comm":["sshd","cron"]}}',
        f"kestrel-raw: SIGHUP: read {p}: buffers changed, which takes effect at the next start"]
    # The next SIGHUP compares with what is in force: the new filters, the buffers of the start.
    assert (now.values.exclude_comm, now.values.buffers) == (["sshd", "cron"], 2)
    assert now.describe("path_prefix") == f"{p} line 3: path-prefix"
    _reload(now, c)
    assert len(c.set) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"kestrel-raw: SIGHUP: read {p}: buffers changed, which takes effect at the next start"]
    # Back to no filter at all.
    p.write_text('events = ["open"]\nbuffers = 2\n')
    _reload(now, c)
    assert c.set[-1] == Filters()
    assert capsys.readouterr().err.splitlines() == [
        f"kestrel-raw: SIGHUP: read {p}: filters changed (exclude-comm, path-prefix), in force now: none"]


def test_sighup_with_a_bad_filter_keeps_the_running_ones(tmp_path, capsys):
    p = tmp_path / "kr.toml"
    p.write_text('uid = [0]\n')
    s = settings_of("--config", str(p))
    c = FakeCollector()
    p.write_text('uid = [-1]\n')
    assert _reload(s, c) is s and c.set == []
    assert capsys.readouterr().err == (f"kestrel-raw: SIGHUP: {p} line 1: uid -1 is not a user id: give a number from "
                                       f"0 to 4294967294; the running settings are kept\n")
    p.write_text('uid = [1]\n')
    assert _reload(s, FakeCollector(refuse="--uid: refused")) is s
    assert capsys.readouterr().err == "kestrel-raw: SIGHUP: --uid: refused; the running filters are kept\n"
