/*
 * udp_loadgen: a one-core UDP load generator for bench/udp_echo.py.
 *
 * One non-blocking UDP socket, connected to 127.0.0.1:PORT (any other
 * address is refused), epoll, recvmmsg/sendmmsg, no threads; every loop ends
 * by time. Built on the fly by udp_echo.py with `gcc -O2`.
 *
 *   udp_loadgen HOST PORT WINDOW SIZE SECONDS [WARMUP [TIMEOUT_MS [SERVER_PID]]]
 *
 * Keeps WINDOW datagrams of SIZE bytes in flight. Each one carries its slot
 * in the window, a sequence number and its send time (then a fixed pattern);
 * each echo is checked byte for byte, its latency recorded, and the next
 * datagram goes out in its slot. A datagram not echoed within TIMEOUT_MS
 * (default 50) counts as lost and is replaced, so the window stays full; an
 * echo that comes back after that counts as late and is otherwise ignored.
 * The first WARMUP seconds (default 1, may be 0) are not counted; then
 * SECONDS are measured.
 *
 * Output: one machine-readable line on stdout at the end, key=value pairs:
 *   sent received lost late errors seconds pps p50_us p90_us p99_us p999_us
 *   max_us cpu_user cpu_sys [server_cpu_user server_cpu_sys] host_busy
 *   client_drops wakeups recv_calls unanswered series
 * Counts are of the measured interval: datagrams sent, echoes received (the
 * right ones, in time), datagrams declared lost, late echoes, send/receive
 * errors (e.g. ECONNREFUSED when nothing listens on PORT). pps = received /
 * seconds. Latency is from the send to the echo's arrival. cpu_* is this
 * process's CPU time (getrusage) over the measured interval, in seconds. With
 * SERVER_PID, server_cpu_* is that process's utime/stime (from
 * /proc/PID/stat, all threads) over the same interval. host_busy is the busy
 * time of every CPU together (/proc/stat: all but idle and iowait), in
 * seconds, over the same interval. client_drops is the number of datagrams
 * the kernel dropped for this program's own socket (receive buffer full,
 * /proc/net/udp) over the interval, -1 if unknown. wakeups counts the
 * epoll_wait calls that found echoes waiting and recv_calls the recvmmsg
 * calls that returned some (echoes / recv_calls is the mean batch: near 1
 * means this program keeps up and sleeps between echoes). series is the
 * echoes received in each 250 ms slice of the measured interval.
 * After the interval nothing more is sent: the program waits up to
 * TIMEOUT_MS for the last window to come back before it closes its socket
 * (so that no echo hits a closed port); unanswered is how many did not.
 * Errors go to stderr with exit status 1; bad arguments exit with 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LOADGEN_NAME "udp_loadgen"
#include "loadgen.h"

#define MAX_WINDOW 4096
#define MAX_SIZE 65507
#define HEADER 20 /* slot (4), seq (8), send time (8) */
#define BATCH 64  /* datagrams per recvmmsg / sendmmsg */
#define SLICE_NS 250000000LL
#define MAX_SLICES 4096

/* Kernel drops of the IPv4 UDP socket bound to local port `port` (/proc/net/udp), or -1. */
static long long udp_drops(unsigned port) {
    FILE *f = fopen("/proc/net/udp", "r");
    if (!f) return -1;
    char row[512];
    long long drops = -1;
    if (!fgets(row, sizeof row, f)) { /* the header */
        fclose(f);
        return -1;
    }
    while (fgets(row, sizeof row, f)) {
        unsigned lport = 0;
        long long d = 0;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops */
        if (sscanf(row, " %*s %*x:%x %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %lld", &lport, &d) == 2 &&
            lport == port) {
            drops = d;
            break;
        }
    }
    fclose(f);
    return drops;
}

/* ------------------------------------------------------------- latencies */

static uint32_t *lat; /* latencies of the measured echoes, ns (capped) */
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

/* ------------------------------------------------------------------ state */

struct slot {
    uint64_t seq; /* of the datagram in flight in this slot */
    int64_t t0;   /* when it was sent */
};

static int fd;
static size_t size;
static struct slot *slots;
static unsigned char *tmpl;    /* the pattern after the header */
static unsigned char *out_buf; /* BATCH datagrams to send */
static struct mmsghdr out_msg[BATCH];
static struct iovec out_iov[BATCH];
static int nout;
static uint64_t next_seq = 1;
static int measuring;
static long long n_sent, n_received, n_lost, n_late, n_errors, n_wakeups, n_recvs;

static void count_error(void) {
    if (measuring) n_errors++;
}

