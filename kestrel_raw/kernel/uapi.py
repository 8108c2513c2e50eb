"""Kernel ABI for bpf(2) and perf_event_open(2), named as the kernel names it: constants and the structure
layouts (the views of ``union bpf_attr`` per command, ``struct bpf_prog_info``/``bpf_map_info``/
``bpf_link_info``, ``struct perf_event_attr``).

Values and layouts from include/uapi/linux/bpf.h and include/uapi/linux/perf_event.h.  The enums are
append-only in the kernel, so a value here is the same on every kernel that knows the name; the structures
only grow at their end.  Tests pin every offset and compare constants and layouts with the running kernel's
BTF.  Pure: the layouts are ``kernel.layout`` declarations, packed into bytearrays; kernel/syscall.py hands
them to the kernel.
"""
from __future__ import annotations

from kestrel_raw.kernel.layout import U16, U32, U64, S32, Bits, Bytes, Chars, Layout

# --- enum bpf_cmd -----------------------------------------------------------------------------------------
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_LOAD = 18
BPF_BTF_GET_FD_BY_ID = 19
BPF_TASK_FD_QUERY = 20
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_FREEZE = 22
BPF_BTF_GET_NEXT_ID = 23
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_ENABLE_STATS = 32
BPF_ITER_CREATE = 33
BPF_LINK_DETACH = 34

BPF_CMD_NAMES = {
    value: name for name, value in globals().items()
    if name.startswith("BPF_") and isinstance(value, int) and name != "BPF_CMD_NAMES"
}

# --- enum bpf_map_type ------------------------------------------------------------------------------------
BPF_MAP_TYPE_UNSPEC = 0
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_CGROUP_ARRAY = 8
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_QUEUE = 22
BPF_MAP_TYPE_STACK = 23
BPF_MAP_TYPE_DEVMAP = 14
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_CPUMAP = 16
BPF_MAP_TYPE_XSKMAP = 17
BPF_MAP_TYPE_SOCKHASH = 18
BPF_MAP_TYPE_DEVMAP_HASH = 25
BPF_MAP_TYPE_RINGBUF = 27
BPF_MAP_TYPE_TASK_STORAGE = 29
# map_create for local storage (task, inode, socket): created empty, an entry per object on demand
BPF_MAP_TYPE_BLOOM_FILTER = 30

# --- enum bpf_prog_type -----------------------------------------------------------------------------------
BPF_PROG_TYPE_UNSPEC = 0
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_SCHED_ACT = 4
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_XDP = 6
BPF_PROG_TYPE_PERF_EVENT = 7
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_LSM = 29

BPF_PROG_TYPE_EXT = 28

# --- enum bpf_attach_type ---------------------------------------------------------------------------------
BPF_TRACE_RAW_TP = 23
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_MODIFY_RETURN = 26
BPF_LSM_MAC = 27
BPF_TRACE_ITER = 28
BPF_PERF_EVENT = 41
BPF_TRACE_KPROBE_MULTI = 42

# --- enum bpf_link_type -----------------------------------------------------------------------------------
BPF_LINK_TYPE_UNSPEC = 0
BPF_LINK_TYPE_RAW_TRACEPOINT = 1
BPF_LINK_TYPE_TRACING = 2
BPF_LINK_TYPE_PERF_EVENT = 7

# --- flags ------------------------------------------------------------------------------------------------
# map_update_elem flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

# map_create map_flags
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_NO_COMMON_LRU = 1 << 1
BPF_F_NUMA_NODE = 1 << 2
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_WRONLY_PROG = 1 << 8
BPF_F_MMAPABLE = 1 << 10

# prog_load prog_flags
BPF_F_STRICT_ALIGNMENT = 1 << 0
BPF_F_SLEEPABLE = 1 << 4

# bpf_task_storage_get flags
BPF_LOCAL_STORAGE_GET_F_CREATE = 1 << 0

# enum bpf_stats_type
BPF_STATS_RUN_TIME = 0

