/*
 * ws_loadgen: a one-core WebSocket load generator for bench/ws.py.
 *
 * epoll, non-blocking sockets, no threads; RFC 6455 client framing (masked
 * frames out, unmasked frames in; no extensions offered, so no compression).
 * It connects to 127.0.0.1 only (any other address is refused), and every
 * loop ends by time or by a deadline. Built on the fly by ws.py with `gcc -O2`.
 *
 *   ws_loadgen pingpong HOST PORT PATH CONNS SECONDS MSGSIZE WARMUP [SERVER_PID]
 *       CONNS WebSockets; each sends one MSGSIZE-byte text message, waits for
 *       it to come back, checks it, records the round trip's latency (first
 *       byte written to last byte read) and sends the next. The first WARMUP
 *       seconds (may be 0) are not counted; then SECONDS are measured.
 *
 *   ws_loadgen fanout HOST PORT PATH CONNS COUNT WARMUP GAP_MS [SERVER_PID]
 *       CONNS WebSockets. WARMUP + COUNT times: connection 0 sends the text
 *       "bcast <seq>"; the server must then send every connection one text
 *       message "B <seq> <t0> ..." where t0 is CLOCK_MONOTONIC in ns when it
 *       started the broadcast (Python's time.monotonic_ns()). Each
 *       connection's receive time is taken right after the read that
 *       completed the message. When every connection has it, the broadcast's
 *       time is (last receive - t0); also recorded: (first receive - t0).
 *       Then GAP_MS milliseconds pass before the next trigger. Every
 *       connection must get every broadcast exactly once, in order.
 *
 * Connections are opened one at a time with a blocking connect and upgrade
 * (setup, not measured) and closed at the end with a close frame (1000),
 * waiting up to 5 s for the server's close frame or EOF.
 *
 * Output: one machine-readable line on stdout at the end, key=value pairs:
 *   pingpong: roundtrips seconds rps p50_us p90_us p99_us max_us cpu_user cpu_sys
 *             [server_cpu_user server_cpu_sys] host_busy t0_ns t1_ns all series
 *   fanout:   broadcasts seconds cpu_user cpu_sys [server_cpu_user server_cpu_sys]
 *             host_busy t0_ns t1_ns last_us first_us
 * cpu_* is this process's CPU time (getrusage) over the measured interval, in
 * seconds; with SERVER_PID, server_cpu_* is that process's utime/stime (from
 * /proc/PID/stat, all threads) over the same interval; host_busy is the busy
 * time of every CPU together (/proc/stat: all but idle and iowait) over it.
 * t0_ns, t1_ns: the measured interval's start and end (CLOCK_MONOTONIC).
 * all: round trips completed, the warm-up included. series: round trips
 * completed in each 250 ms slice of the measured interval. last_us/first_us: comma-separated, one per measured broadcast, in
 * order. Errors go to stderr with exit status 1.
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

#define LOADGEN_NAME "ws_loadgen"
#include "loadgen.h"

#define MAX_CONNS 20000
#define MAX_MSG 4096
#define INBUF (2 * MAX_MSG + 16)
#define SLICE_NS 250000000LL
#define MAX_SLICES 4096
#define BCAST_TIMEOUT_NS (10LL * 1000000000LL)
#define CLOSE_TIMEOUT_NS (5LL * 1000000000LL)
#define MAX_BCAST 100000

/* The RFC 6455 example key and its accept value. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static void raise_nofile(int want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit");
    if (rl.rlim_cur >= (rlim_t)want) return;
    rl.rlim_cur = rl.rlim_max < (rlim_t)want ? rl.rlim_max : (rlim_t)want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit");
}

/* ------------------------------------------------------------- connections */

struct conn {
    int fd;
    size_t got;     /* bytes in in[] */
    size_t sent;    /* bytes of out[] written */
    size_t outlen;  /* bytes in out[] */
    int64_t t0;     /* pingpong: when the message's first byte was written */
    long seq;       /* fanout: the last broadcast received (-1: none) */
    int64_t rx;     /* fanout: when it was received */
    int closed;     /* the server's close frame or EOF came */
    unsigned char out[MAX_MSG + 16];
    unsigned char in[INBUF];
};

