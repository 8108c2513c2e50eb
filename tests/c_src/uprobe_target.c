// A program whose function the uprobe tests probe: kr_square(x) = x * x + 1 for each number read from stdin,
// its result printed.  Exported (-rdynamic) so that a copy linked with -s, which has no .symtab, still names
// it in .dynsym.  noinline: the call must reach the function's first instruction, where the uprobe is.
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline, visibility("default"))) long kr_square(long x)
{
	__asm__ volatile("" ::: "memory");	// keeps the call (and the function) from being folded away
	return x * x + 1;
}

int main(void)
{
	char line[64];

	setvbuf(stdout, NULL, _IOLBF, 0);
	puts("ready");
	while (fgets(line, sizeof line, stdin))
		printf("%ld\n", kr_square(atol(line)));
	return 0;
}
