"""Settings from the command line and a config file (``--config FILE``), and the names errors give them.

The config file is TOML (read with the standard library's ``tomllib``).  Its keys are the long flag names
of the subcommand without the leading dashes, at the top level, and every flag can be set there::

    events = ["exec", "open"]          # a comma-separated flag also takes a list
    output = "/var/log/kestrel-raw/events.jsonl"
    rotate-size = 104857600
    keep-privileges = false            # an on/off flag takes true or false

A flag given on the command line overrides the file.  The parser is the one list of settings: a key is
valid when the subcommand has that flag, and its value is converted and checked as the flag's would be
(``type``, ``choices``), so a setting added as a flag is a config key at once.  Every option's argparse
default is None ("not given"); the subcommand applies its defaults after the merge, so that which
source gave a value is always known.

Errors name the setting as the user wrote it: ``--buffer-size`` when it came from the command line,
``FILE line N: buffer-size`` when it came from the file (``describe``/``rename``).

``load`` reads and checks the file and merges it with the command line; ``Settings.reload`` reads the file
again and returns new settings without touching the old ones: the hook for SIGHUP (the caller decides what
can change while running).
"""
from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from dataclasses import dataclass, field

from kestrel_raw.errors import ConfigError

CONFIG_DEST = "config"
_SCALARS = (str, int, float, bool)


class SettingError(ConfigError):
    """A setting is wrong; the message already names it as the user gave it (flag, or file and line)."""


def long_option(action: argparse.Action) -> str | None:
    return next((s for s in action.option_strings if s.startswith("--")), None)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's settable options by config key (the long flag without its dashes)."""
    out = {}
    for action in parser._actions:  # argparse exposes no public list of a parser's actions
        flag = long_option(action)
        if flag is None or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        out[flag[2:]] = action
    return out


@dataclass
class Settings:
    """The merged settings (``values``, an argparse Namespace), and where each one came from."""

    values: argparse.Namespace
    parser: argparse.ArgumentParser
    cli: argparse.Namespace  # the command line alone: what a reload keeps
    path: str | None = None
    from_file: dict[str, int] = field(default_factory=dict)  # dest -> line of the file that set it

    def given(self, dest: str) -> bool:
        return getattr(self.values, dest, None) is not None

    def describe(self, dest: str) -> str:
        """The setting as the user knows it: ``--flag``, or ``FILE line N: key`` when the file set it."""
        action = _by_dest(self.parser)[dest]
        flag = long_option(action)
        if dest in self.from_file:
            return f"{self.path} line {self.from_file[dest]}: {flag[2:]}"
        return flag

    def error(self, dest: str, problem: str) -> SettingError:
        """``SettingError("--flag problem")`` or ``("FILE line N: key problem")``."""
        return SettingError(f"{self.describe(dest)} {problem}")

    def rename(self, message: str, names: dict[str, str]) -> str:
        """``message`` (a library error naming internal settings: ``buffer_size ...``) with each internal
        name in ``names`` (internal name -> dest) replaced by the setting as the user gave it.

        The name the message starts with is replaced, and later ones only when they hold an underscore:
        plain words such as "buffers" also occur in prose ("ring buffers").  When the first name's value
        came from the config file, the message starts with the file and line."""
        pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b")
        prefix = ""
        first = True

        def sub(m: re.Match) -> str:
            nonlocal prefix, first
            name = m.group(1)
            leading, first = first and m.start() == 0, False
            if not leading and "_" not in name:
                return name
            dest = names[name]
            flag = long_option(_by_dest(self.parser)[dest])
            if dest in self.from_file:
                if leading:
                    prefix = f"{self.path} line {self.from_file[dest]}: "
                return flag[2:]
            return flag

        text = pattern.sub(sub, message)
        return prefix + text

    def reload(self) -> "Settings":
        """Read the config file again and merge it with the same command line (raises SettingError)."""
        return load(self.parser, self.cli)


def _by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in options(parser).values()}