# ring buffer helper flags and query selectors
BPF_RB_NO_WAKEUP = 1 << 0
BPF_RB_FORCE_WAKEUP = 1 << 1
BPF_RB_AVAIL_DATA = 0
BPF_RB_RING_SIZE = 1
BPF_RB_CONS_POS = 2
BPF_RB_PROD_POS = 3

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

# --- perf_event_open --------------------------------------------------------------------------------------
# enum perf_type_id
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_TYPE_HW_CACHE = 3
PERF_TYPE_RAW = 4
PERF_TYPE_BREAKPOINT = 5

# perf_event_open flags
PERF_FLAG_FD_NO_GROUP = 1 << 0
PERF_FLAG_FD_OUTPUT = 1 << 1
PERF_FLAG_PID_CGROUP = 1 << 2
PERF_FLAG_FD_CLOEXEC = 1 << 3

# sizeof(struct perf_event_attr) at each revision of the structure
PERF_ATTR_SIZE_VER0 = 64
PERF_ATTR_SIZE_VER1 = 72
PERF_ATTR_SIZE_VER2 = 80
PERF_ATTR_SIZE_VER3 = 96
PERF_ATTR_SIZE_VER4 = 104
PERF_ATTR_SIZE_VER5 = 112
PERF_ATTR_SIZE_VER6 = 120
PERF_ATTR_SIZE_VER7 = 128
PERF_ATTR_SIZE_VER8 = 136

# ioctl request encoding, include/uapi/asm-generic/ioctl.h (x86_64 and arm64 both use the generic one).
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: str, nr: int, size: int) -> int:
    return ((direction << _IOC_DIRSHIFT) | (ord(type_) << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)
            | (size << _IOC_SIZESHIFT))


