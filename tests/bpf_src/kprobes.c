// kprobe, kretprobe and fentry on do_sys_openat2 (in Debian's 6.1 and 6.12 and this host's kernel), counting
// calls per tgid in a hash map (key tgid << 2 | which probe); the kretprobe also keeps the last return value
// (the fd opened) and the kprobe what a typed __ksym holds: this CPU's bpf_prog_active (by BTF id; 1 while
// a kprobe program runs). Loaded and attached in the qemu guests: this host has neither kprobes nor
// trampolines (nor CONFIG_KALLSYMS_ALL, which a typed data __ksym needs).
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#if defined(__TARGET_ARCH_arm64)
// bpf_tracing.h reads arm64 registers through the uapi struct user_pt_regs, whose header (asm/ptrace.h
// for arm64) a host of another architecture does not have: its layout, from arch/arm64's uapi ptrace.h.
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);                    // tgid << 2 | which probe (0 kprobe, 1 kretprobe, 2 fentry)
	__type(value, __u64);
	__uint(max_entries, 4096);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __s64);
	__uint(max_entries, 1024);
} last_fd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __s64);
	__uint(max_entries, 1024);
} prog_active SEC(".maps");

extern const int bpf_prog_active __ksym;

static __attribute__((noinline)) int count(__u32 which)
{
	__u32 key = (bpf_get_current_pid_tgid() >> 32) << 2 | which;
	__u64 one = 1, *n = bpf_map_lookup_elem(&hits, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&hits, &key, &one, BPF_NOEXIST);
	return 0;
}

SEC("kprobe/do_sys_openat2")
int openat2_entry(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	const int *active = bpf_this_cpu_ptr(&bpf_prog_active);
	__s64 value = *active;

	bpf_map_update_elem(&prog_active, &tgid, &value, BPF_ANY);
	return count(0);
}

SEC("kretprobe/do_sys_openat2")
int openat2_exit(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__s64 fd = PT_REGS_RC(ctx);

	bpf_map_update_elem(&last_fd, &tgid, &fd, BPF_ANY);
	return count(1);
}

SEC("fentry/do_sys_openat2")
int openat2_fentry(void *ctx)
{
	return count(2);
}

char LICENSE[] SEC("license") = "GPL";
