"""``Filters``: what the kernel filters, as one frozen value (issue 15).  Pure.

The values of one key are OR-ed, different keys AND-ed, an exclude wins over an include (filtermaps.py
says how the programs apply them).  A key filters only the event types whose records carry what it looks
at (``values.APPLIES``): ``--path-prefix`` filters open events and lets the others through; naming a key
that none of the collected types has is an error (``check``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from kestrel_raw.errors import ConfigError
from kestrel_raw.filters import values as fv
from kestrel_raw.filters.values import KEYS, Name, flag_name
from kestrel_raw.programs import filtermaps
from kestrel_raw.spec import EventType

OUTCOME_ANY, OUTCOME_FAILED, OUTCOME_SUCCESS = "any", "failed", "success"
OUTCOME_CODES = {OUTCOME_ANY: filtermaps.OUTCOME_ANY, OUTCOME_FAILED: filtermaps.OUTCOME_FAILED,
                 OUTCOME_SUCCESS: filtermaps.OUTCOME_SUCCESS}


def _types_text(types: Iterable[EventType]) -> str:
    return ", ".join(t.label for t in types) or "none"


@dataclass(frozen=True)
class Filters:
    """The filters: ``include`` and ``exclude`` (key -> its parsed values, only the keys given, in KEYS order),
    ``outcome`` ("any", "failed": only events whose ``ret`` is negative, "success": ret >= 0), and
    ``rate_limits`` ((event type, events per second), ...).  ``Filters()`` filters nothing.

    Build one with ``Filters.parse`` (values as the flags or the config file give them, checked); the
    attributes hold parsed values (pid, uid, port: int; comm, path_prefix: bytes; daddr: ip_network; exe,
    cgroup: the path as given; container: a lower-case hex prefix, "any" or "none").
    """

    include: tuple[tuple[str, tuple], ...] = ()
    exclude: tuple[tuple[str, tuple], ...] = ()
    outcome: str = OUTCOME_ANY
    rate_limits: tuple[tuple[EventType, int], ...] = ()

    def __post_init__(self) -> None:
        for side in (self.include, self.exclude):
            for key, vals in side:
                if key not in KEYS:
                    raise ConfigError(f"unknown filter key {key!r}; valid: {', '.join(KEYS)}")
                if not isinstance(vals, tuple):
                    raise ConfigError(f"filter values must be a tuple (use Filters.parse), got {vals!r}")
        if self.outcome not in OUTCOME_CODES:
            raise ConfigError(f"outcome must be one of {', '.join(OUTCOME_CODES)}, got {self.outcome!r}")

    # -- building ------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, include: Mapping[str, Iterable] | None = None, exclude: Mapping[str, Iterable] | None = None,
              *, failed_only: bool = False, success_only: bool = False, rate_limits: Iterable | Mapping = (),
              name: Name = flag_name) -> "Filters":
        """The filters from values as given (strings from the command line or the config file; ints and
        strings from a program): ``include``/``exclude`` key -> values (``{"uid": [0], "comm": ["sshd"]}``),
        ``rate_limits`` ``["open=100"]`` or ``{"open": 100}``.  ConfigError naming the setting through
        ``name`` (given the config key: ``"exclude-uid"``) for a bad value."""
        sides = []
        for exclude_side, given in ((False, include or {}), (True, exclude or {})):
            out = {}
            for key, raw in given.items():
                if key not in KEYS:
                    valid = ", ".join(KEYS)
                    raise ConfigError(f"unknown filter key {key!r}; valid: {valid}")
                if raw is None:
                    continue
                if isinstance(raw, (str, bytes, int)):
                    raw = [raw]
                setting = name(fv.config_key(key, exclude_side))
                parsed = tuple(dict.fromkeys(fv.PARSERS[key](item, setting) for item in raw))
                if len(parsed) > filtermaps.MAX_VALUES:
                    raise ConfigError(f"{setting} is given {len(parsed)} values: at most {filtermaps.MAX_VALUES} "
                                      f"per filter (the kernel's map holds that many)")
                if parsed:
                    out[key] = parsed
            sides.append(tuple((k, out[k]) for k in KEYS if k in out))
        if failed_only and success_only:
            raise ConfigError(f"{name('failed-only')} and {name('success-only')} exclude each other: give one")
        outcome = OUTCOME_FAILED if failed_only else OUTCOME_SUCCESS if success_only else OUTCOME_ANY
        if isinstance(rate_limits, Mapping):
            rate_limits = [f"{k}={v}" for k, v in rate_limits.items()]
        rates: dict[EventType, int] = {}
        setting = name("rate-limit")
        for item in rate_limits or ():
            et, n = fv.parse_rate_limit(item, setting)
            if et in rates and rates[et] != n:
                raise ConfigError(f"{setting} {et.label}: given twice ({rates[et]} and {n}): give one limit per "
                                  f"event type")
            rates[et] = n
        return cls(sides[0], sides[1], outcome, tuple(sorted(rates.items())))

    # -- reading -------------------------------------------------------------------------------------

    def values(self, key: str, exclude: bool = False) -> tuple:
        """The parsed values of ``key`` (its excludes with ``exclude``); () when not given."""
        return dict(self.exclude if exclude else self.include).get(key, ())

    def used(self, key: str) -> bool:
        """Whether ``key`` has an include or an exclude."""
        return bool(self.values(key) or self.values(key, True))

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys given (include or exclude), in KEYS order."""
        return tuple(k for k in KEYS if self.used(k))

    @property
    def empty(self) -> bool:
        """Nothing is filtered."""
        return not (self.include or self.exclude or self.rate_limits) and self.outcome == OUTCOME_ANY

    def rate(self, event_type: EventType) -> int:
        """Events per second of ``event_type`` (0: no limit)."""
        return dict(self.rate_limits).get(EventType(event_type), 0)

    def check(self, event_types: Iterable[EventType], name: Name = flag_name, events: str = "--events") -> None:
        """ConfigError when a filter names what none of ``event_types`` has (``--events exec --port 80``),
        or a rate limit a type that is not collected."""
        types = tuple(EventType(t) for t in event_types)
        for key in self.keys:
            applies = fv.APPLIES[key]
            if not set(applies) & set(types):
                exclude = not self.values(key)
                raise ConfigError(f"{name(fv.config_key(key, exclude))} applies to {_types_text(applies)} events, and "
                                  f"the events collected are {_types_text(types)}: add "
                                  f"{' or '.join(t.label for t in applies)} to {events}, or drop the filter")
        if self.outcome != OUTCOME_ANY and not set(fv.OUTCOME_TYPES) & set(types):
            flag = name("failed-only" if self.outcome == OUTCOME_FAILED else "success-only")
            raise ConfigError(f"{flag} applies to events with a ret ({_types_text(fv.OUTCOME_TYPES)}), and the events "
                              f"collected are {_types_text(types)}")
        for et, n in self.rate_limits:
            if et not in types:
                raise ConfigError(f"{name('rate-limit')} {et.label}={n}: {et.label} events are not collected (the "
                                  f"events collected are {_types_text(types)})")

    def to_json(self) -> dict:
        """The filters as the config file (and the flags) name them: ``{"uid": [0], "exclude-comm": ["sshd"],
        "failed-only": true, "rate-limit": {"open": 100}}``; ``{}`` when nothing is filtered.  The status
        event carries it."""
        out: dict = {}
        for exclude, side in ((False, self.include), (True, self.exclude)):
            for key, vals in side:
                out[fv.config_key(key, exclude)] = [fv.describe_value(key, v) for v in vals]
        if self.outcome != OUTCOME_ANY:
            out[f"{self.outcome}-only"] = True
        if self.rate_limits:
            out["rate-limit"] = {et.label: n for et, n in self.rate_limits}
        return out


NO_FILTERS = Filters()
