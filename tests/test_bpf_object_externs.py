"""__kconfig/__ksym externs (bpfobj/externs.py) and the object BTF's fix-ups and sanitisation (bpfobj/btffix.py),
with libbpf's rules and messages: pure tests on values and blobs made here, and the sanitised BTF of a
clang-built object accepted by the kernel.
"""
from __future__ import annotations

import pytest

from kestrel_raw.bpfobj import BpfObject
from kestrel_raw.bpfobj import btffix
from kestrel_raw.bpfobj.externs import (
    EXT_KCFG, KCFG_BOOL, KCFG_CHAR, KCFG_CHAR_ARR, KCFG_INT, KCFG_TRISTATE, Extern, HostFacts, _Kcfg,
    apply_kconfig, kernel_version_code, resolve_externs,
)
from kestrel_raw.btf import BTF
from kestrel_raw.btf.kinds import (
    BTF_KIND_CONST, BTF_KIND_DATASEC, BTF_KIND_ENUM, BTF_KIND_FUNC, BTF_KIND_INT,
    BTF_KIND_STRUCT, BTF_KIND_TYPEDEF, BTF_KIND_UNION, BTF_KIND_VAR,
)
from kestrel_raw.errors import BpfObjectError
from tests.helpers import BtfBuilder, bpf_object


def test_kernel_version_code_as_libbpf():
    assert kernel_version_code("6.1.0-27-amd64") == 6 << 16 | 1 << 8
    assert kernel_version_code("6.18.44-fc-v1098") == 6 << 16 | 18 << 8 | 44
    assert kernel_version_code("5.4.300") == 5 << 16 | 4 << 8 | 255          # the patch level is capped
    assert kernel_version_code("6.1") == 0                                    # not N.N.N: libbpf gives 0
    # Ubuntu: /proc/version_signature's upstream version wins over the release
    assert kernel_version_code("5.15.0-91-generic", "Ubuntu 5.15.0-91.101-generic 5.15.131\n") == \
        5 << 16 | 15 << 8 | 131


def _ext(name, kind, size, off=0, signed=False, weak=False):
    return Extern(name, EXT_KCFG, weak, 1, kcfg_type=kind, size=size, align=min(size, 8), signed=signed,
                  data_off=off)


def test_kconfig_values_of_every_type():
    exts = [_ext("CONFIG_A", KCFG_BOOL, 1, 0), _ext("CONFIG_B", KCFG_TRISTATE, 4, 4), _ext("CONFIG_C", KCFG_CHAR, 1, 8),
            _ext("CONFIG_D", KCFG_INT, 4, 12, signed=True), _ext("CONFIG_E", KCFG_CHAR_ARR, 6, 16),
            _ext("CONFIG_F", KCFG_TRISTATE, 4, 24)]
    k = _Kcfg(exts, "t.o")
    apply_kconfig(k, {e.name: e for e in exts},
                  "# CONFIG_X is not set\nCONFIG_A=y\nCONFIG_B=m\nCONFIG_C=y\nCONFIG_D=-12\n"
                  'CONFIG_E="hello world"\nCONFIG_F=n\nCONFIG_A=n\nOTHER=1\n')
    data = bytes(k.data)
    assert data[0] == 1                                   # bool y (the later CONFIG_A=n is ignored: set once)
    assert data[4:8] == (2).to_bytes(4, "little")         # tristate m = TRI_MODULE
    assert data[8] == ord("y")                            # a char takes the letter
    assert data[12:16] == (-12).to_bytes(4, "little", signed=True)
    assert data[16:22] == b"hello\0"                      # truncated to the array, NUL-terminated
    assert data[24:28] == bytes(4)
    assert k.set == {"CONFIG_A", "CONFIG_B", "CONFIG_C", "CONFIG_D", "CONFIG_E", "CONFIG_F"}


