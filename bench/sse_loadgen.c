/*
 * sse_loadgen: a one-core Server-Sent Events load generator for bench/sse.py.
 *
 * epoll, non-blocking sockets, no threads. It connects to 127.0.0.1 only
 * (any other address is refused), every loop ends by count or by a
 * deadline, and it dies with its parent (PR_SET_PDEATHSIG). Built on the fly
 * by sse.py with `gcc -O2`.
 *
 *   sse_loadgen HOST PORT PATH CONNS COUNT WARMUP GAP_MS WAIT [SERVER_PID]
 *
 * CONNS streams: each sends `GET PATH HTTP/1.1` and must get 200 with
 * `Content-Type: text/event-stream...` (chunked or not; the headers, less
 * Date, must be the same on every stream). One more keep-alive connection,
 * the control one, asks `GET /count` (the body: how many streams the server
 * will broadcast to) every 5 ms until it says CONNS (at most 10 s). Then,
 * WARMUP + COUNT times: it asks `GET /bcast/<seq>`; the server must write
 * every stream one event whose data is `{"seq":<seq>,"t0":<t0>}`, t0 being
 * CLOCK_MONOTONIC in ns when it started the broadcast (Python's
 * time.monotonic_ns()), and answer the request with the number of streams
 * it wrote to (must be CONNS). A stream's receive time is taken right after
 * the read that completed its event. When every stream has it, the
 * broadcast's time is (last receive - t0); also recorded: (first receive -
 * t0) and (t0 - when the request was sent), the trigger's own way in. Then
 * GAP_MS milliseconds pass before the next one. Every stream must get every
 * event exactly once, in order, within 10 s. Comment lines (heartbeats) are
 * skipped; event, id and retry fields are ignored. WAIT: "sleep" (wait for
 * the streams in epoll_wait, as a client does) or "spin" (poll without
 * sleeping from the trigger until every stream has the event: the server's
 * writes then never have to wake a sleeping reader, which costs it kernel
 * time a remote client would not; this process's CPU is then the broadcast
 * time, not a load measure).
 *
 * Streams are opened one at a time, blocking (setup, not measured), and
 * closed at the end without more ado (an event stream has no close
 * handshake: the server sees EOF).
 *
 * Output: one machine-readable line on stdout at the end, key=value pairs:
 *   broadcasts seconds cpu_user cpu_sys [server_cpu_user server_cpu_sys
 *   server_run] host_busy t0_ns t1_ns wire_bytes hdr_hash last_us first_us trig_us
 * cpu_* is this process's CPU time (getrusage) over the measured interval (the
 * COUNT broadcasts and their gaps), in seconds; with SERVER_PID,
 * server_cpu_* is that process's utime/stime (/proc/PID/stat, all threads,
 * clock ticks) and server_run its CPU time to the ns (the sum of
 * /proc/PID/task/ * /schedstat, -1 if there is none) over the same interval;
 * host_busy is the busy time of every CPU together (/proc/stat). t0_ns,
 * t1_ns: the measured interval (CLOCK_MONOTONIC). wire_bytes: bytes read per
 * stream per measured event (chunk framing included). hdr_hash: FNV-1a of the
 * response headers less Date. last_us/first_us/trig_us: comma-separated, one
 * per measured broadcast, in order. Errors go to stderr with exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LOADGEN_NAME "sse_loadgen"
#include "loadgen.h"

#define MAX_CONNS 20000
#define MAX_BCAST 100000
#define LINE_MAX_LEN 512
#define HEAD_MAX 8192
#define BCAST_TIMEOUT_NS (10LL * 1000000000LL)
#define READY_TIMEOUT_NS (10LL * 1000000000LL)
#define IO_TIMEOUT_S 10

static void raise_nofile(int want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit");
    if (rl.rlim_cur >= (rlim_t)want) return;
    rl.rlim_cur = rl.rlim_max < (rlim_t)want ? rl.rlim_max : (rlim_t)want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit");
}

/* The server's CPU time to the ns: every thread's schedstat (run time is its first field). */
static double server_run(long pid) {
    if (pid <= 0) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    unsigned long long total = 0;
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char file[320];
        snprintf(file, sizeof file, "/proc/%ld/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(file, "r");
        if (!f) continue; /* a thread that has just ended */
        unsigned long long ns;
        if (fscanf(f, "%llu", &ns) == 1) {
            total += ns;
            seen = 1;
        }
        fclose(f);
    }
    closedir(d);
    return seen ? (double)total / 1e9 : -1;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---------------------------------------------------------- blocking setup */

static int dial(const struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct timeval tv = {IO_TIMEOUT_S, 0}; /* no blocking call waits for ever */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) die("SO_RCVTIMEO");
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) die("SO_SNDTIMEO");
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) die("connect");
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
    return fd;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("send (request)");
        }
        p += n;
        len -= (size_t)n;
    }
}

