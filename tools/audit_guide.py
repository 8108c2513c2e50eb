#!/usr/bin/env python3
"""Write the generated parts of docs/audit.md from real runs, between its ``<!-- audit:NAME -->`` and
``<!-- /audit:NAME -->`` markers.

    sudo python3 tools/audit_guide.py           # rebuild, load, read back: rewrite every section
    sudo python3 tools/audit_guide.py --check   # exit 1, naming them, when a section that does not depend
                                                # on the running kernel differs from what the code builds now

The guide walks kr_openat_e (an entry program: it reads no kernel struct, so its Python source, listing and
bytes are the same on every kernel and architecture kestrel-raw supports, and ``--check`` compares them; its
tag line, hashed as the running kernel hashes tags, is left out of the comparison).  The verifier's log, the
xlated code, the verify report and the BTF excerpt come from the kernel the tool runs on, whose name the
guide prints; they are rewritten by a run, not checked.  Needs root (tracefs; loading, for the kernel parts).
tests/test_audit_guide.py runs the check.
"""
from __future__ import annotations

import inspect
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kestrel_raw import programs  # noqa: E402
from kestrel_raw.asm import listing_json  # noqa: E402
from kestrel_raw.audit import PIN_FORMAT  # noqa: E402
from kestrel_raw.collector.load import build_programs, listing_text  # noqa: E402
from kestrel_raw.config import CollectorConfig  # noqa: E402
from kestrel_raw.programs import entry  # noqa: E402
from kestrel_raw.programs.builder import ProgramBuilder  # noqa: E402

GUIDE = ROOT / "docs" / "audit.md"
PROGRAM = "kr_openat_e"
# The options of the walk: open events only, so that kr_openat_e is program 0 (its slot in self_runs).
OPTIONS = dict(event_types=("open",), buffers=1)


def _built(**options) -> dict:
    config = CollectorConfig(**options)
    specs = programs.specs([int(t) for t in config.event_types])
    return {spec.name: (spec, insns) for spec, insns in build_programs(config, specs, mount_tracefs=False)}


def fence(lang: str, text: str) -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


def source() -> str:
    parts = [inspect.getsource(entry.build_string_entry), inspect.getsource(entry.task_slot),
             inspect.getsource(ProgramBuilder.prologue), inspect.getsource(ProgramBuilder._own_tgid),
             inspect.getsource(ProgramBuilder.epilogue)]
    return fence("python", "\n".join(parts))


def listing() -> str:
    spec, insns = _built(**OPTIONS)[PROGRAM]
    return fence("", listing_text(spec, insns))


def instruction_bytes() -> str:
    _spec, insns = _built(**OPTIONS)[PROGRAM]
    rows = []
    for row in listing_json(insns):
        raw = row["bytes"]
        spaced = " ".join(raw[i:i + 2] for i in range(0, 16, 2))
        rows.append(f"{row['index']:4d}: {spaced}  {row['text']}")
        if len(raw) == 32:
            rows.append(f"{row['index'] + 1:4d}: {' '.join(raw[i:i + 2] for i in range(16, 32, 2))}  "
                        f"(second half of the ld_imm64)")
    return fence("", "\n".join(rows))


def pin_format() -> str:
    return fence("", PIN_FORMAT)


CHECKED = {"source": source, "listing": listing, "bytes": instruction_bytes, "pin-format": pin_format}


def kernel_sections() -> dict[str, str]:
    """The parts read from the kernel: loads the programs (nothing attached), with the verifier's log."""
    import trio

    from kestrel_raw.asm import KernelSymbols, format_xlated
    from kestrel_raw.audit.readback import check_program
    from kestrel_raw.collector import KestrelCollector

    symbols = KernelSymbols.load()
    with tempfile.TemporaryDirectory() as logs:
        send, _recv = trio.open_memory_channel(1)
        collector = KestrelCollector(send, CollectorConfig(**OPTIONS, verifier_log_level=2, verifier_log_path=logs))
        collector.load()
        try:
            [(spec, prog)] = [(s, p) for s, p in collector._programs if s.name == PROGRAM]
            names = {m.fileno(): n for n, m in collector._maps.items()}
            ids = {m.map_info().id: n for n, m in collector._maps.items()}
            xlated = format_xlated(prog.xlated(), symbols)
            report = check_program(PROGRAM, prog.code, prog.fileno(), fd_names=names, id_names=ids, symbols=symbols)
            log = Path(logs, f"{PROGRAM}.log").read_text()
        finally:
            collector.stop()
    _spec, exit_insns = _built(event_types=("exit",), buffers=1)["kr_exit"]
    exit_lines = listing_text(_spec, exit_insns).splitlines()
    start = next(i for i, ln in enumerate(exit_lines) if ln.startswith("; the current task"))
    end = next(i for i, ln in enumerate(exit_lines) if ln.startswith("; record.exit_code"))
    uname = os.uname()
    return {
        "kernel": f"Linux {uname.release} {uname.machine}",
        "log": fence("", log),
        "xlated": fence("", xlated),
        "verify": fence("", report.text()),
        "btf": fence("", "\n".join(exit_lines[start:end + 3])),
        "tag": f"`{report.info.tag.hex()}`",
    }


def _section(text: str, name: str) -> re.Match | None:
    return re.compile(rf"(<!-- audit:{name} -->\n?)(.*?)(\n?<!-- /audit:{name} -->)", re.S).search(text)


def _without_tag(section: str) -> str:
    return "\n".join(ln for ln in section.splitlines() if not ln.startswith("; tag "))


def stale_sections(text: str) -> list[str]:
    """The checked sections of ``text`` that differ from what the code builds now (or are missing)."""
    stale = []
    for name, render in CHECKED.items():
        m = _section(text, name)
        if m is None or _without_tag(m.group(2)) != _without_tag(render()):
            stale.append(name)
    return stale


def main(argv: list[str]) -> int:
    text = GUIDE.read_text()
    if "--check" in argv:
        stale = stale_sections(text)
        if stale:
            print(f"{GUIDE.relative_to(ROOT)}: sections {', '.join(stale)} differ from the code; run "
                  f"`sudo python3 tools/audit_guide.py`", file=sys.stderr)
            return 1
        return 0
    sections = {name: render() for name, render in CHECKED.items()} | kernel_sections()
    for name, body in sections.items():
        m = _section(text, name)
        if m is None:
            print(f"{GUIDE.relative_to(ROOT)}: no <!-- audit:{name} --> ... <!-- /audit:{name} --> section",
                  file=sys.stderr)
            return 1
        block = m.group(1).endswith("\n")  # a fenced section on lines of its own, else inline text
        closing = "\n" + m.group(3).lstrip("\n") if block else m.group(3)
        text = text[:m.start()] + m.group(1) + body + closing + text[m.end():]
    GUIDE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
