"""The command line a person expects (issue 18 item 1): --version, help without markup, every error naming
the flag the user typed (or the config file and line), limits on the rings before anything is created; and
the config file of issue 15 extended to every flag (TOML, flags override it, SIGHUP re-reads it).

All refused before anything is loaded: no kernel needed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import kestrel_raw
from kestrel_raw.cli import build_parser, main
from kestrel_raw.cli.install_service import config_text, unit_text
from kestrel_raw.cli.settings import SettingError, load, options, read_file

from helpers import CLI_ENV, REPO


def cli(*args, env=None, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", *args], env=env or CLI_ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def run_parser():
    return build_parser()._subparsers._group_actions[0].choices["run"]


def one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- version and help --------------------------------------------------------------------------------------

def test_version_is_the_package_version():
    rc, out, err = cli("--version")
    assert (rc, out, err) == (0, f"kestrel-raw {kestrel_raw.__version__}\n", "")


def test_the_package_metadata_takes_its_version_from_the_same_place():
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        text = f.read()
    assert 'dynamic = ["version"]' in text and 'version = { attr = "kestrel_raw.__version__" }' in text
    assert not re.search(r'^version = "', text, re.M)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["tail", "--help"], ["install-service", "--help"]])
def test_help_has_no_markup(args):
    rc, out, err = cli(*args)
    assert rc == 0 and err == ""
    for markup in ("``", ":class:", ":func:", "**", "`"):
        assert markup not in out, (markup, out)
    # Words are wrapped at spaces, never inside a flag name.
    assert not re.search(r"--[a-z]+-\n", out)


def test_every_subcommand_is_listed():
    rc, out, _ = cli("--help")
    assert rc == 0
    for name in ("run", "tail", "install-service"):
        assert re.search(rf"^    {name}\b", out, re.M), out


# -- errors name the flag ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--rotate-size", "100"], "kestrel-raw: --rotate-size rotates the --output file: give --output FILE"),
    (["--output", "/tmp/x", "--rotate-size", "0"], "kestrel-raw: --rotate-size must be a positive number of bytes, got 0"),
    (["--rotate-keep", "0"], "kestrel-raw: --rotate-keep must be at least 1, got 0"),
    (["--syslog", "bogus"], "kestrel-raw: --syslog 'bogus' is not a syslog address: give a socket path (/dev/log), "
                            "udp://HOST:PORT or tcp://HOST:PORT"),
    (["--syslog", "udp://127.0.0.1"], "kestrel-raw: --syslog 'udp://127.0.0.1' is not udp://HOST:PORT"),
    (["--metrics", "9464x"], "kestrel-raw: --metrics '9464x' is not HOST:PORT (e.g. 127.0.0.1:9464)"),
    (["--nats", "nats://127.0.0.1:4222"], "kestrel-raw: --nats needs --subject SUBJECT (the subject the stream takes)"),
    (["--nats", "http://x:1", "--subject", "s"], "kestrel-raw: --nats 'http://x:1' is not a nats://HOST:PORT URL"),
    (["--subject", "s"], "kestrel-raw: --subject names the subject to publish to on --nats: give --nats URL too"),
    (["--duration", "0"], "kestrel-raw: --duration must be a positive number of seconds, got 0.0"),
    (["--user", "no-such-user-kr"], "kestrel-raw: --user 'no-such-user-kr': no such user; give a user name or a "
                                    "numeric uid"),
])
def test_errors_name_the_flag(args, expected):
    rc, out, err = cli("run", *args)
    assert (rc, out) == (2, ""), err
    assert one_error(err) == expected


def test_no_error_message_names_an_internal_setting(tmp_path):
    """Every ConfigError the collector's configuration can raise from the command line, through the CLI:
    none may show a setting's internal name (buffer_size, program_path, drop_uid...)."""
    internal = re.compile(r"\b(event_types|program_path|buffer_size|queue_size|queue_policy|btf_path|"
                          r"wakeup_bytes|poll_interval|flush_interval|drop_uid|drop_gid|drop_privileges)\b")
    cases = [["--buffers", "0"], ["--buffer-size", "12288"], ["--buffer-size", "1024"], ["--queue-size", "0"],
             ["--wakeup-bytes", "8388608"], ["--wakeup-bytes", "-1"], ["--poll-interval", "0"],
             ["--flush-interval", "-1"], ["--dump-programs", str(tmp_path / "none")], ["--user", "0"],
             ["--events", "chdir"], ["--events", ","], ["--buffers", "100000"]]
    for args in cases:
        rc, out, err = cli("run", *args)
        line = one_error(err)
        assert rc == 2, (args, err)
        assert not internal.search(line), (args, line)
        assert f"{args[0]}" in line, (args, line)