static uint32_t rng = 0x9e3779b9u;

static uint32_t next_mask(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* A masked client frame (FIN set) with the given opcode into c->out. */
static void frame(struct conn *c, int opcode, const void *payload, size_t len) {
    unsigned char *p = c->out;
    if (len > MAX_MSG) fail("message too long");
    *p++ = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        *p++ = (unsigned char)(0x80 | len);
    } else {
        *p++ = 0x80 | 126;
        *p++ = (unsigned char)(len >> 8);
        *p++ = (unsigned char)len;
    }
    uint32_t m = next_mask();
    unsigned char mask[4] = {(unsigned char)(m >> 24), (unsigned char)(m >> 16), (unsigned char)(m >> 8),
                             (unsigned char)m};
    memcpy(p, mask, 4);
    p += 4;
    const unsigned char *src = payload;
    for (size_t i = 0; i < len; i++) p[i] = src[i] ^ mask[i & 3];
    c->outlen = (size_t)(p - c->out) + len;
    c->sent = 0;
}

/* Write the rest of c->out; returns 0 when it has all gone, 1 if the socket is full. */
static int push(struct conn *c) {
    while (c->sent < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->sent, c->outlen - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 1;
            if (errno == EINTR) continue;
            die("send");
        }
        c->sent += (size_t)n;
    }
    return 0;
}

/* Blocking write of a whole buffer (setup only). */
static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("send (handshake)");
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Connect and upgrade (blocking), then make the socket non-blocking with TCP_NODELAY. */
static void open_ws(struct conn *c, const struct sockaddr_in *sa, const char *path, long port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) die("connect");
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%ld\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: " WS_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, port);
    if (n <= 0 || (size_t)n >= sizeof req) fail("path too long");
    write_all(fd, req, (size_t)n);
    char resp[4096];
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        if (got == sizeof resp - 1) fail("upgrade response too long");
        ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("recv (handshake)");
        }
        if (r == 0) fail("the server closed the connection during the upgrade");
        got += (size_t)r;
        resp[got] = 0;
        end = strstr(resp, "\r\n\r\n");
    }
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
        *end = 0;
        fprintf(stderr, "ws_loadgen: upgrade refused: %s\n", resp);
        exit(1);
    }
    if (!strstr(resp, WS_ACCEPT)) fail("wrong Sec-WebSocket-Accept");
    if (strcasestr(resp, "Sec-WebSocket-Extensions")) fail("the server accepted an extension we did not offer");
    end += 4;
    c->fd = fd;
    c->got = (size_t)(resp + got - end); /* frames that came with the response */
    memcpy(c->in, end, c->got);
    c->seq = -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) die("O_NONBLOCK");
}

/*
 * The next complete frame in c->in: returns its opcode and sets *payload,
 * *len and *size (header + payload); -1 if incomplete. Fragmented and masked
 * server frames are refused.
 */
static int next_frame(struct conn *c, unsigned char **payload, size_t *len, size_t *size) {
    if (c->got < 2) return -1;
    unsigned char *p = c->in;
    if (!(p[0] & 0x80)) fail("fragmented frame");
    if (p[0] & 0x70) fail("frame with RSV bits (compression?)");
    if (p[1] & 0x80) fail("masked frame from the server");
    size_t hdr = 2, n = p[1] & 0x7f;
    if (n == 126) {
        if (c->got < 4) return -1;
        n = ((size_t)p[2] << 8) | p[3];
        hdr = 4;
    } else if (n == 127) {
        if (c->got < 10) return -1;
        n = 0;
        for (int i = 2; i < 10; i++) n = (n << 8) | p[i];
        hdr = 10;
    }
    if (hdr + n > INBUF) fail("frame too large");
    if (c->got < hdr + n) return -1;
    *payload = p + hdr;
    *len = n;
    *size = hdr + n;
    return p[0] & 0x0f;
}

