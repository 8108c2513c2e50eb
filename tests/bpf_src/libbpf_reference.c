// Test-only reference: how libbpf itself relocates and links a BPF object. Built on the host by the tests
// (cc ... -lbpf) and run as root: it opens OBJECT (CO-RE against BTF when given, else the running kernel's),
// loads it, and prints what libbpf passed to the kernel, so that kestrel_raw.bpfobj can be compared with it
// instruction by instruction.
//   libbpf_reference OBJECT [BTF]
// stdout: "map NAME FD" for every map libbpf created, "prog NAME HEX" with each program's final instructions
// (printed even when the kernel refused the program: relocation happens before loading).
// stderr: libbpf's debug log (its CO-RE lines: "prog 'p': relo #3: patched insn #7 (LDX/ST/STX) off 8 -> 16").
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <bpf/libbpf.h>

static int print_all(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char line[4096], name[256];
	int fd;
	vsnprintf(line, sizeof(line), fmt, args);
	// libbpf logs each map's fd as it creates it; the fds go away again if a program then fails to load.
	if (sscanf(line, "libbpf: map '%255[^']': created successfully, fd=%d", name, &fd) == 2)
		printf("map %s %d\n", name, fd);
	fputs(line, stderr);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s OBJECT [BTF]\n", argv[0]);
		return 2;
	}
	libbpf_set_print(print_all);
	LIBBPF_OPTS(bpf_object_open_opts, opts, .btf_custom_path = argc == 3 ? argv[2] : NULL);
	struct bpf_object *obj = bpf_object__open_file(argv[1], &opts);
	if (!obj) {
		fprintf(stderr, "libbpf_reference: cannot open %s\n", argv[1]);
		return 1;
	}
	int err = bpf_object__load(obj);
	struct bpf_program *prog;
	bpf_object__for_each_program(prog, obj) {
		const unsigned char *insns = (const void *)bpf_program__insns(prog);
		size_t n = bpf_program__insn_cnt(prog) * sizeof(struct bpf_insn);
		printf("prog %s ", bpf_program__name(prog));
		for (size_t i = 0; i < n; i++)
			printf("%02x", insns[i]);
		printf("\n");
	}
	printf("load %d\n", err);
	fflush(stdout);
	bpf_object__close(obj);
	return 0;
}
