// Map definitions both ways: BTF-defined maps in .maps (sizes from __uint or from the key/value types,
// map_flags, pinning, which the loader ignores with a note) and a legacy struct bpf_map_def in "maps".
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_map_def {                    // the legacy layout (libbpf 1.0 dropped it; some objects still have it)
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

struct key { __u32 pid; __u32 cpu; };
struct value { __u64 count; char comm[16]; };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct key);
	__type(value, struct value);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} by_key SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, 4);
	__uint(value_size, 8);
	__uint(max_entries, 2);
#ifndef NO_PINNING               // libbpf would pin it in /sys/fs/bpf: its cross-check builds without it
	__uint(pinning, LIBBPF_PIN_BY_NAME);
#endif
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} ring SEC(".maps");

#ifndef NO_LEGACY_MAPS          // libbpf 1.x refuses the "maps" section: its cross-check builds without it
struct bpf_map_def SEC("maps") legacy_hash = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 64,
};

struct bpf_map_def SEC("maps") legacy_array = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = 4,
	.value_size = 16,
	.max_entries = 8,
	.map_flags = 0,
};
#endif

SEC("tracepoint/syscalls/sys_enter_getppid")
int use_maps(void *ctx)
{
	struct key k = { .pid = bpf_get_current_pid_tgid() >> 32, .cpu = bpf_get_smp_processor_id() };
	struct value zero = {}, *v;
	__u32 slot = 0;
	__u64 *c, one = 1;

	v = bpf_map_lookup_elem(&by_key, &k);
	if (!v) {
		bpf_map_update_elem(&by_key, &k, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&by_key, &k);
		if (!v)
			return 0;
	}
	v->count++;
	c = bpf_map_lookup_elem(&counters, &slot);
	if (c)
		(*c)++;
#ifndef NO_LEGACY_MAPS
	bpf_map_update_elem(&legacy_hash, &k.pid, &one, BPF_ANY);
	bpf_map_lookup_elem(&legacy_array, &slot);
#endif
	bpf_ringbuf_output(&ring, &k, sizeof(k), 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
__u32 _version SEC("version") = 0x060100;
