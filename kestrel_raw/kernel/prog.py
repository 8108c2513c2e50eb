"""``Program``: a BPF program assembled from ``kestrel_raw.asm`` instructions and loaded into the kernel."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.fd import FD, FDOwner
from kestrel_raw.kernel.uapi import BPF_PROG_TYPE_TRACEPOINT


class Program(FDOwner):
    """A loaded program; owns its fd.

    ``insns`` are asm ``Instruction`` values (and labels), assembled with ``maps`` (name -> ``Map``) filling
    the ``ld_map_fd`` references; already assembled bytes are accepted too.  Loading failures raise
    ``VerifierError`` (with the verifier's log) or ``BPFError``.  ``log_level`` > 0 keeps the verifier's log
    of a successful load in ``verifier_log``.
    """

    def __init__(self, insns: Iterable | bytes, maps: Mapping[str, object] | None = None,
                 prog_type: int = BPF_PROG_TYPE_TRACEPOINT, name: str = "", license: str = "GPL",
                 expected_attach_type: int = 0, attach_btf_id: int = 0, log_level: int = 0) -> None:
        bpf.check_object_name(name, "program")
        if isinstance(insns, (bytes, bytearray, memoryview)):
            code = bytes(insns)
        else:
            from kestrel_raw.asm import assemble
            code = assemble(list(insns), maps=dict(maps or {}))
        self.code = code
        self.prog_type = prog_type
        self.name = name
        self.license = license
        self.expected_attach_type = expected_attach_type
        # Keep the maps alive while the program is: an fd the program refers to must not be closed and reused
        # before the kernel took its own reference (it does at load; this just keeps ownership obvious).
        self.maps = dict(maps or {})
        # The verifier's log, kept when ``log_level`` asks for one ("" otherwise): what it proved.
        self.verifier_log = ""
        self._fd: FD
        if log_level:
            self._fd, self.verifier_log = bpf.prog_load_with_log(
                prog_type, code, log_level, license=license, name=name, expected_attach_type=expected_attach_type,
                attach_btf_id=attach_btf_id)
        else:
            self._fd = bpf.prog_load(prog_type, code, license=license, name=name,
                                     expected_attach_type=expected_attach_type, attach_btf_id=attach_btf_id)


    def info(self) -> bpf.ProgInfo:
        """The kernel's view of the program: id, tag, sizes, map ids, run counters."""
        return bpf.prog_info(self.fileno())

    def xlated(self) -> bytes:
        """The instructions as the verifier left them (``bpftool prog dump xlated``)."""
        return bpf.prog_xlated(self.fileno())

    def __repr__(self) -> str:
        return f"Program(name={self.name!r}, type={self.prog_type}, insns={len(self.code) // 8}, fd={self.fd})"
