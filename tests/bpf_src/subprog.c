// bpf-to-bpf calls: a global and a static function in .text, a nested call, two programs sharing a subprogram,
// and a static function in the program's own section (called without a relocation).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} results SEC(".maps");

static __attribute__((noinline)) __u64 mix(__u64 x)
{
	return x * 31 + 7;
}

__attribute__((noinline)) int record(__u32 slot, __u64 value)
{
	__u64 *v = bpf_map_lookup_elem(&results, &slot);
	if (!v)
		return 0;
	*v = mix(value);
	return 1;
}

static __attribute__((noinline)) __u64 twice(__u64 x)
{
	return mix(x) + mix(x + 1);
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int first(void *ctx)
{
	return record(0, bpf_get_current_pid_tgid());
}

SEC("raw_tracepoint/sys_enter")
int second(void *ctx)
{
	return record(1, twice(bpf_ktime_get_ns()));
}

SEC("tp_btf/sched_process_exit")
int third(void *ctx)
{
	return twice(3) > 0;
}

char LICENSE[] SEC("license") = "GPL";