static void consume(struct conn *c, size_t size) {
    c->got -= size;
    if (c->got) memmove(c->in, c->in + size, c->got);
}

/* Read what is there; returns 0 on EAGAIN, -1 on EOF. */
static int fill(struct conn *c) {
    for (;;) {
        if (c->got == INBUF) return 0; /* parse first */
        ssize_t r = recv(c->fd, c->in + c->got, INBUF - c->got, 0);
        if (r < 0) {
            if (errno == EAGAIN) return 0;
            if (errno == EINTR) continue;
            die("recv");
        }
        if (r == 0) return -1;
        c->got += (size_t)r;
    }
}

static void watch(int ep, int op, struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &ev) != 0) die("epoll_ctl");
}

/* Send a close frame (1000) on every connection and wait up to 5 s for the answers. */
static void close_all(int ep, struct conn *conns, int nconns) {
    unsigned char code[2] = {0x03, 0xe8};
    int open = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->closed = 0;
        frame(c, 0x8, code, 2);
        if (push(c)) { /* a full socket at the end of a run: just drop it */
            c->closed = 1;
            continue;
        }
        open++;
    }
    int64_t deadline = now_ns() + CLOSE_TIMEOUT_NS;
    struct epoll_event evs[256];
    while (open > 0 && now_ns() < deadline) {
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->closed) continue;
            int eof = fill(c) < 0;
            unsigned char *pl;
            size_t len, size;
            int op;
            while ((op = next_frame(c, &pl, &len, &size)) >= 0) {
                consume(c, size);
                if (op == 0x8) eof = 1;
            }
            if (eof) {
                c->closed = 1;
                open--;
            }
        }
    }
    for (int i = 0; i < nconns; i++) close(conns[i].fd);
}

static struct conn *open_all(int ep, const struct sockaddr_in *sa, const char *path, long port, int nconns) {
    raise_nofile(nconns + 64);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns) fail("out of memory");
    for (int i = 0; i < nconns; i++) {
        open_ws(&conns[i], sa, path, port);
        watch(ep, EPOLL_CTL_ADD, &conns[i], EPOLLIN);
    }
    return conns;
}

/* ---------------------------------------------------------------- pingpong */

static uint32_t *lat; /* latencies of the measured round trips, ns (capped) */
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

static void send_msg(int ep, struct conn *c, const char *msg, size_t size) {
    frame(c, 0x1, msg, size);
    c->t0 = now_ns();
    if (push(c)) watch(ep, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLOUT);
}