def _IO(type_: str, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOW(type_: str, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


PERF_EVENT_IOC_ENABLE = _IO("$", 0)
PERF_EVENT_IOC_DISABLE = _IO("$", 1)
PERF_EVENT_IOC_SET_BPF = _IOW("$", 8, 4)  # argument: __u32 program fd


# --- dynamic PMUs (kprobe, uprobe): their type and config bits are read from sysfs, not fixed ------------
PMU_DEVICES = "/sys/bus/event_source/devices"   # <pmu>/type; <pmu>/format/retprobe ("config:0")

# --- struct perf_event_attr ------------------------------------------------------------------------------
# Up to config3 (PERF_ATTR_SIZE_VER8).  A kernel that knows a smaller revision accepts it as long as the bytes
# it does not know are zero, which they are unless a caller sets config3/sig_data.

PerfEventAttr = Layout("struct perf_event_attr", [
    ("type", U32),
    ("size", U32),
    ("config", U64),
    (("sample_period", "sample_freq"), U64),
    ("sample_type", U64),
    ("read_format", U64),
    (None, Bits(U64, [
        ("disabled", 1), ("inherit", 1), ("pinned", 1), ("exclusive", 1), ("exclude_user", 1),
        ("exclude_kernel", 1), ("exclude_hv", 1), ("exclude_idle", 1), ("mmap", 1), ("comm", 1), ("freq", 1),
        ("inherit_stat", 1), ("enable_on_exec", 1), ("task", 1), ("watermark", 1), ("precise_ip", 2),
        ("mmap_data", 1), ("sample_id_all", 1), ("exclude_host", 1), ("exclude_guest", 1),
        ("exclude_callchain_kernel", 1), ("exclude_callchain_user", 1), ("mmap2", 1), ("comm_exec", 1),
        ("use_clockid", 1), ("context_switch", 1), ("write_backward", 1), ("namespaces", 1), ("ksymbol", 1),
        ("bpf_event", 1), ("aux_output", 1), ("cgroup", 1), ("text_poke", 1), ("build_id", 1),
        ("inherit_thread", 1), ("remove_on_exec", 1), ("sigtrap", 1), ("__reserved_1", 26),
    ])),
    (("wakeup_events", "wakeup_watermark"), U32),
    ("bp_type", U32),
    (("bp_addr", "kprobe_func", "uprobe_path", "config1"), U64),
    (("bp_len", "kprobe_addr", "probe_offset", "config2"), U64),
    ("branch_sample_type", U64),
    ("sample_regs_user", U64),
    ("sample_stack_user", U32),
    ("clockid", S32),
    ("sample_regs_intr", U64),
    ("aux_watermark", U32),
    ("sample_max_stack", U16),
    ("__reserved_2", U16),
    ("aux_sample_size", U32),
    ("__reserved_3", U32),  # aux_action and its bits since 6.13
    ("sig_data", U64),
    ("config3", U64),
])

# --- union bpf_attr: one view per command ------------------------------------------------------------------
# Each view is the command's member of the union (all start at offset 0), declared up to the last field this
# package uses: a command passes the size up to the end of the last field it sets, so every size here fits
# Debian 6.1's 144-byte union (fields newer than 6.1, such as log_true_size, are not declared).

MapCreateAttr = Layout("union bpf_attr: BPF_MAP_CREATE", [
    ("map_type", U32),
    ("key_size", U32),
    ("value_size", U32),
    ("max_entries", U32),
    ("map_flags", U32),
    ("inner_map_fd", U32),
    ("numa_node", U32),
    ("map_name", Chars(BPF_OBJ_NAME_LEN)),
    ("map_ifindex", U32),
    ("btf_fd", U32),
    ("btf_key_type_id", U32),
    ("btf_value_type_id", U32),
])

BtfLoadAttr = Layout("union bpf_attr: BPF_BTF_LOAD", [
    ("btf", U64),
    ("btf_log_buf", U64),
    ("btf_size", U32),
    ("btf_log_size", U32),
    ("btf_log_level", U32),
])

MapElemAttr = Layout("union bpf_attr: BPF_MAP_*_ELEM, BPF_MAP_GET_NEXT_KEY", [
    ("map_fd", U32),
    ("key", U64),
    (("value", "next_key"), U64),
    ("flags", U64),
])

MapBatchAttr = Layout("union bpf_attr: BPF_MAP_*_BATCH (batch)", [
    ("in_batch", U64),
    ("out_batch", U64),
    ("keys", U64),
    ("values", U64),
    ("count", U32),
    ("map_fd", U32),
    ("elem_flags", U64),
    ("flags", U64),
])

ProgLoadAttr = Layout("union bpf_attr: BPF_PROG_LOAD", [
    ("prog_type", U32),
    ("insn_cnt", U32),
    ("insns", U64),
    ("license", U64),
    ("log_level", U32),
    ("log_size", U32),
    ("log_buf", U64),
    ("kern_version", U32),
    ("prog_flags", U32),
    ("prog_name", Chars(BPF_OBJ_NAME_LEN)),
    ("prog_ifindex", U32),
    ("expected_attach_type", U32),
    ("prog_btf_fd", U32),
    ("func_info_rec_size", U32),
    ("func_info", U64),
    ("func_info_cnt", U32),
    ("line_info_rec_size", U32),
    ("line_info", U64),
    ("line_info_cnt", U32),
    ("attach_btf_id", U32),
    (("attach_prog_fd", "attach_btf_obj_fd"), U32),
])

MapFreezeAttr = Layout("union bpf_attr: BPF_MAP_FREEZE", [
    ("map_fd", U32),
])

InfoByFdAttr = Layout("union bpf_attr: BPF_OBJ_GET_INFO_BY_FD (info)", [
    ("bpf_fd", U32),
    ("info_len", U32),
    ("info", U64),
])

LinkCreateAttr = Layout("union bpf_attr: BPF_LINK_CREATE (link_create)", [
    ("prog_fd", U32),  # a union with map_fd since 6.4
    (("target_fd", "target_ifindex"), U32),
    ("attach_type", U32),
    ("flags", U32),
    ("bpf_cookie", U64),  # perf_event.bpf_cookie, in the union of per-attach-type members (5.15)
])

RawTracepointAttr = Layout("union bpf_attr: BPF_RAW_TRACEPOINT_OPEN (raw_tracepoint)", [
    ("name", U64),
    ("prog_fd", U32),
])

GetIdAttr = Layout("union bpf_attr: BPF_*_GET_NEXT_ID, BPF_*_GET_FD_BY_ID", [
    (("start_id", "prog_id", "map_id", "btf_id", "link_id"), U32),
    ("next_id", U32),
    ("open_flags", U32),
])

EnableStatsAttr = Layout("union bpf_attr: BPF_ENABLE_STATS (enable_stats)", [
    ("type", U32),
])

IterCreateAttr = Layout("union bpf_attr: BPF_ITER_CREATE (iter_create)", [
    ("link_fd", U32),
    ("flags", U32),
])

# --- what BPF_OBJ_GET_INFO_BY_FD fills ---------------------------------------------------------------------
# Declared as far as 6.1 knows them; a newer kernel fills only the length it is given, an older one leaves the
# bytes it does not know zero.

BpfProgInfo = Layout("struct bpf_prog_info", [
    ("type", U32),
    ("id", U32),
    ("tag", Bytes(BPF_TAG_SIZE)),
    ("jited_prog_len", U32),
    ("xlated_prog_len", U32),
    ("jited_prog_insns", U64),
    ("xlated_prog_insns", U64),
    ("load_time", U64),
    ("created_by_uid", U32),
    ("nr_map_ids", U32),
    ("map_ids", U64),
    ("name", Chars(BPF_OBJ_NAME_LEN)),
    ("ifindex", U32),
    (None, Bits(U32, [("gpl_compatible", 1), (None, 31)])),
    ("netns_dev", U64),
    ("netns_ino", U64),
    ("nr_jited_ksyms", U32),
    ("nr_jited_func_lens", U32),
    ("jited_ksyms", U64),
    ("jited_func_lens", U64),
    ("btf_id", U32),
    ("func_info_rec_size", U32),
    ("func_info", U64),
    ("nr_func_info", U32),
    ("nr_line_info", U32),
    ("line_info", U64),
    ("jited_line_info", U64),
    ("nr_jited_line_info", U32),
    ("line_info_rec_size", U32),
    ("jited_line_info_rec_size", U32),
    ("nr_prog_tags", U32),
    ("prog_tags", U64),
    ("run_time_ns", U64),
    ("run_cnt", U64),
    ("recursion_misses", U64),
    ("verified_insns", U32),
    ("attach_btf_obj_id", U32),
    ("attach_btf_id", U32),
])

BpfMapInfo = Layout("struct bpf_map_info", [
    ("type", U32),
    ("id", U32),
    ("key_size", U32),
    ("value_size", U32),
    ("max_entries", U32),
    ("map_flags", U32),
    ("name", Chars(BPF_OBJ_NAME_LEN)),
    ("ifindex", U32),
    ("btf_vmlinux_value_type_id", U32),
    ("netns_dev", U64),
    ("netns_ino", U64),
    ("btf_id", U32),
    ("btf_key_type_id", U32),
    ("btf_value_type_id", U32),
    ("map_extra", U64),  # after the kernel's `__u32 :32` alignment pad
])

# The common head of struct bpf_link_info; the per-link-type union after it is not read.
BpfLinkInfo = Layout("struct bpf_link_info", [
    ("type", U32),
    ("id", U32),
    ("prog_id", U32),
])


# --- sockets --------------------------------------------------------------------------------------------
# address families (include/linux/socket.h)
AF_UNSPEC = 0
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
AF_PACKET = 17
AF_VSOCK = 40
# struct sockaddr_in (include/uapi/linux/in.h): sa_family_t (u16) at 0, in_port_t (big-endian) at 2, struct
# in_addr at 4, 16 bytes; struct sockaddr_in6 (in6.h): family, port, u32 flowinfo at 4, struct in6_addr at 8,
# u32 scope_id, 28 bytes.
SIN_PORT = 2
SIN_ADDR = 4
SIN6_ADDR = 8
SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28
