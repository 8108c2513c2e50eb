/* krgen: bounded, optionally rate-limited load generator for the kestrel-raw benchmark.
 *
 *   krgen MODE [--ops N] [--rate R] [--max-seconds S] [--path P] [--port PORT] [--stamps FILE]
 *
 * MODE open:    openat(AT_FDCWD, P, O_RDONLY) + close, N times (P must exist unless --stamps is given).
 *      openlat: openat of "P<seq>" (need not exist), with CLOCK_MONOTONIC read right before each
 *               openat and written as "seq ns" lines to --stamps FILE at the end.
 *      exec:    fork + execv("/bin/true") + waitpid, N times.
 *      connect: socket(AF_INET, SOCK_STREAM) + connect(127.0.0.1:PORT) + close, N times; PORT is a closed
 *               loopback port, so every connect is refused at once.  Nothing leaves the machine.
 *
 * Stops after N operations or S seconds (default 60), whichever comes first.  With --rate R the i-th
 * operation is not started before start + i/R (absolute deadlines, so sleeping late never lowers the
 * mean rate).  At the end one JSON object goes to stdout:
 *   {"mode":..,"pid":..,"ops":..,"errors":..,"elapsed_ns":..,"start_mono_ns":..,"end_mono_ns":..}
 * "errors" counts operations whose syscall failed (for connect: anything but ECONNREFUSED).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = t / 1000000000ull, .tv_nsec = t % 1000000000ull };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void usage(void)
{
	fprintf(stderr, "usage: krgen open|openlat|exec|connect [--ops N] [--rate R] [--max-seconds S] "
			"[--path P] [--port PORT] [--stamps FILE]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *mode = argv[1];
	long long ops = 1000;
	double rate = 0, max_seconds = 60;
	const char *path = "/dev/null", *stamps_path = NULL;
	int port = 0;
	for (int i = 2; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--ops"))
			ops = atoll(argv[++i]);
		else if (!strcmp(argv[i], "--rate"))
			rate = atof(argv[++i]);
		else if (!strcmp(argv[i], "--max-seconds"))
			max_seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--path"))
			path = argv[++i];
		else if (!strcmp(argv[i], "--port"))
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--stamps"))
			stamps_path = argv[++i];
		else
			usage();
	}
	int m_open = !strcmp(mode, "open"), m_lat = !strcmp(mode, "openlat");
	int m_exec = !strcmp(mode, "exec"), m_conn = !strcmp(mode, "connect");
	if (!(m_open || m_lat || m_exec || m_conn) || ops <= 0 || max_seconds <= 0 || rate < 0)
		usage();
	if (m_conn && (port <= 0 || port > 65535)) {
		fprintf(stderr, "krgen: connect needs --port, a closed port on 127.0.0.1\n");
		return 2;
	}
	if (m_lat && !stamps_path) {
		fprintf(stderr, "krgen: openlat needs --stamps FILE\n");
		return 2;
	}
	uint64_t *stamps = NULL;
	if (m_lat && !(stamps = calloc((size_t)ops, sizeof(*stamps)))) {
		fprintf(stderr, "krgen: cannot allocate %lld stamps\n", ops);
		return 1;
	}
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	char pbuf[4096];

	uint64_t start = mono_ns(), deadline = start + (uint64_t)(max_seconds * 1e9), now = start;
	long long done = 0, errors = 0;
	for (; done < ops; done++) {
		if (rate > 0) {
			uint64_t due = start + (uint64_t)((double)done * 1e9 / rate);
			if (due > now)
				sleep_until(due);
		}
		if ((done & 63) == 0 || rate > 0) {
			now = mono_ns();
			if (now >= deadline)
				break;
		}
		if (m_open) {
			int fd = openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				errors++;
			else
				close(fd);
		} else if (m_lat) {
			snprintf(pbuf, sizeof(pbuf), "%s%lld", path, done);
			stamps[done] = mono_ns();
			int fd = openat(AT_FDCWD, pbuf, O_RDONLY | O_CLOEXEC);
			if (fd >= 0)
				close(fd);
		} else if (m_exec) {
			pid_t child = fork();
			if (child == 0) {
				char *const args[] = { "true", NULL };
				execv("/bin/true", args);
				_exit(127);
			}
			int status = 0;
			if (child < 0 || waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
			    WEXITSTATUS(status) != 0)
				errors++;
		} else {
			int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (s < 0) {
				errors++;
				continue;
			}
			if (connect(s, (struct sockaddr *)&sin, sizeof(sin)) == 0 || errno != ECONNREFUSED)
				errors++;
			close(s);
		}
	}
	uint64_t end = mono_ns();
	if (m_lat) {
		FILE *f = fopen(stamps_path, "w");
		if (!f) {
			fprintf(stderr, "krgen: cannot write %s: %s\n", stamps_path, strerror(errno));
			return 1;
		}
		for (long long i = 0; i < done; i++)
			fprintf(f, "%lld %llu\n", i, (unsigned long long)stamps[i]);
		fclose(f);
	}
	printf("{\"mode\":\"%s\",\"pid\":%d,\"ops\":%lld,\"errors\":%lld,\"elapsed_ns\":%llu,"
	       "\"start_mono_ns\":%llu,\"end_mono_ns\":%llu}\n",
	       mode, (int)getpid(), done, errors, (unsigned long long)(end - start), (unsigned long long)start,
	       (unsigned long long)end);
	return 0;
}