static int pingpong(int argc, char **argv) {
    if (argc < 9 || argc > 10) fail("usage: pingpong HOST PORT PATH CONNS SECONDS MSGSIZE WARMUP [SERVER_PID]");
    long port = parse_long(argv[3], "port", 1, 65535);
    struct sockaddr_in sa = loopback(argv[2], port);
    const char *path = argv[4];
    int nconns = (int)parse_long(argv[5], "conns", 1, MAX_CONNS);
    double seconds = parse_double(argv[6], "seconds");
    size_t size = (size_t)parse_long(argv[7], "msgsize", 1, MAX_MSG);
    double warmup = parse_double(argv[8], "warmup");
    long server = argc > 9 ? parse_long(argv[9], "server pid", 1, 1L << 30) : 0;
    if (seconds <= 0) fail("seconds must be > 0");

    char *msg = malloc(size);
    if (!msg) fail("out of memory");
    for (size_t i = 0; i < size; i++) msg[i] = (char)('a' + i % 26);

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = open_all(ep, &sa, path, port, nconns);

    int64_t start = now_ns();
    int64_t measure = start + (int64_t)(warmup * 1e9);
    int64_t deadline = measure + (int64_t)(seconds * 1e9);
    int measuring = warmup <= 0;
    struct cpu c0 = self_cpu(), s0 = proc_cpu(server);
    double h0 = host_busy();
    long nslices = (long)((deadline - measure + SLICE_NS - 1) / SLICE_NS);
    if (nslices > MAX_SLICES) nslices = MAX_SLICES;
    long *slices = calloc((size_t)nslices, sizeof *slices);
    if (!slices) fail("out of memory");

    for (int i = 0; i < nconns; i++) send_msg(ep, &conns[i], msg, size);

    long total = 0;
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
        int64_t until = measuring ? deadline : measure;
        int n = epoll_wait(ep, evs, 256, (int)((until - t) / 1000000) + 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (evs[k].events & EPOLLOUT) {
                if (!push(c)) watch(ep, EPOLL_CTL_MOD, c, EPOLLIN);
            }
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (fill(c) < 0) fail("the server closed a connection");
            unsigned char *pl;
            size_t len, fsize;
            int op;
            while ((op = next_frame(c, &pl, &len, &fsize)) >= 0) {
                if (op == 0x9) { /* ping (heartbeat should be off): answer it */
                    unsigned char tmp[128];
                    size_t l = len < sizeof tmp ? len : sizeof tmp;
                    memcpy(tmp, pl, l);
                    consume(c, fsize);
                    if (c->sent < c->outlen) fail("ping while a message is being written");
                    frame(c, 0xA, tmp, l);
                    if (push(c)) fail("socket full on pong");
                    continue;
                }
                if (op == 0x8) fail("the server closed a connection");
                if (op != 0x1) fail("unexpected frame (not text)");
                if (len != size || memcmp(pl, msg, size) != 0) fail("the echo differs from the message sent");
                if (c->sent != c->outlen) fail("echo before the whole message was sent");
                consume(c, fsize);
                int64_t done = now_ns();
                total++;
                if (measuring && done < deadline) {
                    record(done - c->t0);
                    long s = (long)((done - measure) / SLICE_NS);
                    if (s < nslices) slices[s]++;
                }
                send_msg(ep, c, msg, size);
            }
        }
    }
    int64_t end = now_ns();
    struct cpu c1 = self_cpu(), s1 = proc_cpu(server);
    double h1 = host_busy();
    close_all(ep, conns, nconns);

    double secs = (double)(end - measure) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    printf("roundtrips=%zu seconds=%.4f rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f "
           "cpu_user=%.4f cpu_sys=%.4f",
           nlat, secs, (double)nlat / secs, pct_us(0.5), pct_us(0.9), pct_us(0.99),
           nlat ? lat[nlat - 1] / 1000.0 : 0.0, c1.user - c0.user, c1.sys - c0.sys);
    if (server) printf(" server_cpu_user=%.4f server_cpu_sys=%.4f", s1.user - s0.user, s1.sys - s0.sys);
    printf(" host_busy=%.2f t0_ns=%lld t1_ns=%lld all=%ld series=", h1 - h0, (long long)measure, (long long)end,
           total);
    for (long s = 0; s < nslices; s++) printf("%s%ld", s ? "," : "", slices[s]);
    printf("\n");
    return 0;
}

/* ------------------------------------------------------------------ fanout */