/*
 * Read a response's status line and headers (blocking) into head[] (NUL
 * ended, the blank line cut off); returns the bytes that came after them,
 * which are left at head + the returned offset (*extra of them).
 */
static size_t read_head(int fd, char *head, size_t cap, size_t *extra) {
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        if (got == cap - 1) fail("response headers too long");
        ssize_t r = recv(fd, head + got, cap - 1 - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("recv (response headers)");
        }
        if (r == 0) fail("the server closed the connection before its response");
        got += (size_t)r;
        head[got] = 0;
        end = strstr(head, "\r\n\r\n");
    }
    size_t body = (size_t)(end - head) + 4;
    *extra = got - body;
    end[2] = 0; /* keep the last header's CRLF */
    return body;
}

/* The value of header `name` in head[] (after the status line), or NULL; *len its length. */
static const char *header(const char *head, const char *name, size_t *len) {
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2]) {
        p += 2;
        const char *eol = strstr(p, "\r\n");
        if (!eol) break;
        if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t') v++;
            *len = (size_t)(eol - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

/* FNV-1a of the header lines, less Date (it changes every second). */
static uint64_t head_hash(const char *head) {
    uint64_t h = 1469598103934665603ULL;
    const char *p = head;
    while (*p) {
        const char *eol = strstr(p, "\r\n");
        if (!eol) eol = p + strlen(p);
        if (strncasecmp(p, "Date:", 5) != 0) {
            for (const char *q = p; q < eol; q++) h = (h ^ (unsigned char)*q) * 1099511628211ULL;
            h = (h ^ '\n') * 1099511628211ULL;
        }
        p = *eol ? eol + 2 : eol;
    }
    return h;
}

/* ------------------------------------------------------- the control link */

static int ctl_fd = -1;
static long ctl_port;

/* Send `GET path` on the control connection (its answer: ctl_answer). */
static void ctl_ask(const char *path) {
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%ld\r\n\r\n", path, ctl_port);
    if (n <= 0 || (size_t)n >= sizeof req) fail("control path too long");
    write_all(ctl_fd, req, (size_t)n);
}

/* The answer to the last ctl_ask (200 only): its body, NUL ended, into body[]. */
static void ctl_answer(const char *path, char *body, size_t cap) {
    char head[HEAD_MAX];
    size_t extra;
    size_t off = read_head(ctl_fd, head, sizeof head, &extra);
    if (strncmp(head, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, LOADGEN_NAME ": GET %s: %.*s\n", path, (int)strcspn(head, "\r"), head);
        exit(1);
    }
    size_t vl;
    const char *v = header(head, "Content-Length", &vl);
    if (!v) fail("a control response without Content-Length");
    size_t len = (size_t)strtoul(v, NULL, 10);
    if (len >= cap) fail("control response too long");
    if (extra > len) fail("more than one control response");
    memcpy(body, head + off, extra);
    size_t got = extra;
    while (got < len) {
        ssize_t r = recv(ctl_fd, body + got, len - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("recv (control response)");
        }
        if (r == 0) fail("the server closed the control connection");
        got += (size_t)r;
    }
    body[len] = 0;
}

/* ----------------------------------------------------------------- streams */

enum { CH_SIZE, CH_DATA, CH_CR, CH_LF };

struct conn {
    int fd;
    int chunked;       /* Transfer-Encoding: chunked */
    int cstate;        /* where in the chunk framing */
    size_t cleft;      /* chunk data bytes still to come */
    size_t sizelen;    /* bytes in sizeline[] */
    int cr;            /* the last body byte was a CR (a CRLF's LF ends no second line) */
    size_t linelen;    /* bytes in line[] */
    int has_data;      /* the event being read has its data line */
    long ev_seq;       /* ... and what it said */
    long long ev_t0;
    long seq;          /* the last event received (-1: none) */
    int64_t rx;        /* when it was received */
    char sizeline[32];
    char line[LINE_MAX_LEN];
};

/* The broadcast being received: what every stream must get. */
static long cur_seq = -1; /* -1: no event is expected */
static long long cur_t0;
static int have;        /* streams that have it */
static int64_t cur_rx;  /* when the bytes being parsed were read */

static void dispatch(struct conn *c) {
    if (!c->has_data) return; /* an event without data is not dispatched (the SSE rule) */
    c->has_data = 0;
    if (cur_seq < 0) fail("an event came with no broadcast asked for");
    if (c->ev_seq != cur_seq || c->seq == cur_seq) fail("an event out of order or twice");
    if (have == 0) cur_t0 = c->ev_t0;
    else if (c->ev_t0 != cur_t0) fail("different t0 stamps in one broadcast");
    c->seq = c->ev_seq;
    c->rx = cur_rx;
    have++;
}

static void sse_line(struct conn *c) {
    c->line[c->linelen] = 0;
    if (c->linelen == 0) {
        dispatch(c);
        return;
    }
    if (c->line[0] == ':') return; /* a comment: a heartbeat */
    if (strncmp(c->line, "data:", 5) != 0) return; /* event, id, retry: not ours */
    const char *v = c->line + 5;
    if (*v == ' ') v++;
    if (c->has_data) fail("an event with more than one data line");
    if (sscanf(v, "{\"seq\":%ld,\"t0\":%lld}", &c->ev_seq, &c->ev_t0) != 2) {
        fprintf(stderr, LOADGEN_NAME ": unexpected event data: %s\n", v);
        exit(1);
    }
    c->has_data = 1;
}

/* De-chunked body bytes: split into lines (CRLF, LF or CR ends one). */
static void body(struct conn *c, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = p[i];
        if (ch == '\n' && c->cr) {
            c->cr = 0;
            continue;
        }
        c->cr = ch == '\r';
        if (ch == '\r' || ch == '\n') {
            sse_line(c);
            c->linelen = 0;
            continue;
        }
        if (c->linelen == LINE_MAX_LEN - 1) fail("an SSE line too long");
        c->line[c->linelen++] = (char)ch;
    }
}

/* Bytes read from a stream: undo the chunk framing, if any. */
static void feed(struct conn *c, const unsigned char *p, size_t n) {
    if (!c->chunked) {
        body(c, p, n);
        return;
    }
    while (n) {
        switch (c->cstate) {
        case CH_SIZE:
            if (*p == '\n') {
                c->sizeline[c->sizelen] = 0;
                char *end;
                unsigned long size = strtoul(c->sizeline, &end, 16);
                if (end == c->sizeline) fail("bad chunk size");
                if (size == 0) fail("the server ended a stream");
                c->cleft = size;
                c->sizelen = 0;
                c->cstate = CH_DATA;
            } else if (*p != '\r') {
                if (c->sizelen == sizeof c->sizeline - 1) fail("chunk size line too long");
                c->sizeline[c->sizelen++] = (char)*p;
            }
            p++;
            n--;
            break;
        case CH_DATA: {
            size_t k = n < c->cleft ? n : c->cleft;
            body(c, p, k);
            p += k;
            n -= k;
            c->cleft -= k;
            if (!c->cleft) c->cstate = CH_CR;
            break;
        }
        case CH_CR:
            if (*p != '\r') fail("bad chunk end");
            p++;
            n--;
            c->cstate = CH_LF;
            break;
        default:
            if (*p != '\n') fail("bad chunk end");
            p++;
            n--;
            c->cstate = CH_SIZE;
        }
    }
}

static uint64_t hdr_hash;

static void open_stream(struct conn *c, const struct sockaddr_in *sa, const char *path, long port, int first) {
    int fd = dial(sa);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%ld\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n\r\n",
                     path, port);
    if (n <= 0 || (size_t)n >= sizeof req) fail("path too long");
    write_all(fd, req, (size_t)n);
    char head[HEAD_MAX];
    size_t extra;
    size_t off = read_head(fd, head, sizeof head, &extra);
    if (strncmp(head, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, LOADGEN_NAME ": GET %s: %.*s\n", path, (int)strcspn(head, "\r"), head);
        exit(1);
    }
    size_t vl;
    const char *v = header(head, "Content-Type", &vl);
    if (!v || strncasecmp(v, "text/event-stream", 17) != 0) fail("not a text/event-stream response");
    if (header(head, "Content-Encoding", &vl)) fail("a compressed event stream");
    v = header(head, "Transfer-Encoding", &vl);
    c->chunked = v && vl == 7 && strncasecmp(v, "chunked", 7) == 0;
    if (!c->chunked && header(head, "Content-Length", &vl)) fail("an event stream with a Content-Length");
    uint64_t h = head_hash(head);
    if (first) hdr_hash = h;
    else if (h != hdr_hash) fail("the streams' response headers differ");
    c->fd = fd;
    c->seq = -1;
    c->cstate = CH_SIZE;
    feed(c, (unsigned char *)head + off, extra); /* what came with the headers */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) die("O_NONBLOCK");
}