def test_ring_limits_are_checked_before_anything_is_created():
    # 5000 rings need ~25,000 fds: refused at once, with the limit and the largest count that fits; nothing
    # is loaded (it used to run 5-15 s, then fail with "Too many open files" after a normal summary).
    rc, out, err = cli("run", "--buffers", "5000")
    line = one_error(err)
    assert rc == 2
    assert re.fullmatch(r"kestrel-raw: --buffers 5000 needs about 25095 file descriptors \(5 per ring buffer and "
                        r"95 for the rest\), more than this process may open \(RLIMIT_NOFILE: hard limit \d+\); "
                        r"use at most \d+ ring buffers, or raise the limit \(ulimit -n, systemd's LimitNOFILE=\)",
                        line), line
    # Memory: the rings are kernel memory allocated up front.
    rc, out, err = cli("run", "--buffers", "1024", "--buffer-size", str(1 << 30))
    line = one_error(err)
    assert rc == 2
    assert line.startswith("kestrel-raw: --buffers x --buffer-size (1024 x 1073741824 = 1048576 MiB of ring buffers"), line
    assert "is more than half the memory left" in line


def test_the_fd_limit_is_raised_to_the_hard_limit_when_that_is_enough():
    # With a soft limit of 256 and a hard one of 4096, 200 rings (1,095 fds) fit once the soft limit is raised.
    script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); "
              "from kestrel_raw.limits import check_rings; check_rings(200, 4096); "
              "print(resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", script], env=CLI_ENV, cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "(1095, 4096)"


# -- the config file -----------------------------------------------------------------------------------------

