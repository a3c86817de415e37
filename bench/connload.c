/* connload.c — short TCP connections at a rate a Python loop cannot reach (scenario 7).
 *
 *   connload server PORT
 *       accept, read the request, answer a small HTTP response, close (the server
 *       closes first); epoll, non-blocking, any number of connections at once.
 *       Prints "ready" once listening; runs until killed.
 *   connload client FIRST_VIP COUNT PORT SECONDS WARMUP CONCURRENCY [SERVER_PID]
 *       CONCURRENCY connections in flight at all times, each to a ClusterIP drawn
 *       uniformly from COUNT contiguous addresses starting at FIRST_VIP: connect,
 *       send `GET / HTTP/1.1` with `Connection: close`, read to EOF, close with
 *       SO_LINGER 0 (RST: no TIME_WAIT piles up), open the next. The request and
 *       response are those of bench/tcpload.py (scenario 3).
 *       Prints one JSON object about the measured window (after WARMUP seconds):
 *       connections completed, errors, elapsed, latency p50/p99 (connect to EOF),
 *       this process's CPU (getrusage), the server's (/proc/SERVER_PID/stat) and the
 *       machine's busy and softirq time (/proc/stat: every core, every process).
 *
 * Build: cc -O2 -o connload connload.c (bench/bench_socklb.py does it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

#define TIMEOUT_NS 1000000000ULL   /* a connection not done in 1 s is an error */
#define MAX_CONC 4096

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* ---- server ------------------------------------------------------------------ */

static _Noreturn void server(int port)
{
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (ls < 0)
		die("socket");
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind");
	if (listen(ls, 4096) < 0)
		die("listen");
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls };
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	printf("ready\n");
	fflush(stdout);
	struct epoll_event evs[256];
	char buf[4096];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				int c;
				while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					struct epoll_event ce = { .events = EPOLLIN, .data.fd = c };
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r < 0 && errno == EAGAIN)
				continue;
			if (r > 0 && write(fd, RESPONSE, sizeof(RESPONSE) - 1) < 0) {
				/* the client is gone: nothing to do but close */
			}
			close(fd);   /* also takes it out of the epoll set */
		}
	}
}

/* ---- client ------------------------------------------------------------------ */

struct conn {
	int fd;
	int sent;
	uint64_t start;
};

static struct conn conns[MAX_CONC];
static uint32_t rng_state = 1;

static uint32_t rng(void)
{
	/* xorshift32: cheap, and the same draw sequence for every side */
	uint32_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return rng_state = x;
}

static double busy_s(double *softirq)
{
	/* /proc/stat first line: user nice system idle iowait irq softirq steal */
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "r");
	if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
			 &v[4], &v[5], &v[6], &v[7]) != 8)
		die("/proc/stat");
	fclose(f);
	double hz = (double)sysconf(_SC_CLK_TCK);
	*softirq = v[6] / hz;
	return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz;
}

static double self_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double proc_cpu_s(int pid)
{
	/* utime and stime: fields 14 and 15 of /proc/PID/stat, after the ")" of comm */
	if (pid <= 0)
		return 0;
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	unsigned long long ut, st;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int ep;
static uint64_t opened;   /* connect() calls over the whole run, warm-up included */
static uint32_t first_vip, vip_count;
static uint16_t port_be;
static const struct linger rst = { .l_onoff = 1, .l_linger = 0 };

/* Open connection slot i; 0 on success, -1 if connect() failed at once (counted as an
 * error by the caller; the slot is retried on the next loop). */
static int open_conn(int i, uint64_t t)
{
	struct conn *c = &conns[i];
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (c->fd < 0)
		die("socket");
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = port_be };
	a.sin_addr.s_addr = htonl(first_vip + (vip_count > 1 ? rng() % vip_count : 0));
	c->sent = 0;
	c->start = t;
	opened++;
	if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = i };
	epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
	return 0;
}

static void close_conn(int i)
{
	close(conns[i].fd);
	conns[i].fd = -1;
}

