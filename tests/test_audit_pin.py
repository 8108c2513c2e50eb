"""Pin files (kestrel_raw/audit/pin.py): the format, the messages, and the check at load."""
from __future__ import annotations

import pytest

from kestrel_raw.audit import PIN_FORMAT, PinError, PinFile, format_pins

A = "a" * 64
B = "0123456789abcdef" * 4


def test_format_and_parse_round_trip() -> None:
    text = format_pins({"kr_exec": A, "kr_exit": B}, "built for Linux 6.18\nby the test")
    assert text == PIN_FORMAT + "\n# built for Linux 6.18\n# by the test\nkr_exec " + A + "\nkr_exit " + B + "\n"
    pins = PinFile.parse(text, "pins.txt")
    assert pins.digests == {"kr_exec": frozenset({A}), "kr_exit": frozenset({B})}
    pins.check({"kr_exec": A, "kr_exit": B})


def test_comments_blank_lines_several_versions_and_upper_case() -> None:
    pins = PinFile.parse(f"\n  # approved 2026-12-03\nkr_exec {A}  # 6.18\nkr_exec {B.upper()}\n\n", "p")
    assert pins.digests == {"kr_exec": frozenset({A, B})}
    assert pins.refusal("kr_exec", B) is None and pins.refusal("kr_exec", A) is None


def test_refusals_name_the_program_and_the_file() -> None:
    pins = PinFile.parse(f"kr_exec {A}\n", "pins.txt")
    assert pins.refusal("kr_exit", B) == f"program kr_exit (sha256 {B}) is not in the pin file pins.txt"
    assert pins.refusal("kr_exec", B) == (f"program kr_exec has sha256 {B}, which the pin file pins.txt does not "
                                          f"approve (1 digest listed for it)")
    with pytest.raises(PinError) as info:
        pins.check({"kr_exec": A, "kr_exit": B})
    assert str(info.value) == (f"program kr_exit (sha256 {B}) is not in the pin file pins.txt: nothing loaded; "
                               f"`kestrel-raw disasm` shows the program")


@pytest.mark.parametrize("line", [f"kr_exec {A[:-1]}", f"kr_exec {A} extra", "kr_exec", f"kr-exec {A}",
                                  f"kr_exec_has_too_long_a_name {A}", f"kr_exec {'g' * 64}"])
def test_a_line_that_is_not_name_and_digest_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(PinError) as info:
        PinFile.parse(f"# ok\nkr_exit {B}\n{line}\n", "pins.txt")
    assert str(info.value) == (f"pins.txt:3: {line!r} is not 'NAME SHA256' (a program name of at most 15 characters "
                               f"and 64 hex digits)")


def test_an_unreadable_file_says_so(tmp_path) -> None:
    with pytest.raises(PinError, match=f"cannot read the pin file {tmp_path}/none: No such file or directory"):
        PinFile.load(str(tmp_path / "none"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(PinError, match="is not text"):
        PinFile.load(str(tmp_path / "bin"))
