// Global data: .rodata (a const volatile the loader may set before load), .data, .bss and string literals
// (.rodata.str1.1), each an array map of one element whose value is the section; programs reach them through
// ld_imm64 BPF_PSEUDO_MAP_VALUE with the variable's offset.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile __u32 target_tgid = 0;           // .rodata
const volatile __u64 scale = 3;                 // .rodata
__u64 calls = 7;                                // .data
__u64 last_seen[4] = {1, 2, 3, 4};              // .data
__u64 hits;                                     // .bss
__u32 zeros[8];                                 // .bss
static volatile __u32 internal_counter;        // .bss, static: referenced through the section symbol

SEC("tp/syscalls/sys_enter_getpid")
int count_getpid(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (target_tgid && tgid != target_tgid)
		return 0;
	__sync_fetch_and_add(&calls, 1);
	hits += scale;
	last_seen[hits & 3] = tgid;
	zeros[tgid & 7] = 1;
	internal_counter++;
	bpf_printk("getpid from %u", tgid);
	bpf_trace_printk("tgid %u\n", 9, tgid);    // a literal passed as is: clang puts it in .rodata.str1.1
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