@pytest.mark.parametrize("ext, line, message", [
    (_ext("CONFIG_A", KCFG_BOOL, 1), "CONFIG_A=m", "extern (kcfg) 'CONFIG_A': value 'm' implies tristate or char type"),
    (_ext("CONFIG_A", KCFG_INT, 2), "CONFIG_A=70000",
     "extern (kcfg) 'CONFIG_A': value '70000' doesn't fit in 2 bytes"),
    (_ext("CONFIG_A", KCFG_INT, 4), "CONFIG_A=12abc", "extern (kcfg) 'CONFIG_A': value '12abc' isn't a valid integer"),
    (_ext("CONFIG_A", KCFG_BOOL, 1), "CONFIG_A=5", "extern (kcfg) 'CONFIG_A': value '5' implies integer type"),
    (_ext("CONFIG_A", KCFG_INT, 4), 'CONFIG_A="x"', "extern (kcfg) 'CONFIG_A': value '\"x\"' implies char array type"),
    (_ext("CONFIG_A", KCFG_INT, 4), "CONFIG_A=y",
     "extern (kcfg) 'CONFIG_A': value 'y' implies bool, tristate, or char type"),
    (_ext("CONFIG_A", KCFG_INT, 4), "CONFIG_A", "kernel config line 'CONFIG_A': no separator"),
])
def test_kconfig_refusals_say_what_libbpf_says(ext, line, message):
    with pytest.raises(BpfObjectError) as e:
        apply_kconfig(_Kcfg([ext], "t.o"), {ext.name: ext}, line)
    assert str(e.value) == f"t.o: {message}"


class Facts(HostFacts):
    def __init__(self, config=None, version=0x060100, syms=()):
        super().__init__(features=lambda name: name == "bpf_cookie")
        self._config, self._version, self._syms = config, version, list(syms)

    def kconfig(self):
        return self._config

    def kernel_version(self):
        return self._version

    def kallsyms(self):
        return self._syms


def test_resolution_strong_weak_and_virtual():
    exts = [_ext("LINUX_KERNEL_VERSION", KCFG_INT, 4, 0), _ext("LINUX_HAS_BPF_COOKIE", KCFG_BOOL, 1, 4),
            _ext("CONFIG_WEAK", KCFG_INT, 4, 8, weak=True)]
    v = resolve_externs(exts, None, Facts(config="CONFIG_OTHER=y\n"), "t.o")
    assert v.kconfig == (0x060100).to_bytes(4, "little") + b"\x01" + bytes(3) + bytes(4)
    assert v.notes == ("extern 'CONFIG_WEAK' (weak): not resolved, defaulting to zero",)
    strong = [_ext("CONFIG_STRONG", KCFG_INT, 4)]
    with pytest.raises(BpfObjectError, match=r"^t.o: extern \(kcfg\) 'CONFIG_STRONG' \(strong\): not resolved "
                                             r"\(not in this kernel's config\)$"):
        resolve_externs(strong, None, Facts(config=""), "t.o")
    with pytest.raises(BpfObjectError, match=r"neither /boot/config-.* nor /proc/config.gz exists"):
        resolve_externs(strong, None, Facts(config=None), "t.o")
    with pytest.raises(BpfObjectError, match=r"'LINUX_FOO': unrecognized virtual extern"):
        resolve_externs([_ext("LINUX_FOO", KCFG_INT, 4)], None, Facts(), "t.o")


def _all_kinds_btf() -> bytes:
    b = BtfBuilder()
    i = b.int("int", 4, signed=True)
    proto = b.func_proto(i, [("x", i)])
    b.func("f", proto, linkage=1)                          # global FUNC
    v = b.var("v", i)
    b.datasec(".data", 4, [(v, 0, 4)])
    b.words += [b.strs.add("float"), 16 << 24, 4]          # FLOAT 'float' size 4
    b.count += 1
    b.words += [b.strs.add("tag"), 17 << 24, v, 0xFFFFFFFF]   # DECL_TAG on v
    b.count += 1
    b.words += [b.strs.add("tt"), 18 << 24, i]             # TYPE_TAG
    b.count += 1
    b.enum("e", [("A", 1)], signed=True)                   # ENUM with kind_flag (signed)
    b.enum64("e64", [("B", 1 << 40)])
    return b.build()


