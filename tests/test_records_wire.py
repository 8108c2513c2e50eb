"""The construct Structs sit exactly on kestrel_raw/codec/wire.py's offsets (what the programs write with)."""
from __future__ import annotations

import construct as cs

from kestrel_raw.codec import wire
from kestrel_raw.codec.records import EXEC_RECORD, EXIT_RECORD, OPEN_RECORD, CONNECT_RECORD


def offsets(st: cs.Struct) -> dict[str, int]:
    """Offset of every named field up to the first variable-length one (and that one's start)."""
    out, pos = {}, 0
    for sub in st.subcons:
        name = getattr(sub, "name", None)
        if name is None:            # Check
            continue
        out[name] = pos
        try:
            pos += sub.sizeof()
        except cs.SizeofError:
            break
    return out


HEADER = {"kind": wire.HDR_KIND, "flags": wire.HDR_FLAGS, "cpu": wire.HDR_CPU, "ts_ns": wire.HDR_TS,
          "start_ns": wire.HDR_START, "pid": wire.HDR_PID, "tid": wire.HDR_TID, "ppid": wire.HDR_PPID,
          "uid": wire.HDR_UID, "gid": wire.HDR_GID, "reserved": wire.HDR_RESERVED, "comm": wire.HDR_COMM}


def test_exec_offsets():
    assert offsets(EXEC_RECORD) == {**HEADER, "filename_len": wire.EXEC_FILENAME_LEN,
                                    "args_len": wire.EXEC_ARGS_LEN, "args_total": wire.EXEC_ARGS_TOTAL,
                                    "reserved2": wire.EXEC_RESERVED, "filename": wire.EXEC_DATA}


def test_open_offsets():
    assert offsets(OPEN_RECORD) == {**HEADER, "ret": wire.OPEN_RET, "dfd": wire.OPEN_DFD,
                                    "open_flags": wire.OPEN_FLAGS, "mode": wire.OPEN_MODE,
                                    "path_len": wire.OPEN_PATH_LEN, "syscall": wire.OPEN_SYSCALL,
                                    "reserved2": wire.OPEN_RESERVED, "path": wire.OPEN_PATH}


def test_connect_offsets():
    assert offsets(CONNECT_RECORD) == {**HEADER, "ret": wire.CONNECT_RET, "fd": wire.CONNECT_FD,
                                       "addrlen": wire.CONNECT_ADDRLEN, "addr_len": wire.CONNECT_ADDR_LEN,
                                       "addr": wire.CONNECT_ADDR}


def test_exit_offsets_and_size():
    assert offsets(EXIT_RECORD) == {**HEADER, "exit_code": wire.EXIT_CODE, "reserved2": wire.EXIT_RESERVED}
    assert EXIT_RECORD.sizeof() == wire.EXIT_SIZE
    assert offsets(EXEC_RECORD)["comm"] + wire.COMM_LEN == wire.HEADER_SIZE
