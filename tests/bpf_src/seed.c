// The seed's shape: execve/openat/connect tracepoints writing ExecveEvent/OpenEvent/ConnectEvent records to
// one ring buffer, the parent's pid read through CO-RE.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "seed_events.h"

struct task_struct {
	int tgid;
	struct task_struct *real_parent;
} __attribute__((preserve_access_index));

// syscalls:sys_enter_* records: the common header, the syscall number, then the six arguments.
struct sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} events SEC(".maps");

const volatile __u32 self_tgid = 0;

static __always_inline int fill_header(struct EventHeader *h, __u32 type)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->type = type;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->uid = (__u32)bpf_get_current_uid_gid();
	h->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	return h->pid == self_tgid;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int trace_execve(struct sys_enter_ctx *ctx)
{
	struct ExecveEvent *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	if (fill_header(&e->hdr, EVENT_EXECVE)) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	struct task_struct *task = (void *)bpf_get_current_task();
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->fault = bpf_probe_read_user_str(e->filename, sizeof(e->filename), (void *)ctx->args[0]) < 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int trace_openat(struct sys_enter_ctx *ctx)
{
	struct OpenEvent *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	if (fill_header(&e->hdr, EVENT_OPEN)) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	e->dfd = (int)ctx->args[0];
	e->flags = (int)ctx->args[2];
	e->mode = (__u32)ctx->args[3];
	e->fault = bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)ctx->args[1]) < 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int trace_connect(struct sys_enter_ctx *ctx)
{
	struct ConnectEvent *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	if (fill_header(&e->hdr, EVENT_CONNECT)) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	__u32 len = ctx->args[2];
	e->fd = (int)ctx->args[0];
	e->addrlen = len;
	if (len > sizeof(e->addr))
		len = sizeof(e->addr);
	e->fault = bpf_probe_read_user(e->addr, len & 31, (void *)ctx->args[1]) < 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