/* Queue the next datagram of slot `s`, sent at time `t` (by flush()). */
static void queue(uint32_t s, int64_t t) {
    unsigned char *d = out_buf + (size_t)nout * size;
    slots[s].seq = next_seq++;
    slots[s].t0 = t;
    memcpy(d, &s, 4);
    memcpy(d + 4, &slots[s].seq, 8);
    memcpy(d + 12, &t, 8);
    out_iov[nout].iov_base = d;
    out_iov[nout].iov_len = size;
    nout++;
}

/* Send the queued datagrams. One that cannot go out (EAGAIN, ENOBUFS,
   ECONNREFUSED) is left to time out: its slot is replaced then. */
static void flush(void) {
    int done = 0;
    while (done < nout) {
        int r = sendmmsg(fd, out_msg + done, (unsigned)(nout - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED) {
                count_error();
                done++; /* skip that one */
                continue;
            }
            die("sendmmsg");
        }
        if (measuring) n_sent += r;
        done += r;
    }
    nout = 0;
}

static int udp(int argc, char **argv) {
    if (argc < 6 || argc > 9) fail("usage: udp_loadgen HOST PORT WINDOW SIZE SECONDS [WARMUP [TIMEOUT_MS [SERVER_PID]]]");
    const char *host = argv[1];
    long port = parse_long(argv[2], "port", 1, 65535);
    int window = (int)parse_long(argv[3], "window", 1, MAX_WINDOW);
    size = (size_t)parse_long(argv[4], "size", HEADER, MAX_SIZE);
    double seconds = parse_double(argv[5], "seconds");
    double warmup = argc > 6 ? parse_double(argv[6], "warmup") : 1.0;
    long timeout_ms = argc > 7 ? parse_long(argv[7], "timeout_ms", 1, 60000) : 50;
    long server = argc > 8 ? parse_long(argv[8], "server pid", 1, 1L << 30) : 0;
    if (seconds <= 0) fail("seconds must be > 0");

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    if (strcmp(host, "127.0.0.1") != 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "udp_loadgen: only 127.0.0.1 is allowed, not %s\n", host);
        exit(2);
    }
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("connect");
    struct sockaddr_in me;
    socklen_t melen = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &melen) != 0) die("getsockname");
    unsigned my_port = ntohs(me.sin_port);

    slots = calloc((size_t)window, sizeof *slots);
    tmpl = malloc(size);
    out_buf = malloc(BATCH * size);
    unsigned char *in_buf = malloc(BATCH * size);
    if (!slots || !tmpl || !out_buf || !in_buf) fail("out of memory");
    for (size_t i = 0; i < size; i++) tmpl[i] = (unsigned char)('a' + i % 26);
    for (int i = 0; i < BATCH; i++) {
        memcpy(out_buf + (size_t)i * size, tmpl, size);
        memset(&out_msg[i], 0, sizeof out_msg[i]);
        out_msg[i].msg_hdr.msg_iov = &out_iov[i];
        out_msg[i].msg_hdr.msg_iovlen = 1;
    }
    struct mmsghdr in_msg[BATCH];
    struct iovec in_iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(&in_msg[i], 0, sizeof in_msg[i]);
        in_iov[i].iov_base = in_buf + (size_t)i * size;
        in_iov[i].iov_len = size;
        in_msg[i].msg_hdr.msg_iov = &in_iov[i];
        in_msg[i].msg_hdr.msg_iovlen = 1;
    }

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");

    int64_t timeout_ns = timeout_ms * 1000000LL;
    int64_t scan_every = timeout_ns / 10 > 1000000 ? timeout_ns / 10 : 1000000;
    int64_t start = now_ns();
    int64_t measure = start + (int64_t)(warmup * 1e9);
    int64_t deadline = measure + (int64_t)(seconds * 1e9);
    int64_t next_scan = start + scan_every;
    struct cpu c0 = self_cpu(), s0 = proc_cpu(server);
    double h0 = host_busy();
    long long d0 = udp_drops(my_port);
    measuring = warmup <= 0;
    long nslices = (long)((deadline - measure + SLICE_NS - 1) / SLICE_NS);
    if (nslices > MAX_SLICES) nslices = MAX_SLICES;
    long *slices = calloc((size_t)nslices, sizeof *slices);
    if (!slices) fail("out of memory");

    /* Fill the window. */
    for (int s = 0; s < window; s++) {
        queue((uint32_t)s, now_ns());
        if (nout == BATCH) flush();
    }
    flush();

    for (;;) {
        int64_t t = now_ns();
        if (!measuring && t >= measure) {
            measuring = 1;
            nlat = 0;
            c0 = self_cpu();
            s0 = proc_cpu(server);
            h0 = host_busy();
            d0 = udp_drops(my_port);
            n_sent = n_received = n_lost = n_late = n_errors = n_wakeups = n_recvs = 0;
        }
        if (t >= deadline) break;
        if (t >= next_scan) { /* replace the datagrams that timed out */
            for (int s = 0; s < window; s++) {
                if (t - slots[s].t0 >= timeout_ns) {
                    if (measuring) n_lost++;
                    queue((uint32_t)s, t);
                    if (nout == BATCH) flush();
                }
            }
            flush();
            next_scan = t + scan_every;
        }
        int64_t until = deadline < next_scan ? deadline : next_scan;
        if (!measuring && measure < until) until = measure;
        int wait_ms = (int)((until - t) / 1000000) + 1;
        int n = epoll_wait(ep, &ev, 1, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        if (n == 0) continue;
        if (measuring) n_wakeups++;
        for (;;) { /* read until the socket is empty */
            int r = recvmmsg(fd, in_msg, BATCH, MSG_DONTWAIT, NULL);
            if (r < 0) {
                if (errno == EAGAIN) break;
                if (errno == EINTR) continue;
                if (errno == ECONNREFUSED) { /* ICMP port unreachable: nothing listens */
                    count_error();
                    continue;
                }
                die("recvmmsg");
            }
            int64_t got = now_ns();
            if (measuring) n_recvs++;
            for (int i = 0; i < r; i++) {
                unsigned char *d = in_buf + (size_t)i * size;
                uint32_t s;
                uint64_t seq;
                int64_t t0;
                if (in_msg[i].msg_len != size || (in_msg[i].msg_hdr.msg_flags & MSG_TRUNC))
                    fail("an echo has the wrong length");
                memcpy(&s, d, 4);
                memcpy(&seq, d + 4, 8);
                memcpy(&t0, d + 12, 8);
                if (s >= (uint32_t)window || seq == 0 || seq >= next_seq ||
                    memcmp(d + HEADER, tmpl + HEADER, size - HEADER) != 0)
                    fail("the echo differs from every datagram sent");
                if (slots[s].seq != seq) { /* already declared lost and replaced */
                    if (measuring) n_late++;
                    continue;
                }
                if (slots[s].t0 != t0) fail("the echo's timestamp differs from the one sent");
                if (measuring && got < deadline) {
                    n_received++;
                    record(got - t0);
                    long sl = (long)((got - measure) / SLICE_NS);
                    if (sl < nslices) slices[sl]++;
                }
                queue(s, got);
            }
            flush();
            if (r < BATCH) break;
        }
    }
    int64_t end = now_ns();
    struct cpu c1 = self_cpu(), s1 = proc_cpu(server);
    double h1 = host_busy();
    long long d1 = udp_drops(my_port);

    /* Let the window come back before closing: echoes to a closed port would
       make ICMP errors at the server, which change what is measured next
       (an error path in the server, allocator state). */
    int outstanding = window;
    int64_t give_up = end + timeout_ns;
    while (outstanding > 0) {
        int64_t t = now_ns();
        if (t >= give_up) break;
        int n = epoll_wait(ep, &ev, 1, (int)((give_up - t) / 1000000) + 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (;;) {
            int r = recvmmsg(fd, in_msg, BATCH, MSG_DONTWAIT, NULL);
            if (r < 0) {
                if (errno == EINTR || errno == ECONNREFUSED) continue;
                if (errno == EAGAIN) break;
                die("recvmmsg");
            }
            for (int i = 0; i < r; i++) {
                uint32_t sl;
                uint64_t seq;
                memcpy(&sl, in_buf + (size_t)i * size, 4);
                memcpy(&seq, in_buf + (size_t)i * size + 4, 8);
                if (in_msg[i].msg_len == size && sl < (uint32_t)window && slots[sl].seq == seq) {
                    slots[sl].seq = 0; /* answered */
                    outstanding--;
                }
            }
            if (r < BATCH) break;
        }
    }
    close(fd);

    double secs = (double)(end - measure) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    printf("sent=%lld received=%lld lost=%lld late=%lld errors=%lld seconds=%.4f pps=%.1f p50_us=%.1f "
           "p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f cpu_user=%.4f cpu_sys=%.4f",
           n_sent, n_received, n_lost, n_late, n_errors, secs, (double)n_received / secs, pct_us(0.5), pct_us(0.9),
           pct_us(0.99), pct_us(0.999), nlat ? lat[nlat - 1] / 1000.0 : 0.0, c1.user - c0.user, c1.sys - c0.sys);
    if (server) printf(" server_cpu_user=%.4f server_cpu_sys=%.4f", s1.user - s0.user, s1.sys - s0.sys);
    printf(" host_busy=%.2f client_drops=%lld wakeups=%lld recv_calls=%lld unanswered=%d series=", h1 - h0,
           d0 < 0 || d1 < 0 ? -1 : d1 - d0, n_wakeups, n_recvs, outstanding);
    for (long sl = 0; sl < nslices; sl++) printf("%s%ld", sl ? "," : "", slices[sl]);
    printf("\n");
    return 0;
}

int main(int argc, char **argv) { return udp(argc, argv); }
