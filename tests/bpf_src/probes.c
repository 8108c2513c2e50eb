// Externs and uprobes: __kconfig values (the kernel's version, config options as bool, tristate, int and
// string, a weak one the config lacks) and a typeless __ksym (an address from kallsyms), written where the
// test reads them (.bss) by a tracepoint program (a typed __ksym is in kprobes.c: the kernel finds a data
// symbol's address only with CONFIG_KALLSYMS_ALL, which this host lacks and Debian has); and a
// uprobe and a uretprobe on libc's getpid, counting this process's calls and keeping what getpid returned.
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


extern int LINUX_KERNEL_VERSION __kconfig;
extern _Bool CONFIG_BPF_SYSCALL __kconfig;
extern enum libbpf_tristate CONFIG_BPF_EVENTS __kconfig __weak;
extern int CONFIG_HZ __kconfig __weak;
extern char CONFIG_DEFAULT_HOSTNAME[16] __kconfig __weak;
extern int CONFIG_KESTREL_NEVER_SET __kconfig __weak;
extern const void _stext __ksym;               // typeless: its address (kallsyms: text symbols everywhere)

struct facts {
	__u64 version;
	__u64 bpf_syscall;
	__u64 bpf_events;
	__u64 hz;
	__u64 never;
	__u64 fops;
	char hostname[16];
};

struct facts facts;                            // .bss

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1024);
} getpid_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1024);
} getpid_returned SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int read_externs(void *ctx)
{
	facts.version = LINUX_KERNEL_VERSION;
	facts.bpf_syscall = CONFIG_BPF_SYSCALL;
	facts.bpf_events = CONFIG_BPF_EVENTS;
	facts.hz = CONFIG_HZ;
	facts.never = CONFIG_KESTREL_NEVER_SET;
	facts.fops = (__u64)&_stext;
	__builtin_memcpy(facts.hostname, CONFIG_DEFAULT_HOSTNAME, sizeof(facts.hostname));
	return 0;
}

SEC("uprobe/libc.so.6:getpid")
int getpid_entry(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 one = 1, *n = bpf_map_lookup_elem(&getpid_calls, &tgid);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&getpid_calls, &tgid, &one, BPF_NOEXIST);
	return 0;
}

SEC("uretprobe/libc.so.6:getpid")
int getpid_exit(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 ret = PT_REGS_RC(ctx);

	bpf_map_update_elem(&getpid_returned, &tgid, &ret, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
