// CO-RE reads of task_struct and mm_struct fields, with local type definitions (no vmlinux.h): clang records a
// relocation for every access below, and the loader fills in the running kernel's offsets. The offsets of
// pid, tgid, real_parent, comm, mm and mm->arg_start differ between Debian's 6.1 and this host's kernel.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct mm_struct {
	unsigned long arg_start;               // inside an anonymous struct in the kernel's mm_struct
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int flags;
	int prio;
	int pid;
	int tgid;
	int exit_code;
	unsigned int in_execve:1;               // a bitfield: the probed read uses five relocations
	struct task_struct *real_parent;
	struct mm_struct *mm;
	char comm[16];
} __attribute__((preserve_access_index));

// A flavour: the name before "___" is what the kernel's BTF is searched for. 'state' was renamed
// '__state' in 5.14, so it exists on neither kernel and its read is poisoned (dead code, guarded).
struct task_struct___old {
	long state;
} __attribute__((preserve_access_index));

struct task_struct___new {
	unsigned int __state;
} __attribute__((preserve_access_index));

enum pid_type { PIDTYPE_PID, PIDTYPE_TGID, PIDTYPE_PGID };

struct sample {
	__u32 flags;
	__s32 prio, pid, tgid, ppid;
	__u64 arg_start;
	__u32 in_execve;
	__u32 state;
	__u32 sizes[4];
	__u64 exists;
	__u64 type_ids[2];
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} core_events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int core_read_task(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct sample *s = bpf_ringbuf_reserve(&core_events, sizeof(*s), 0);
	if (!s)
		return 0;
	s->flags = BPF_CORE_READ(task, flags);
	s->prio = BPF_CORE_READ(task, prio);
	s->pid = BPF_CORE_READ(task, pid);
	s->tgid = BPF_CORE_READ(task, tgid);
	s->ppid = BPF_CORE_READ(task, real_parent, tgid);
	s->arg_start = BPF_CORE_READ(task, mm, arg_start);
	s->in_execve = BPF_CORE_READ_BITFIELD_PROBED(task, in_execve);
	if (bpf_core_field_exists(((struct task_struct___old *)task)->state))
		s->state = BPF_CORE_READ((struct task_struct___old *)task, state);
	else
		s->state = BPF_CORE_READ((struct task_struct___new *)task, __state);
	s->sizes[0] = bpf_core_field_size(task->comm);
	s->sizes[1] = bpf_core_field_size(task->exit_code);
	s->sizes[2] = bpf_core_type_size(struct mm_struct);
	s->sizes[3] = bpf_core_field_offset(task->comm);
	s->exists = bpf_core_type_exists(struct task_struct) | bpf_core_enum_value_exists(enum pid_type, PIDTYPE_TGID) << 1
		| bpf_core_field_exists(task->exit_code) << 2 | (__u64)bpf_core_enum_value(enum pid_type, PIDTYPE_PGID) << 8;
	s->type_ids[0] = bpf_core_type_id_local(struct task_struct);
	s->type_ids[1] = bpf_core_type_id_kernel(struct task_struct);
	BPF_CORE_READ_STR_INTO(&s->comm, task, comm);
	bpf_ringbuf_submit(s, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
