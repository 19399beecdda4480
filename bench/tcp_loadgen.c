/*
 * tcp_loadgen: a one-core TCP load generator for bench/tcp_echo.py.
 *
 * epoll, non-blocking sockets, no threads. It connects to 127.0.0.1 only
 * (any other address is refused), and every loop ends by time or by byte
 * count. Built on the fly by tcp_echo.py with `gcc -O2`.
 *
 *   tcp_loadgen pingpong HOST PORT CONNS SECONDS MSGSIZE [WARMUP [SERVER_PID [RATE]]]
 *       CONNS connections; each sends one MSGSIZE-byte line (MSGSIZE - 1
 *       payload bytes, then '\n'), waits for the whole line to come back,
 *       checks it, records the round trip's latency and sends the next.
 *       The first WARMUP seconds (default 1, may be 0) are not counted. Then
 *       SECONDS are measured. With RATE > 0 (round trips/s, all connections
 *       together) each connection sends its next line no sooner than
 *       CONNS / RATE seconds after its previous one: an offered load below
 *       the server's maximum, the same for every server. Paced, it polls
 *       (epoll_wait with a 0 ms timeout when a line is due within 1 ms).
 *
 *   tcp_loadgen stream HOST PORT BYTES [SERVER_PID]
 *       One connection: send BYTES of raw bytes (a fixed pattern, no line
 *       ends needed) while reading the echo back, and check it; done when
 *       all BYTES are back. Gives up after 300 s.
 *
 * Output: one machine-readable line on stdout at the end, key=value pairs:
 *   pingpong: roundtrips seconds rps p50_us p90_us p99_us p999_us max_us
 *             cpu_user cpu_sys [server_cpu_user server_cpu_sys] host_busy series
 *   stream:   bytes seconds mbps cpu_user cpu_sys [server_cpu_user server_cpu_sys] host_busy
 * cpu_* is this process's CPU time (getrusage) over the measured interval,
 * in seconds. With SERVER_PID, server_cpu_* is that process's utime/stime
 * (from /proc/PID/stat, all threads) over the same interval. host_busy is the
 * busy time of every CPU together (/proc/stat: all but idle and iowait), in
 * seconds, over the same interval: with the two above it shows how much CPU
 * other programs took meanwhile. series is the
 * round trips completed in each 250 ms slice of the measured interval.
 * mbps is 10^6 bytes per second. Errors go to stderr with exit status 1.
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

#define LOADGEN_NAME "tcp_loadgen"
#include "loadgen.h"

#define MAX_CONNS 4096
#define MAX_MSG 65536
#define SLICE_NS 250000000LL
#define MAX_SLICES 4096
#define STREAM_CHUNK (256 * 1024)
#define STREAM_TIMEOUT_NS (300LL * 1000000000LL)
#define PATTERN_MOD 251

/* A blocking connect (setup only), then non-blocking with TCP_NODELAY. */
static int open_conn(const struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) die("connect");
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) die("O_NONBLOCK");
    return fd;
}

/* ---------------------------------------------------------------- pingpong */

struct conn {
    int fd;
    size_t sent; /* bytes of the current line written */
    size_t got;  /* bytes of its echo read */
    int64_t t0;  /* when the line's first byte was written */
    int64_t due; /* paced: when the next line may go; 0 = not waiting */
    char in[MAX_MSG];
};

static uint32_t *lat;  /* latencies of the measured round trips, ns (capped) */
static size_t nlat, caplat;

static void record(int64_t ns) {
    if (nlat == caplat) {
        caplat = caplat ? 2 * caplat : 1 << 20;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) fail("out of memory");
    }
    lat[nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
    return lat[i] / 1000.0;
}

/* Write the rest of c's line; returns 0 when it has all gone. */
static int push(struct conn *c, const char *line, size_t size) {
    while (c->sent < size) {
        ssize_t n = send(c->fd, line + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 1;
            if (errno == EINTR) continue;
            die("send");
        }
        c->sent += (size_t)n;
    }
    return 0;
}

