"""The user's BPF object in the collector (``CollectorConfig.program_path``, or ``asm_object``: programs
assembled with kestrel_raw.asm, kestrel_raw/probes/user.py): loaded and attached with kestrel_raw.loader (or
LoadedAsmObject), its ring buffers read by the same pollers as the built-in rings (poll.poll_ring,
poll.drain_at_stop), its records handed on as ``ObjectRecord`` values or JSON lines.

A record of the object is whatever its programs wrote; the collector knows its layout only through the
``record_schema`` the user gives (a construct: one for every ring, or one per ring by map name), whose
parse result is handed on as plain dicts and lists (``ObjectRecord.value``).  A record the schema cannot
parse is counted in ``stats().parse_errors`` and skipped, like a malformed built-in record.  With
``deliver="json"`` (the CLI) each record is one line: {"object": name, "map": ring, "len": n, "hex": ...}.
Counted in ``stats().delivered`` under "<object>:<ring>".
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import trio

from kestrel_raw.collector.stats import Counts
from kestrel_raw.config import CollectorConfig
from kestrel_raw.loader import LoadedObject
from kestrel_raw.maps import RingBufReader
from kestrel_raw.sinks.bus import EventBus


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One record of the object's ring buffer ``map``: its bytes, and ``value`` as the schema parsed them
    (None without a schema)."""
    object: str
    map: str
    data: bytes
    value: object = None

    def to_json(self) -> dict:
        return {"object": self.object, "map": self.map, "len": len(self.data), "hex": self.data.hex()}


def plain(value):
    """construct's containers as plain values: Container -> dict (without its private "_" keys),
    ListContainer -> list; everything else as it is."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def schema_for(config: CollectorConfig, ring: str):
    schema = config.record_schema
    if isinstance(schema, dict):
        return schema.get(ring)
    return schema


def load_object(config: CollectorConfig, target_btf=None):
    """The object of ``config.program_path`` (a LoadedObject) or ``config.asm_object`` (a LoadedAsmObject,
    kestrel_raw/probes/user.py), loaded (nothing attached yet)."""
    if config.asm_object is not None:
        return config.asm_object.load(target_btf=target_btf)
    return LoadedObject(config.program_path, target_btf=target_btf)


def object_readers(obj: LoadedObject) -> list[tuple[str, RingBufReader]]:
    """A reader for each of the object's ring buffers, by map name."""
    out = []
    try:
        for name, (fd, size) in obj.ringbufs().items():
            out.append((name, RingBufReader(fd.fileno(), size)))
    except BaseException:
        for _, reader in out:
            reader.close()
        raise
    return out


@dataclass(frozen=True, slots=True)
class ObjectPollSettings:
    """What poll.poll_ring reads of its config, for the object's rings: the object's programs decide when
    to wake the reader (the kernel's default: for every record), so the reader drains until empty, as
    libbpf's does (wakeup_bytes 0); poll_interval is the collector's."""
    poll_interval: float
    wakeup_bytes: int = 0


def object_poll_config(config: CollectorConfig) -> ObjectPollSettings:
    return ObjectPollSettings(config.poll_interval)


class ObjectDelivery:
    """What poll.poll_ring hands one ring's batches to (the interface of deliver.Delivery): records to
    ObjectRecord values (or JSON lines) into the collector's channel or EventBus, per queue_policy."""

    def __init__(self, out, config: CollectorConfig, counts: Counts, obj_name: str, ring: str) -> None:
        self._out = out
        self.counts = counts
        self.block = config.queue_policy == "block"
        self.as_json = config.deliver == "json"
        self.to_bus = isinstance(out, EventBus)
        self.object = obj_name
        self.ring = ring
        self.key = f"{obj_name}:{ring}"
        self.schema = schema_for(config, ring)
        counts.delivered.setdefault(self.key, 0)

    def _items(self, batch: list[bytes]) -> list:
        if self.as_json:
            lines = b"".join(json.dumps(ObjectRecord(self.object, self.ring, bytes(raw)).to_json(),
                                        separators=(",", ":")).encode() + b"\n" for raw in batch)
            return [(lines, len(batch))] if batch else []
        out = []
        for raw in batch:
            data = bytes(raw)
            value = None
            if self.schema is not None:
                try:
                    value = plain(self.schema.parse(data))
                except Exception:       # construct raises its own error kinds for every malformed input
                    self.counts.parse_errors += 1
                    self.counts.refused[self.key] = self.counts.refused.get(self.key, 0) + 1
                    continue
            out.append((ObjectRecord(self.object, self.ring, data, value), 1))
        return out

    async def deliver(self, batch: list[bytes]) -> None:
        for item, n in self._items(batch):
            if self.to_bus:
                if self.block:
                    await self._out.send(item)
                else:
                    self.counts.drop(self.key, self._out.publish(item) * n)
            else:
                try:
                    self._out.send_nowait(item)
                except trio.WouldBlock:
                    if not self.block:
                        self.counts.drop(self.key, n)
                        continue
                    await self._out.send(item)
            self.counts.delivered[self.key] += n

    def count_cancelled(self, batch: list[bytes], before: int) -> None:
        """A delivery of ``batch`` was cancelled when ``counts.handled()`` was ``before``: what it had not
        handed on is counted as dropped."""
        self.counts.drop(self.key, max(0, len(batch) - (self.counts.handled() - before)))

    def deliver_now(self, batch: list[bytes]) -> None:
        """At stop: hand on without waiting; what the consumer cannot take is counted as dropped."""
        for item, n in self._items(batch):
            try:
                if self.to_bus:
                    self.counts.drop(self.key, self._out.publish(item) * n)
                else:
                    self._out.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.counts.drop(self.key, n)
                continue
            self.counts.delivered[self.key] += n