def load(parser: argparse.ArgumentParser, cli: argparse.Namespace) -> Settings:
    """Merge the config file named by ``cli.config`` (if any) under the command line ``cli``."""
    path = getattr(cli, CONFIG_DEST, None)
    values = argparse.Namespace(**vars(cli))
    settings = Settings(values=values, parser=parser, cli=cli, path=path)
    if path is None:
        return settings
    from_file, lines = read_file(parser, path)
    for dest, value in from_file.items():
        if getattr(cli, dest, None) is None:
            setattr(values, dest, value)
            settings.from_file[dest] = lines[dest]
    return settings


def read_file(parser: argparse.ArgumentParser, path: str) -> tuple[dict, dict]:
    """The settings in the config file at ``path``: (dest -> value, dest -> line).  Raises SettingError
    naming the file and line for anything wrong in it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SettingError(f"--config {path}: cannot read it: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise SettingError(f"{path}: not UTF-8 text (byte {e.start}); a config file is TOML") from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            msg = f"line {m.group(1)}: not valid TOML: {msg[:m.start()].strip()} (column {m.group(2)})"
        elif msg.endswith("(at end of document)"):
            msg = f"line {len(text.splitlines())}: not valid TOML: {msg[:-len('(at end of document)')].strip()} " \
                  f"(at the end of the file)"
        else:
            raise SettingError(f"{path}: not valid TOML: {msg}") from None
        raise SettingError(f"{path} {msg}") from None
    lines = _key_lines(text)
    known = options(parser)
    values, where = {}, {}
    for key, value in data.items():
        line = lines.get(key, 0)
        at = f"{path} line {line}" if line else path
        if key == CONFIG_DEST:
            raise SettingError(f"{at}: config: a config file cannot name another config file")
        action = known.get(key)
        if action is None:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            kind = "table" if isinstance(value, dict) else "setting"
            raise SettingError(f"{at}: unknown {kind} {key!r}{hint}; the keys are the long flags of "
                               f"kestrel-raw {parser.prog.split()[-1]} without their dashes, at the top level")
        values[action.dest] = _convert(action, key, value, at)
        where[action.dest] = line
    return values, where


def _key_lines(text: str) -> dict[str, int]:
    """The line of each top-level key (tomllib keeps no positions; the keys here are plain flag names)."""
    lines: dict[str, int] = {}
    in_table = False
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_table = True
            m = re.match(r"\[+\s*\"?([A-Za-z0-9_-]+)", stripped)
            if m:
                lines.setdefault(m.group(1), n)
            continue
        m = re.match(r"\s*\"?([A-Za-z0-9_-]+)\"?\s*=", line)
        if m and not in_table:
            lines.setdefault(m.group(1), n)
    return lines


def _convert(action: argparse.Action, key: str, value, at: str):
    """The TOML value of ``key`` as the flag's own parsing would give it."""
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction,
                           argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise SettingError(f"{at}: {key} takes true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        # A repeatable flag: a list, one value per repetition; a table gives "name=value" items.
        if isinstance(value, dict):
            items = [f"{k}={v}" for k, v in value.items()]
        elif isinstance(value, list):
            items = value
        else:
            items = [value]
        return [_one(action, key, item, at) for item in items]
    if action.nargs == "?" and action.const is not None and isinstance(value, bool):
        return action.const if value else None  # syslog = true: the flag given without its value
    if isinstance(value, list) and getattr(action, "comma_list", False):
        if not all(isinstance(v, str) for v in value):
            raise SettingError(f"{at}: {key} takes a list of strings, got {value!r}")
        value = ",".join(value)
    return _one(action, key, value, at)


def _one(action: argparse.Action, key: str, value, at: str):
    t = action.type
    if isinstance(value, (dict, list)) or not isinstance(value, _SCALARS):
        raise SettingError(f"{at}: {key} takes a single value, got {value!r}")
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingError(f"{at}: {key} takes an integer, got {value!r}")
        out = value
    elif t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingError(f"{at}: {key} takes a number, got {value!r}")
        out = float(value)
    elif t is None or t is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SettingError(f"{at}: {key} takes a string, got {value!r}")
        out = str(value)
    else:  # a converter function, as the flag uses: it gets the text the command line would give it
        text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
        try:
            out = t(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise SettingError(f"{at}: {key} {e}") from None
    if action.choices is not None and out not in action.choices:
        valid = ", ".join(map(str, action.choices))
        raise SettingError(f"{at}: {key} {out!r} is not one of: {valid}")
    return out