static int pingpong(int argc, char **argv) {
    if (argc < 7 || argc > 10)
        fail("usage: pingpong HOST PORT CONNS SECONDS MSGSIZE [WARMUP [SERVER_PID [RATE]]]");
    struct sockaddr_in sa = loopback(argv[2], parse_long(argv[3], "port", 1, 65535));
    int nconns = (int)parse_long(argv[4], "conns", 1, MAX_CONNS);
    double seconds = parse_double(argv[5], "seconds");
    size_t size = (size_t)parse_long(argv[6], "msgsize", 2, MAX_MSG);
    double warmup = argc > 7 ? parse_double(argv[7], "warmup") : 1.0;
    long server = argc > 8 ? parse_long(argv[8], "server pid", 0, 1L << 30) : 0;
    double rate = argc > 9 ? (double)parse_long(argv[9], "rate", 0, 100000000) : 0.0;
    int64_t interval = rate > 0 ? (int64_t)(1e9 * nconns / rate) : 0;
    if (seconds <= 0) fail("seconds must be > 0");

    char *line = malloc(size);
    if (!line) fail("out of memory");
    for (size_t i = 0; i + 1 < size; i++) line[i] = (char)('a' + i % 26);
    line[size - 1] = '\n';

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns) fail("out of memory");
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = open_conn(&sa);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) != 0) die("epoll_ctl");
    }

    int64_t start = now_ns();
    int64_t measure = start + (int64_t)(warmup * 1e9);
    int64_t deadline = measure + (int64_t)(seconds * 1e9);
    int measuring = warmup <= 0;
    struct cpu c0 = self_cpu(), s0 = proc_cpu(server);
    double h0 = host_busy();
    if (measuring) measure = start;
    long nslices = (long)((deadline - measure + SLICE_NS - 1) / SLICE_NS);
    if (nslices > MAX_SLICES) nslices = MAX_SLICES;
    long *slices = calloc((size_t)nslices, sizeof *slices);
    if (!slices) fail("out of memory");

    for (int i = 0; i < nconns; i++) {
        conns[i].t0 = now_ns();
        if (push(&conns[i], line, size)) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = &conns[i]};
            if (epoll_ctl(ep, EPOLL_CTL_MOD, conns[i].fd, &ev) != 0) die("epoll_ctl");
        }
    }

    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns();
        if (!measuring && t >= measure) {
            measuring = 1;
            nlat = 0;
            c0 = self_cpu();
            s0 = proc_cpu(server);
            h0 = host_busy();
        }
        if (t >= deadline) break;
        int timeout_ms = (int)((deadline - t) / 1000000) + 1;
        if (!measuring && (measure - t) / 1000000 + 1 < timeout_ms) timeout_ms = (int)((measure - t) / 1000000) + 1;
        if (interval) {
            /* Paced: send the lines that are due; wake for the next one. */
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (!c->due) continue;
                if (c->due <= t) {
                    c->due = 0;
                    c->t0 = now_ns();
                    if (push(c, line, size)) {
                        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl");
                    }
                } else if ((c->due - t) / 1000000 < timeout_ms) {
                    timeout_ms = (int)((c->due - t) / 1000000);
                }
            }
        }
        int n = epoll_wait(ep, evs, 256, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (evs[k].events & EPOLLOUT) {
                if (!push(c, line, size)) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl");
                }
            }
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            for (;;) {
                ssize_t r = recv(c->fd, c->in + c->got, size - c->got, 0);
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    if (errno == EINTR) continue;
                    die("recv");
                }
                if (r == 0) fail("the server closed a connection");
                c->got += (size_t)r;
                if (c->got < size) continue;
                if (c->sent != size) fail("echo before the whole line was sent");
                if (memcmp(c->in, line, size) != 0) fail("the echo differs from the line sent");
                int64_t done = now_ns();
                if (measuring && done < deadline) {
                    record(done - c->t0);
                    long s = (long)((done - measure) / SLICE_NS);
                    if (s < nslices) slices[s]++;
                }
                c->got = 0;
                c->sent = 0;
                if (interval) {
                    /* The next line leaves one interval after this one did. */
                    c->due = c->t0 + interval > done ? c->t0 + interval : done;
                    break;
                }
                c->t0 = done;
                if (push(c, line, size)) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl");
                }
                break; /* one line in flight: nothing more to read now */
            }
        }
    }
    int64_t end = now_ns();
    struct cpu c1 = self_cpu(), s1 = proc_cpu(server);
    double h1 = host_busy();
    for (int i = 0; i < nconns; i++) close(conns[i].fd);

    double secs = (double)(end - measure) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    printf("roundtrips=%zu seconds=%.4f rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f "
           "max_us=%.1f cpu_user=%.4f cpu_sys=%.4f",
           nlat, secs, (double)nlat / secs, pct_us(0.5), pct_us(0.9), pct_us(0.99), pct_us(0.999),
           nlat ? lat[nlat - 1] / 1000.0 : 0.0, c1.user - c0.user, c1.sys - c0.sys);
    if (server) printf(" server_cpu_user=%.4f server_cpu_sys=%.4f", s1.user - s0.user, s1.sys - s0.sys);
    printf(" host_busy=%.2f series=", h1 - h0);
    for (long s = 0; s < nslices; s++) printf("%s%ld", s ? "," : "", slices[s]);
    printf("\n");
    return 0;
}

