"""The codec functions of every kind, compiled from the event spec (kestrel_raw/codec/generate.py).

``CODEC[name]`` is a generated function or table (``values_open``, ``event_raw_exec``, ``line_open``,
``event_line_exit``, ``FIXED_open``...); the public modules (records, normalize, jsonl) hand them out.
"""
from __future__ import annotations

from kestrel_raw.codec import decode
from kestrel_raw.codec.event import entity_key_memo, make_event, proxy
from kestrel_raw.codec.generate import compile_codec

CODEC: dict = compile_codec({**decode.NAMESPACE, "make_event": make_event, "proxy": proxy,
                             "entity_key_memo": entity_key_memo})