static unsigned char rbuf[1 << 16];
static uint64_t rx_bytes;

/* Read and parse what a stream has; fails on EOF. A short read has taken
 * everything: no second recv just to get EAGAIN (epoll is level-triggered). */
static void drain(struct conn *c) {
    for (;;) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (r < 0) {
            if (errno == EAGAIN) return;
            if (errno == EINTR) continue;
            die("recv");
        }
        if (r == 0) fail("the server closed a stream");
        cur_rx = now_ns();
        rx_bytes += (uint64_t)r;
        feed(c, rbuf, (size_t)r);
        if ((size_t)r < sizeof rbuf) return;
    }
}

static void print_list(const char *key, const int64_t *v, long n) {
    printf(" %s=", key);
    for (long i = 0; i < n; i++) printf("%s%.1f", i ? "," : "", (double)v[i] / 1000.0);
}

int main(int argc, char **argv) {
    if (argc < 9 || argc > 10) {
        fprintf(stderr, "usage: sse_loadgen HOST PORT PATH CONNS COUNT WARMUP GAP_MS sleep|spin [SERVER_PID]\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* do not outlive the script */
    long port = parse_long(argv[2], "port", 1, 65535);
    struct sockaddr_in sa = loopback(argv[1], port);
    const char *path = argv[3];
    int nconns = (int)parse_long(argv[4], "conns", 1, MAX_CONNS);
    long count = parse_long(argv[5], "count", 1, MAX_BCAST);
    long warmup = parse_long(argv[6], "warmup", 0, MAX_BCAST);
    long gap_ms = parse_long(argv[7], "gap_ms", 0, 60000);
    int spin = strcmp(argv[8], "spin") == 0;
    if (!spin && strcmp(argv[8], "sleep") != 0) fail("WAIT is sleep or spin");
    long server = argc > 9 ? parse_long(argv[9], "server pid", 1, 1L << 30) : 0;
    ctl_port = port;

    raise_nofile(nconns + 64);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    int64_t *last = calloc((size_t)count, sizeof *last);
    int64_t *first = calloc((size_t)count, sizeof *first);
    int64_t *trig = calloc((size_t)count, sizeof *trig);
    if (!conns || !last || !first || !trig) fail("out of memory");
    for (int i = 0; i < nconns; i++) {
        open_stream(&conns[i], &sa, path, port, i == 0);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) != 0) die("epoll_ctl");
    }
    ctl_fd = dial(&sa);

    /* The server learns of a stream a little after its headers went out: wait until it counts them all. */
    char text[64];
    int64_t ready_by = now_ns() + READY_TIMEOUT_NS;
    for (;;) {
        ctl_ask("/count");
        ctl_answer("/count", text, sizeof text);
        long n = strtol(text, NULL, 10);
        if (n == nconns) break;
        if (n > nconns) fail("the server counts more streams than were opened");
        if (now_ns() > ready_by) {
            fprintf(stderr, LOADGEN_NAME ": the server counts %ld of %d streams after 10 s\n", n, nconns);
            exit(1);
        }
        sleep_ms(5);
    }

    struct cpu c0 = self_cpu(), s0 = proc_cpu(server);
    double r0 = server_run(server), h0 = host_busy();
    int64_t m0 = now_ns();
    uint64_t bytes0 = 0;
    struct epoll_event evs[256];
    for (long b = 0; b < warmup + count; b++) {
        if (b == warmup) {
            c0 = self_cpu();
            s0 = proc_cpu(server);
            r0 = server_run(server);
            h0 = host_busy();
            m0 = now_ns();
            bytes0 = rx_bytes;
        }
        char req[64];
        snprintf(req, sizeof req, "/bcast/%ld", b);
        have = 0;
        cur_seq = b;
        int64_t sent = now_ns();
        ctl_ask(req); /* its answer is read once the event is everywhere */
        int64_t deadline = sent + BCAST_TIMEOUT_NS;
        while (have < nconns) {
            if (now_ns() > deadline) {
                fprintf(stderr, LOADGEN_NAME ": broadcast %ld: only %d of %d streams got it in 10 s\n", b, have,
                        nconns);
                exit(1);
            }
            int k = epoll_wait(ep, evs, 256, spin ? 0 : 100);
            if (k < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            for (int i = 0; i < k; i++) drain(evs[i].data.ptr);
        }
        cur_seq = -1;
        ctl_answer(req, text, sizeof text);
        if (strtol(text, NULL, 10) != nconns) {
            fprintf(stderr, LOADGEN_NAME ": broadcast %ld went to %s streams, not %d\n", b, text, nconns);
            exit(1);
        }
        if (b >= warmup) {
            int64_t lo = INT64_MAX, hi = INT64_MIN;
            for (int i = 0; i < nconns; i++) {
                if (conns[i].rx < lo) lo = conns[i].rx;
                if (conns[i].rx > hi) hi = conns[i].rx;
            }
            last[b - warmup] = hi - cur_t0;
            first[b - warmup] = lo - cur_t0;
            trig[b - warmup] = cur_t0 - sent;
        }
        if (gap_ms) sleep_ms(gap_ms);
    }
    int64_t m1 = now_ns();
    struct cpu c1 = self_cpu(), s1 = proc_cpu(server);
    double r1 = server_run(server), h1 = host_busy();
    uint64_t bytes = rx_bytes - bytes0;
    for (int i = 0; i < nconns; i++) close(conns[i].fd);
    close(ctl_fd);

    printf("broadcasts=%ld seconds=%.4f cpu_user=%.4f cpu_sys=%.4f", count, (double)(m1 - m0) / 1e9,
           c1.user - c0.user, c1.sys - c0.sys);
    if (server)
        printf(" server_cpu_user=%.4f server_cpu_sys=%.4f server_run=%.6f", s1.user - s0.user, s1.sys - s0.sys,
               r0 < 0 || r1 < 0 ? -1.0 : r1 - r0);
    printf(" host_busy=%.2f t0_ns=%lld t1_ns=%lld wire_bytes=%.2f hdr_hash=%016llx", h1 - h0, (long long)m0,
           (long long)m1, (double)bytes / ((double)count * nconns), (unsigned long long)hdr_hash);
    print_list("last_us", last, count);
    print_list("first_us", first, count);
    print_list("trig_us", trig, count);
    printf("\n");
    return 0;
}
