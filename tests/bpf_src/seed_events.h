// The seed's event records, as a clang-built kestrel.o writes them to its ring buffer. Shared by seed.c
// and the construct schema in tests/test_bpf_object_build.py (which pins these layouts byte by byte).
#ifndef SEED_EVENTS_H
#define SEED_EVENTS_H

#define EVENT_EXECVE 1
#define EVENT_OPEN 2
#define EVENT_CONNECT 3
#define PATH_LEN 256

struct EventHeader {
	__u32 type;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u64 ts_ns;
	char comm[16];
};

struct ExecveEvent {
	struct EventHeader hdr;
	__u32 ppid;
	__s32 fault;
	char filename[PATH_LEN];
};

struct OpenEvent {
	struct EventHeader hdr;
	__s32 dfd;
	__s32 flags;
	__u32 mode;
	__s32 fault;
	char path[PATH_LEN];
};

struct ConnectEvent {
	struct EventHeader hdr;
	__s32 fd;
	__u32 addrlen;
	__u8 addr[28];          // struct sockaddr_in6 is the largest family we keep
	__s32 fault;
};

#endif