static int client(const char *vip, uint32_t count, int port, double seconds, double warmup, int conc,
		  int server_pid)
{
	struct in_addr in;
	if (inet_pton(AF_INET, vip, &in) != 1 || count == 0 || conc < 1 || conc > MAX_CONC) {
		fprintf(stderr, "connload: bad arguments\n");
		return 2;
	}
	first_vip = ntohl(in.s_addr);
	vip_count = count;
	port_be = htons(port);
	ep = epoll_create1(0);
	size_t cap = 1 << 20, nlat = 0;
	uint32_t *lat = malloc(cap * sizeof(*lat));
	if (!lat)
		die("malloc");
	uint64_t errors = 0, done = 0, t = now_ns();
	uint64_t measure_from = t + (uint64_t)(warmup * 1e9), end = measure_from + (uint64_t)(seconds * 1e9);
	int measuring = 0;
	double busy0 = 0, soft0 = 0, self0 = 0, srv0 = 0;
	uint64_t m0 = 0;
	for (int i = 0; i < conc; i++)
		conns[i].fd = -1;
	struct epoll_event evs[MAX_CONC];
	char buf[4096];
	while (t < end) {
		if (!measuring && t >= measure_from) {
			measuring = 1;
			m0 = t;
			busy0 = busy_s(&soft0);
			self0 = self_cpu_s();
			srv0 = proc_cpu_s(server_pid);
			errors = done = nlat = 0;
		}
		for (int i = 0; i < conc; i++) {
			if (conns[i].fd >= 0 && t - conns[i].start > TIMEOUT_NS) {
				close_conn(i);
				errors++;
			}
			if (conns[i].fd < 0 && open_conn(i, t) < 0)
				errors++;
		}
		int n = epoll_wait(ep, evs, MAX_CONC, 10);
		t = now_ns();
		for (int k = 0; k < n; k++) {
			int i = evs[k].data.u32;
			struct conn *c = &conns[i];
			if (c->fd < 0)
				continue;
			if (!c->sent) {
				int err = 0;
				socklen_t len = sizeof(err);
				getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
				if (err || write(c->fd, REQUEST, sizeof(REQUEST) - 1) < 0) {
					close_conn(i);
					errors++;
					continue;
				}
				c->sent = 1;
				struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
				continue;
			}
			ssize_t r;
			while ((r = read(c->fd, buf, sizeof(buf))) > 0)
				;
			if (r < 0 && errno == EAGAIN)
				continue;
			uint64_t took = t - c->start;
			close_conn(i);
			if (r < 0) {
				errors++;
				continue;
			}
			done++;
			if (nlat < cap)
				lat[nlat++] = (uint32_t)(took / 1000);
			if (t < end && open_conn(i, t) < 0)
				errors++;
		}
	}
	double soft1, busy1 = busy_s(&soft1), self1 = self_cpu_s(), srv1 = proc_cpu_s(server_pid);
	double elapsed = (t - m0) / 1e9;
	qsort(lat, nlat, sizeof(*lat), cmp_u32);
	printf("{\"connections\": %llu, \"errors\": %llu, \"elapsed_s\": %.6f, \"concurrency\": %d, "
	       "\"busy_s\": %.3f, \"softirq_s\": %.3f, \"client_cpu_s\": %.4f, \"server_cpu_s\": %.3f, "
	       "\"lat_p50_us\": %u, \"lat_p99_us\": %u, \"opened_total\": %llu}\n",
	       (unsigned long long)done, (unsigned long long)errors, elapsed, conc, busy1 - busy0,
	       soft1 - soft0, self1 - self0, server_pid > 0 && srv0 >= 0 && srv1 >= 0 ? srv1 - srv0 : -1.0,
	       nlat ? lat[nlat / 2] : 0, nlat ? lat[(size_t)(0.99 * (nlat - 1))] : 0, (unsigned long long)opened);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server"))
		server(atoi(argv[2]));
	if ((argc == 8 || argc == 9) && !strcmp(argv[1], "client"))
		return client(argv[2], (uint32_t)strtoul(argv[3], NULL, 10), atoi(argv[4]), atof(argv[5]),
			      atof(argv[6]), atoi(argv[7]), argc == 9 ? atoi(argv[8]) : 0);
	fprintf(stderr, "usage: connload server PORT\n"
			"       connload client FIRST_VIP COUNT PORT SECONDS WARMUP CONCURRENCY [SERVER_PID]\n");
	return 2;
}
