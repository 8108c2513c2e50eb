"""Where a program's layout constants come from: BTF member paths (with the struct's type id) and tracefs
format fields, carried by the offsets as ``Sourced`` ints (the plain int everywhere else)."""
from __future__ import annotations

import pytest

from kestrel_raw.asm import BPF_W, R1, R6, Sourced, btf_member, ldx_mem, tracefs_field
from kestrel_raw.kernel.tracefs import parse_format

FORMAT = """name: sys_enter_openat
ID: 700
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;

print fmt: "filename: 0x%08lx", ((unsigned long)(REC->filename))
"""


def test_a_tracepoint_format_names_where_each_offset_was_read() -> None:
    fmt = parse_format(FORMAT)
    plain = fmt.field("filename")
    sourced = __import__("dataclasses").replace(fmt, group="syscalls").sourced().field("filename")
    assert sourced == plain and sourced.offset == 24 and type(plain.offset) is int
    assert sourced.offset.provenance == tracefs_field("syscalls", "sys_enter_openat", "filename")
    assert ldx_mem(BPF_W, R1, R6, sourced.offset).note.provenance == (
        tracefs_field("syscalls", "sys_enter_openat", "filename"),)


@pytest.mark.kernel
def test_btf_path_hops_and_the_layouts_offsets() -> None:
    from kestrel_raw.btf import BTF
    from kestrel_raw.programs.layout import KernelLayout

    btf = BTF.load()
    task = btf.find("task_struct", "struct").id
    cred = btf.find("cred", "struct").id
    hops = btf.path_hops("task_struct.cred.uid.val")
    assert [(h.dotted, h.type_id) for h in hops] == [("task_struct.cred", task), ("cred.uid.val", cred)]
    assert [(h.offset, h.size) for h in hops] == btf.path("task_struct.cred.uid.val")
    assert hops[1].offset == btf.member("cred", "uid").offset + btf.member("kuid_t", "val").offset
    layout = KernelLayout.from_btf(btf)
    (parent, _), (tgid, size) = layout.hops("task_struct.real_parent.tgid")
    assert (type(parent), parent, parent.provenance) == (
        Sourced, btf.member("task_struct", "real_parent").offset, btf_member("task_struct.real_parent", task))
    assert (tgid.provenance, size) == (btf_member("task_struct.tgid", task), 4)
    assert layout.offset("dentry.d_name.len", 4).provenance == btf_member("dentry.d_name.len",
                                                                          btf.find("dentry", "struct").id)
    assert all(arg.provenance.name.startswith("pt_regs.") for arg in layout.syscall_args)
    plain = KernelLayout.from_btf(btf, annotate=False)
    assert plain.hops("task_struct.real_parent.tgid") == layout.hops("task_struct.real_parent.tgid")
    assert {type(o) for o, _ in plain.hops("task_struct.real_parent.tgid")} == {int}
    assert plain.syscall_args == layout.syscall_args and {type(a) for a in plain.syscall_args} == {int}