/* ------------------------------------------------------------------ stream */

static int stream(int argc, char **argv) {
    if (argc < 5 || argc > 6) fail("usage: stream HOST PORT BYTES [SERVER_PID]");
    struct sockaddr_in sa = loopback(argv[2], parse_long(argv[3], "port", 1, 65535));
    long long total = parse_long(argv[4], "bytes", 1, 1L << 40);
    long server = argc > 5 ? parse_long(argv[5], "server pid", 1, 1L << 30) : 0;

    /* Byte i of the stream is i % PATTERN_MOD: the stream from offset o is pat + o % MOD. */
    unsigned char *pat = malloc(STREAM_CHUNK + PATTERN_MOD);
    unsigned char *in = malloc(STREAM_CHUNK);
    if (!pat || !in) fail("out of memory");
    for (int i = 0; i < STREAM_CHUNK + PATTERN_MOD; i++) pat[i] = (unsigned char)(i % PATTERN_MOD);

    int fd = open_conn(&sa);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");

    long long sent = 0, got = 0;
    int writing = 1;
    struct cpu c0 = self_cpu(), s0 = proc_cpu(server);
    double h0 = host_busy();
    int64_t start = now_ns();
    while (got < total) {
        if (now_ns() - start > STREAM_TIMEOUT_NS) fail("stream timed out");
        struct epoll_event e;
        int n = epoll_wait(ep, &e, 1, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        if (n == 0) continue;
        if (e.events & EPOLLOUT) {
            while (sent < total) {
                size_t want = total - sent < STREAM_CHUNK ? (size_t)(total - sent) : STREAM_CHUNK;
                ssize_t w = send(fd, pat + sent % PATTERN_MOD, want, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN) break;
                    if (errno == EINTR) continue;
                    die("send");
                }
                sent += w;
            }
            if (sent == total && writing) {
                writing = 0;
                struct epoll_event ev2 = {.events = EPOLLIN, .data.fd = fd};
                if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev2) != 0) die("epoll_ctl");
            }
        }
        if (e.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            for (;;) {
                ssize_t r = recv(fd, in, STREAM_CHUNK, 0);
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    if (errno == EINTR) continue;
                    die("recv");
                }
                if (r == 0) fail("the server closed the connection");
                if (got + r > sent) fail("more came back than was sent");
                if (memcmp(in, pat + got % PATTERN_MOD, (size_t)r) != 0) fail("the echo differs from the stream sent");
                got += r;
                if (got == total) break;
            }
        }
    }
    int64_t end = now_ns();
    struct cpu c1 = self_cpu(), s1 = proc_cpu(server);
    double h1 = host_busy();
    close(fd);
    double secs = (double)(end - start) / 1e9;
    printf("bytes=%lld seconds=%.4f mbps=%.1f cpu_user=%.4f cpu_sys=%.4f", got, secs, (double)got / secs / 1e6,
           c1.user - c0.user, c1.sys - c0.sys);
    if (server) printf(" server_cpu_user=%.4f server_cpu_sys=%.4f", s1.user - s0.user, s1.sys - s0.sys);
    printf(" host_busy=%.2f\n", h1 - h0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "pingpong") == 0) return pingpong(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "stream") == 0) return stream(argc, argv);
    fprintf(stderr,
            "usage: tcp_loadgen pingpong HOST PORT CONNS SECONDS MSGSIZE [WARMUP [SERVER_PID]]\n"
            "       tcp_loadgen stream HOST PORT BYTES [SERVER_PID]\n");
    return 2;
}
