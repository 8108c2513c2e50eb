"""``struct btf_header`` and its validation.

Validated as libbpf's ``btf_parse_hdr`` and ``btf_parse_str_sec`` do (plus the kernel's version, flags
and header-tail checks): one check per invariant, one message per check, each a ``BTFError`` that starts
with the libbpf wording so a message can be searched for.  Either byte order is accepted; the magic says
which one the blob was written in.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from kestrel_raw.btf.kinds import BTF_HEADER_SIZE, BTF_MAGIC, BTF_VERSION
from kestrel_raw.errors import BTFError

_NOT_BTF = "the data is not raw BTF (expected a blob such as /sys/kernel/btf/vmlinux)"
_CORRUPT = "the BTF blob is truncated or corrupt; read it again from its source"


@dataclass(frozen=True, slots=True)
class Header:
    magic: int
    version: int
    flags: int
    hdr_len: int
    type_off: int   # from the end of the header
    type_len: int
    str_off: int    # from the end of the header
    str_len: int
    byteorder: str  # "little" or "big": how the blob's integers are stored

    @property
    def type_start(self) -> int:
        return self.hdr_len + self.type_off

    @property
    def str_start(self) -> int:
        return self.hdr_len + self.str_off


def parse_header(data: bytes) -> Header:
    """Decode and validate the header and the string section's framing of ``data``; raise ``BTFError``."""
    size = len(data)
    if size < BTF_HEADER_SIZE:
        raise BTFError(f"BTF header not found: {size} bytes of data, struct btf_header needs "
                       f"{BTF_HEADER_SIZE}; {_NOT_BTF}")
    (magic,) = struct.unpack_from("<H", data, 0)
    if magic == BTF_MAGIC:
        order, byteorder = "<", "little"
    elif magic == int.from_bytes(BTF_MAGIC.to_bytes(2, "little"), "big"):
        order, byteorder = ">", "big"
    else:
        raise BTFError(f"Invalid BTF magic: 0x{magic:x} (expected 0x{BTF_MAGIC:x}); {_NOT_BTF}")
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "HBBIIIII", data, 0)
    hdr = Header(magic, version, flags, hdr_len, type_off, type_len, str_off, str_len, byteorder)
    if version != BTF_VERSION:
        raise BTFError(f"Unsupported BTF version: {version} (this reader knows version {BTF_VERSION}); "
                       "a newer BTF format needs a newer kestrel-raw")
    if flags != 0:
        raise BTFError(f"Unsupported BTF flags: 0x{flags:x} (no flag is defined); "
                       "a newer BTF format needs a newer kestrel-raw")
    if hdr_len < BTF_HEADER_SIZE:
        raise BTFError(f"BTF header len {hdr_len} smaller than struct btf_header ({BTF_HEADER_SIZE}); "
                       f"{_CORRUPT}")
    if size < hdr_len:
        raise BTFError(f"BTF header len {hdr_len} larger than data size {size}; {_CORRUPT}")
    if any(data[BTF_HEADER_SIZE:hdr_len]):
        raise BTFError(f"Unsupported BTF header: bytes {BTF_HEADER_SIZE}..{hdr_len} past struct btf_header "
                       "are not zero (fields this reader does not know); a newer BTF format needs a newer "
                       "kestrel-raw")
    if size - hdr_len < str_off + str_len:
        raise BTFError(f"Invalid BTF total size: {size} (the string section ends at "
                       f"{hdr_len + str_off + str_len}); {_CORRUPT}")
    if type_off + type_len > str_off:
        raise BTFError(f"Invalid BTF data sections layout: type data at {type_off} + {type_len}, "
                       f"strings data at {str_off} + {str_len}; {_CORRUPT}")
    if type_off % 4:
        raise BTFError(f"BTF type section is not aligned to 4 bytes: type_off {type_off}; {_CORRUPT}")
    if type_len % 4:
        raise BTFError(f"BTF type section length {type_len} is not a multiple of 4 (every record is made "
                       f"of u32s); {_CORRUPT}")
    if str_len == 0:
        raise BTFError(f"Invalid BTF string section: it is empty (it must hold at least the empty "
                       f"string); {_CORRUPT}")
    strs = hdr.str_start
    if data[strs] != 0:
        raise BTFError(f"Invalid BTF string section: it does not start with the empty string "
                       f"(first byte 0x{data[strs]:02x}); {_CORRUPT}")
    if data[strs + str_len - 1] != 0:
        raise BTFError(f"Invalid BTF string section: its last string is not NUL-terminated; {_CORRUPT}")
    return hdr