static int fanout(int argc, char **argv) {
    if (argc < 9 || argc > 10) fail("usage: fanout HOST PORT PATH CONNS COUNT WARMUP GAP_MS [SERVER_PID]");
    long port = parse_long(argv[3], "port", 1, 65535);
    struct sockaddr_in sa = loopback(argv[2], port);
    const char *path = argv[4];
    int nconns = (int)parse_long(argv[5], "conns", 1, MAX_CONNS);
    long count = parse_long(argv[6], "count", 1, MAX_BCAST);
    long warmup = parse_long(argv[7], "warmup", 0, MAX_BCAST);
    long gap_ms = parse_long(argv[8], "gap_ms", 0, 60000);
    long server = argc > 9 ? parse_long(argv[9], "server pid", 1, 1L << 30) : 0;

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = open_all(ep, &sa, path, port, nconns);
    int64_t *last = calloc((size_t)count, sizeof *last);
    int64_t *first = calloc((size_t)count, sizeof *first);
    if (!last || !first) fail("out of memory");

    struct cpu c0 = self_cpu(), s0 = proc_cpu(server);
    double h0 = host_busy();
    int64_t m0 = now_ns();
    struct epoll_event evs[256];
    for (long b = 0; b < warmup + count; b++) {
        if (b == warmup) {
            c0 = self_cpu();
            s0 = proc_cpu(server);
            h0 = host_busy();
            m0 = now_ns();
        }
        char trigger[64];
        int tl = snprintf(trigger, sizeof trigger, "bcast %ld", b);
        frame(&conns[0], 0x1, trigger, (size_t)tl);
        if (push(&conns[0])) fail("socket full on the trigger");
        int64_t deadline = now_ns() + BCAST_TIMEOUT_NS;
        int64_t t0 = -1;
        int have = 0;
        while (have < nconns) {
            if (now_ns() > deadline) {
                fprintf(stderr, "ws_loadgen: broadcast %ld: only %d of %d connections got it in 10 s\n", b, have,
                        nconns);
                exit(1);
            }
            int n = epoll_wait(ep, evs, 256, 100);
            if (n < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            for (int k = 0; k < n; k++) {
                struct conn *c = evs[k].data.ptr;
                if (fill(c) < 0) fail("the server closed a connection");
                int64_t rx = now_ns();
                unsigned char *pl;
                size_t len, fsize;
                int op;
                while ((op = next_frame(c, &pl, &len, &fsize)) >= 0) {
                    if (op == 0x8) fail("the server closed a connection");
                    if (op != 0x1) fail("unexpected frame (not text)");
                    char text[128];
                    size_t l = len < sizeof text - 1 ? len : sizeof text - 1;
                    memcpy(text, pl, l);
                    text[l] = 0;
                    consume(c, fsize);
                    long seq;
                    long long stamp;
                    if (sscanf(text, "B %ld %lld", &seq, &stamp) != 2) fail("not a broadcast message");
                    if (seq != b || c->seq == b) fail("broadcast out of order or twice");
                    if (t0 < 0) t0 = stamp;
                    if (stamp != t0) fail("different send stamps in one broadcast");
                    c->seq = seq;
                    c->rx = rx;
                    have++;
                }
            }
        }
        if (b >= warmup) {
            int64_t lo = INT64_MAX, hi = INT64_MIN;
            for (int i = 0; i < nconns; i++) {
                if (conns[i].rx < lo) lo = conns[i].rx;
                if (conns[i].rx > hi) hi = conns[i].rx;
            }
            last[b - warmup] = hi - t0;
            first[b - warmup] = lo - t0;
        }
        if (gap_ms) {
            struct timespec ts = {gap_ms / 1000, (gap_ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
        }
    }
    int64_t m1 = now_ns();
    struct cpu c1 = self_cpu(), s1 = proc_cpu(server);
    double h1 = host_busy();
    close_all(ep, conns, nconns);

    printf("broadcasts=%ld seconds=%.4f cpu_user=%.4f cpu_sys=%.4f", count, (double)(m1 - m0) / 1e9,
           c1.user - c0.user, c1.sys - c0.sys);
    if (server) printf(" server_cpu_user=%.4f server_cpu_sys=%.4f", s1.user - s0.user, s1.sys - s0.sys);
    printf(" host_busy=%.2f t0_ns=%lld t1_ns=%lld last_us=", h1 - h0, (long long)m0, (long long)m1);
    for (long i = 0; i < count; i++) printf("%s%.1f", i ? "," : "", last[i] / 1000.0);
    printf(" first_us=");
    for (long i = 0; i < count; i++) printf("%s%.1f", i ? "," : "", first[i] / 1000.0);
    printf("\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "pingpong") == 0) return pingpong(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "fanout") == 0) return fanout(argc, argv);
    fprintf(stderr,
            "usage: ws_loadgen pingpong HOST PORT PATH CONNS SECONDS MSGSIZE WARMUP [SERVER_PID]\n"
            "       ws_loadgen fanout HOST PORT PATH CONNS COUNT WARMUP GAP_MS [SERVER_PID]\n");
    return 2;
}
