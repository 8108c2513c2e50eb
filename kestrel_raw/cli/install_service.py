"""``kestrel-raw install-service``: write the systemd unit, and the config file if there is none.

Written under ``--root`` (default /, a directory for an image or a test):

    etc/systemd/system/kestrel-raw.service   the unit (kestrel_raw/service/kestrel-raw.service), its
                                             ExecStart naming this interpreter: python -m kestrel_raw
    etc/kestrel-raw/config.toml              only if absent: every setting of `kestrel-raw run`, listed
                                             as comments, and the service's own (output file, rotation,
                                             user) set; mode 0640, group: the user's, who reads it again
                                             on SIGHUP
    var/log/kestrel-raw/                     the output's directory, owned by the user the collector
                                             becomes (rotation renames files there after the drop)

It starts nothing: it prints the systemctl commands to run.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import resources

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error

NAME = "install-service"
HELP = "write the systemd unit (and /etc/kestrel-raw/config.toml if absent) for running kestrel-raw as a service"

UNIT_PATH = "etc/systemd/system/kestrel-raw.service"
CONFIG_PATH = "etc/kestrel-raw/config.toml"
LOG_DIR = "var/log/kestrel-raw"
# The service's own settings, written set (not commented) into a new config file.
SERVICE_SETTINGS = {
    "output": "/var/log/kestrel-raw/events.jsonl",
    "rotate-size": 100 * (1 << 20),
    "rotate-keep": 5,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR", default="/",
                   help="install under DIR instead of / (for an image, or to look at the files first)")
    p.add_argument("--user", metavar="USER", default="nobody",
                   help="the user the collector becomes once attached, written into a new config file and "
                        "owning the log directory (default nobody; a user of its own is better)")
    p.add_argument("--force", action="store_true", help="replace an existing unit file (the config file is "
                                                        "never replaced)")


def unit_text(exec_start: str, config: str = "/" + CONFIG_PATH) -> str:
    template = resources.files("kestrel_raw.service").joinpath("kestrel-raw.service").read_text()
    return template.replace("@EXEC@", exec_start).replace("@CONFIG@", config)


def config_text(user: str) -> str:
    """A config file for the service: its settings set, every other setting of `run` as a comment."""
    from kestrel_raw.cli.common import build_parser
    from kestrel_raw.cli.settings import options

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    lines = [
        "# kestrel-raw: settings of `kestrel-raw run` for the service (its ExecStart reads this file).",
        "# Each key is a flag of `kestrel-raw run` without its dashes (see kestrel-raw run --help); a flag on",
        "# the command line overrides it.  `systemctl reload kestrel-raw` (SIGHUP) reads it again.",
        "",
    ]
    settings = dict(SERVICE_SETTINGS, user=user)
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    lines.append("")
    for key, action in options(run).items():
        if key in settings or key == "config":
            continue
        meta = action.metavar or ("true|false" if action.nargs == 0 else "|".join(action.choices or ()) or "VALUE")
        lines.append(f"# {key} = {meta}")
        lines.append(f"#   {' '.join((action.help or '').split())}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(args: argparse.Namespace) -> int:
    import pwd

    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        error(f"--root {args.root}: not a directory")
        return EXIT_USAGE
    try:
        entry = pwd.getpwnam(args.user) if not args.user.isdigit() else pwd.getpwuid(int(args.user))
    except KeyError:
        error(f"--user {args.user!r}: no such user on this host")
        return EXIT_USAGE
    if entry.pw_uid == 0:
        error("--user root: the collector must become an unprivileged user once attached")
        return EXIT_USAGE
    unit = os.path.join(root, UNIT_PATH)
    config = os.path.join(root, CONFIG_PATH)
    logs = os.path.join(root, LOG_DIR)
    if os.path.exists(unit) and not args.force:
        error(f"{unit} exists; --force replaces it")
        return EXIT_USAGE
    exec_start = f"{sys.executable} -m kestrel_raw"
    try:
        _write(unit, unit_text(exec_start), 0o644)
        print(f"wrote {unit}")
        if os.path.exists(config):
            print(f"kept {config} (it exists)")
        else:
            _write(config, config_text(args.user), 0o640)
            # Readable by the user's group: SIGHUP reads it again after the collector became that user.
            os.chown(config, 0, entry.pw_gid)
            print(f"wrote {config} (mode 0640, group {entry.pw_gid}: the collector reads it again as {args.user})")
        os.makedirs(logs, mode=0o700, exist_ok=True)
        os.chown(logs, entry.pw_uid, entry.pw_gid)
        os.chmod(logs, 0o700)
        print(f"made {logs} (owner {args.user}, mode 0700)")
    except OSError as e:
        error(f"cannot install: {e.filename or ''}: {e.strerror or e}")
        return EXIT_SETUP
    if root == "/":
        print("then: systemctl daemon-reload && systemctl enable --now kestrel-raw")
    return EXIT_OK


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