def test_every_run_flag_is_a_config_key():
    keys = set(options(run_parser()))
    flags = {s[2:] for a in run_parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    flags -= {"no-keep-privileges", "no-context", "no-threads"}  # an on/off flag's off half
    assert keys == flags


def write(tmp_path, text, name="config.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_config_file_values_and_flags_override(tmp_path):
    p = write(tmp_path, 'events = ["exec", "open"]\nbuffers = 2\nqueue-policy = "drop"\nkeep-privileges = true\n'
                        'syslog = true\nrotate-keep = 3\n')
    args = build_parser().parse_args(["run", "--config", str(p), "--buffers", "3"])
    s = load(args._parser, args)
    assert s.values.events == "exec,open"
    assert s.values.buffers == 3  # the flag wins
    assert s.values.queue_policy == "drop" and s.values.keep_privileges is True
    assert s.values.syslog == "/dev/log" and s.values.rotate_keep == 3
    assert s.describe("buffers") == "--buffers"
    assert s.describe("queue_policy") == f"{p} line 3: queue-policy"
    # --no-keep-privileges on the command line overrides the file's true.
    args = build_parser().parse_args(["run", "--config", str(p), "--no-keep-privileges"])
    assert load(args._parser, args).values.keep_privileges is False


@pytest.mark.parametrize("text, expected", [
    ("buffers = 2\nbufers = 3\n", "{p} line 2: unknown setting 'bufers' (did you mean buffers?); the keys are the long "
                                  "flags of kestrel-raw run without their dashes, at the top level"),
    ("buffers = \"two\"\n", "{p} line 1: buffers takes an integer, got 'two'"),
    ("\n\nbuffer-size = 4096.5\n", "{p} line 3: buffer-size takes an integer, got 4096.5"),
    ("keep-privileges = 1\n", "{p} line 1: keep-privileges takes true or false, got 1"),
    ("queue-policy = \"lossy\"\n", "{p} line 1: queue-policy 'lossy' is not one of: block, drop"),
    ("events = [\"exec\", 2]\n", "{p} line 1: events takes a list of strings, got ['exec', 2]"),
    ("buffers = 2\nbuffers = 3\n", "{p} line 2: not valid TOML: Cannot overwrite a value (column 12)"),
    ("buffers = \n", "{p} line 1: not valid TOML: Invalid value (column 11)"),
    ("[run]\nbuffers = 2\n", "{p} line 1: unknown table 'run'; the keys are the long flags of kestrel-raw run "
                             "without their dashes, at the top level"),
    ("config = \"/x\"\n", "{p} line 1: config: a config file cannot name another config file"),
])
def test_config_file_errors_name_the_file_and_line(tmp_path, text, expected):
    p = write(tmp_path, text)
    rc, out, err = cli("run", "--config", str(p))
    assert rc == 2 and out == ""
    assert one_error(err) == "kestrel-raw: " + expected.format(p=p)


def test_collector_errors_from_the_file_name_the_file_line_and_key(tmp_path):
    p = write(tmp_path, "# ring buffers\nbuffer-size = 12288\n")
    rc, _out, err = cli("run", "--config", str(p))
    assert rc == 2
    assert one_error(err) == (f"kestrel-raw: {p} line 2: buffer-size 12288 is not a power of two; the kernel "
                              f"requires one for ring buffers (e.g. 16384)")
    p = write(tmp_path, "wakeup-bytes = 8388608\n", "w.toml")
    rc, _out, err = cli("run", "--config", str(p))
    assert one_error(err) == (f"kestrel-raw: {p} line 1: wakeup-bytes 8388608 must be at least 0 and below "
                              f"--buffer-size (8388608), or the reader would never be woken")
    p = write(tmp_path, "buffers = 5000\n", "b.toml")
    rc, _out, err = cli("run", "--config", str(p))
    assert one_error(err).startswith(f"kestrel-raw: {p} line 1: buffers 5000 needs about 25095 file descriptors")


def test_missing_config_file(tmp_path):
    rc, _out, err = cli("run", "--config", str(tmp_path / "none.toml"))
    assert rc == 2
    assert one_error(err) == f"kestrel-raw: --config {tmp_path / 'none.toml'}: cannot read it: No such file or directory"


def test_reload_reads_the_file_again_and_keeps_the_command_line(tmp_path):
    p = write(tmp_path, "buffers = 2\nqueue-size = 100\n")
    args = build_parser().parse_args(["run", "--config", str(p), "--queue-size", "50"])
    s = load(args._parser, args)
    p.write_text("buffers = 3\nqueue-size = 200\n")
    new = s.reload()
    assert (s.values.buffers, new.values.buffers) == (2, 3)
    assert new.values.queue_size == 50  # the command line still wins
    p.write_text("buffers = [\n")
    with pytest.raises(SettingError, match=rf"^{re.escape(str(p))} line 1: not valid TOML"):
        s.reload()


def test_a_repeatable_flag_takes_a_list_or_a_table(tmp_path):
    """The filters work adds repeatable flags (--exclude-comm, --rate-limit TYPE=N): a TOML list gives one
    value per repetition, a table gives NAME=VALUE items."""
    import argparse

    parser = argparse.ArgumentParser(prog="kestrel-raw run")
    parser.add_argument("--exclude-comm", action="append")
    parser.add_argument("--rate-limit", action="append")
    p = write(tmp_path, 'exclude-comm = ["sshd", "cron"]\nrate-limit = {open = 100, exec = 5}\n')
    values, lines = read_file(parser, str(p))
    assert values == {"exclude_comm": ["sshd", "cron"], "rate_limit": ["open=100", "exec=5"]}
    assert lines == {"exclude_comm": 1, "rate_limit": 2}


# -- the service ------------------------------------------------------------------------------------------

def test_install_service_writes_unit_config_and_log_directory(tmp_path):
    rc, out, err = cli("install-service", "--root", str(tmp_path))
    assert rc == 0, err
    unit = tmp_path / "etc/systemd/system/kestrel-raw.service"
    config = tmp_path / "etc/kestrel-raw/config.toml"
    logs = tmp_path / "var/log/kestrel-raw"
    assert out.splitlines() == [f"wrote {unit}", f"wrote {config} (mode 0640, group 65534: the collector reads it "
                                                 f"again as nobody)", f"made {logs} (owner nobody, mode 0700)"]
    text = unit.read_text()
    assert text == unit_text(f"{sys.executable} -m kestrel_raw")
    for line in ("Type=notify", f"ExecStart={sys.executable} -m kestrel_raw run --config /etc/kestrel-raw/config.toml",
                 "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "RestartPreventExitStatus=2",
                 "StandardError=journal", "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    assert (config.stat().st_mode & 0o777, config.stat().st_uid, config.stat().st_gid) == (0o640, 0, 65534)
    assert config.read_text() == config_text("nobody")
    st = logs.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (65534, 0o700)
    # The config file it wrote is one the collector accepts, and sets what the service needs.
    values, _lines = read_file(run_parser(), str(config))
    assert values == {"output": "/var/log/kestrel-raw/events.jsonl", "rotate_size": 104857600, "rotate_keep": 5,
                      "user": "nobody"}
    # Every other setting is listed (commented) in it.
    for key in options(run_parser()):
        if key not in ("config", "output", "rotate-size", "rotate-keep", "user"):
            assert f"# {key} = " in config.read_text(), key
    # Again: the unit is not replaced without --force, the config never.
    config.write_text("buffers = 2\n")
    rc, out, err = cli("install-service", "--root", str(tmp_path))
    assert rc == 2 and one_error(err) == f"kestrel-raw: {unit} exists; --force replaces it"
    rc, out, err = cli("install-service", "--root", str(tmp_path), "--force")
    assert rc == 0 and f"kept {config} (it exists)" in out.splitlines()
    assert config.read_text() == "buffers = 2\n"


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed; .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "kestrel-raw.service"
    unit.write_text(unit_text(f"{sys.executable} -m kestrel_raw"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr
    # It would say so about a wrong key (so its silence above means something).
    unit.write_text(unit_text(f"{sys.executable} -m kestrel_raw").replace("LimitNOFILE", "LimitNOFILEX"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown key 'LimitNOFILEX'" in proc.stderr


def test_sd_notify_datagrams(tmp_path):
    import socket

    from kestrel_raw.service.notify import Notifier

    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.notify(ready=1, status="attached, 5 programs")
    assert server.recv(4096) == b"READY=1\nSTATUS=attached, 5 programs"
    assert not Notifier({}).notify(ready=1)


def test_main_in_process_restores_the_signal_handlers():
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert main(["run", "--buffers", "0"]) == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before