def test_sanitize_replaces_each_kind_the_kernel_lacks():
    blob = _all_kinds_btf()
    assert btffix.sanitize(blob, btffix.ALL_BTF_FEATURES) == blob          # nothing to do
    old = BTF.parse(btffix.sanitize(blob, {"btf_func", "btf_datasec", "btf_func_global", "btf_float",
                                            "btf_decl_tag", "btf_type_tag", "btf_enum64"} - {"btf_enum64",
                                                                                               "btf_float"}))
    kinds = [t.kind for t in old]
    assert kinds[5] == BTF_KIND_STRUCT and old.type_by_id(6).name == ""       # FLOAT -> anonymous STRUCT
    assert kinds[8] == BTF_KIND_ENUM and not old.type_by_id(9).kind_flag     # signedness bit dropped
    assert kinds[9] == BTF_KIND_UNION                                          # ENUM64 -> UNION
    assert kinds[:5] == [BTF_KIND_INT, 13, BTF_KIND_FUNC, BTF_KIND_VAR, BTF_KIND_DATASEC]   # kept
    assert old.type_by_id(len(old)).name == "enum64_placeholder"
    bare = BTF.parse(btffix.sanitize(blob, set()))
    assert [t.kind for t in bare][:9] == [BTF_KIND_INT, BTF_KIND_ENUM, BTF_KIND_TYPEDEF, BTF_KIND_INT,
                                          BTF_KIND_STRUCT, BTF_KIND_STRUCT, BTF_KIND_INT, BTF_KIND_CONST,
                                          BTF_KIND_ENUM]
    assert bare.type_by_id(5).name == "_data" and bare.type_by_id(5).members[0].name == "v"
    glob = BTF.parse(btffix.sanitize(blob, btffix.ALL_BTF_FEATURES - {"btf_func_global"}))
    assert glob.type_by_id(3).kind == BTF_KIND_FUNC and glob.type_by_id(3).linkage == 0


def test_object_btf_fixed_up_for_the_kernel(tmp_path):
    obj = BpfObject.load(str(bpf_object("probes.c", tmp_path)))
    fixed = BTF.parse(btffix.finalize(obj.elf.section_data(".BTF"), obj.elf, obj.externs, obj.source))
    secs = {t.name: t for t in fixed if t.kind == BTF_KIND_DATASEC}
    assert secs[".bss"].size == obj.elf.section(".bss").size
    assert secs[".maps"].size == obj.elf.section(".maps").size
    kconfig = secs[".kconfig"]
    assert kconfig.size == obj.maps[".kconfig"].value_size
    offs = {fixed.type_by_id(v.type).name: v.offset for v in kconfig.secinfos}
    assert offs == {e.name: e.data_off for e in obj.externs if e.type == EXT_KCFG}
    assert all(fixed.type_by_id(v.type).linkage == 1 for v in kconfig.secinfos)   # global allocated
    assert [(v.offset, v.size) for v in secs[".ksyms"].secinfos] == [(0, 4)]
    assert fixed.type_by_id(secs[".ksyms"].secinfos[0].type).kind == BTF_KIND_VAR
    # kconfig externs laid out as libbpf lays them: alignment descending, size ascending, then name
    kc = [e for e in obj.externs if e.type == EXT_KCFG]
    assert [e.name for e in kc] == ["CONFIG_BPF_EVENTS", "CONFIG_HZ", "CONFIG_KESTREL_NEVER_SET",
                                    "LINUX_KERNEL_VERSION", "CONFIG_BPF_SYSCALL", "CONFIG_DEFAULT_HOSTNAME"]


@pytest.mark.kernel
def test_kernel_takes_the_fixed_and_the_fully_sanitised_btf(tmp_path):
    from kestrel_raw.kernel import bpf
    obj = BpfObject.load(str(bpf_object("probes.c", tmp_path)))
    fixed = btffix.finalize(obj.elf.section_data(".BTF"), obj.elf, obj.externs, obj.source)
    bpf.btf_load(fixed).close()
    bpf.btf_load(btffix.sanitize(fixed, set())).close()          # as a kernel with none of the newer kinds gets it
