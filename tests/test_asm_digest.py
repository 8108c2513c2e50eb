"""Digests of a program: the kernel's tag (kernel/bpf/core.c bpf_prog_calc_tag) and the SHA-256 that pins it.

The golden tag was measured: the program below, loaded into Linux 6.18 with its map at fd 3, got the tag
4aa98e999b16b7ec (``bpf_prog_info.tag``).  tests/test_audit_kernel.py checks every loaded program on the
running kernel (CI runs it on 6.1 and 6.12 too, whose tags are SHA-1).
"""
from __future__ import annotations

import hashlib

import pytest

from kestrel_raw.asm import (
    R0, R1, R2, ProgramDigest, TruncatedProgramError, comment, exit_insn, ld_map_fd, ld_map_value, mov64_imm,
    prog_tag, program_digest, tag_hash_for,
)
from kestrel_raw.asm.digest import stable_bytes, tag_input

# ld_map_value(R1, "arr", 8); ld_map_fd(R2, "arr"); r0 = 0; exit -- with the map at fd 3
LOADED = bytes.fromhex(
    "1821000003000000" "0000000008000000"  # r1 = map[fd:3][0]+8
    "1812000003000000" "0000000000000000"  # r2 = map[fd:3]
    "b700000000000000"                     # r0 = 0
    "9500000000000000"                     # exit
)
PROGRAM = [ld_map_value(R1, "arr", 8), ld_map_fd(R2, "arr"), mov64_imm(R0, 0), exit_insn()]


def test_tag_input_zeroes_both_halves_of_each_map_load() -> None:
    assert tag_input(LOADED) == bytes.fromhex(
        "1821000000000000" "0000000000000000"
        "1812000000000000" "0000000000000000"
        "b700000000000000" "9500000000000000")


def test_stable_bytes_zero_only_the_fds() -> None:
    assert stable_bytes(LOADED) == bytes.fromhex(
        "1821000000000000" "0000000008000000"
        "1812000000000000" "0000000000000000"
        "b700000000000000" "9500000000000000")


def test_tag_input_follows_the_kernel_on_a_malformed_second_half() -> None:
    # bpf_prog_calc_tag zeroes the next slot's imm only when it looks like a second half (code, regs, off 0).
    odd = bytes.fromhex("1811000003000000" "b7000000ffffffff")
    assert tag_input(odd) == bytes.fromhex("1811000000000000" "b7000000ffffffff")
    # A plain ld_imm64 (src 0) keeps its constant.
    plain = bytes.fromhex("1801000003000000" "0000000004000000")
    assert tag_input(plain) == stable_bytes(plain) == plain


def test_golden_tags() -> None:
    assert prog_tag(LOADED, "sha256").hex() == "4aa98e999b16b7ec"  # measured on Linux 6.18
    assert prog_tag(LOADED, "sha1").hex() == hashlib.sha1(tag_input(LOADED)).hexdigest()[:16] == "8f0582d81c6b5375"


def test_digests_do_not_depend_on_the_fds_but_on_every_other_byte() -> None:
    other_fd = LOADED.replace(bytes.fromhex("03000000"), bytes.fromhex("09000000"), 2)
    assert other_fd != LOADED
    assert program_digest(other_fd, "sha256") == program_digest(LOADED, "sha256")
    assert program_digest(PROGRAM, "sha256") == program_digest(LOADED, "sha256")
    changed = LOADED[:32] + bytes.fromhex("b700000001000000") + LOADED[40:]  # r0 = 1
    assert prog_tag(changed, "sha256") != prog_tag(LOADED, "sha256")
    assert program_digest(changed).sha256 != program_digest(LOADED).sha256
    # The map value's offset: the kernel's tag leaves it out, the SHA-256 keeps it.
    offset0 = [ld_map_value(R1, "arr", 0)] + PROGRAM[1:]
    assert prog_tag(offset0, "sha256") == prog_tag(LOADED, "sha256")
    assert program_digest(offset0).sha256 != program_digest(LOADED).sha256


def test_program_digest() -> None:
    d = program_digest(PROGRAM, "sha256")
    assert d == ProgramDigest(sha256=hashlib.sha256(stable_bytes(LOADED)).hexdigest(), tag="4aa98e999b16b7ec")
    assert str(d) == f"sha256:{d.sha256} tag:4aa98e999b16b7ec"
    assert d.to_json() == {"sha256": d.sha256, "tag": "4aa98e999b16b7ec"}
    # Comments are not bytes.
    assert program_digest([comment("look up the map")] + PROGRAM, "sha256") == d


@pytest.mark.parametrize(("release", "algorithm"), [
    ("6.18.44", "sha256"), ("6.18.0-rc3", "sha256"), ("6.19", "sha256"), ("7.0.1", "sha256"),
    ("6.17.9", "sha1"), ("6.12.12+bpo-amd64", "sha1"), ("6.1.0-31-arm64", "sha1"), ("5.15.0-91-generic", "sha1"),
])
def test_tag_hash_for_release(release: str, algorithm: str) -> None:
    assert tag_hash_for(release) == algorithm


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="kernel release 'linux' does not start with MAJOR.MINOR"):
        tag_hash_for("linux")
    with pytest.raises(ValueError, match="tag_hash must be one of sha1, sha256, not 'md5'"):
        prog_tag(LOADED, "md5")
    with pytest.raises(TruncatedProgramError, match="12 bytes are not a whole number of 8-byte instructions"):
        prog_tag(LOADED[:12], "sha1")
