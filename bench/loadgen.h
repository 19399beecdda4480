/*
 * loadgen.h: what the C load generators of bench/ share: errors, clocks,
 * CPU time (this process, the server's, the whole machine's), argument
 * parsing, and the loopback-only address check. Define LOADGEN_NAME (the
 * program's name, for its messages) before including it; the includes it
 * needs come first in each program.
 */
#ifndef METAKIT_BENCH_LOADGEN_H
#define METAKIT_BENCH_LOADGEN_H

static inline void die(const char *what) {
    fprintf(stderr, LOADGEN_NAME ": %s: %s\n", what, strerror(errno));
    exit(1);
}

static inline void fail(const char *what) {
    fprintf(stderr, LOADGEN_NAME ": %s\n", what);
    exit(1);
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline double cpu_seconds(const struct timeval *tv) {
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

struct cpu {
    double user, sys;
};

static inline struct cpu self_cpu(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) die("getrusage");
    struct cpu c = {cpu_seconds(&ru.ru_utime), cpu_seconds(&ru.ru_stime)};
    return c;
}

/* utime and stime (fields 14 and 15) of /proc/PID/stat, in seconds. */
static inline struct cpu proc_cpu(long pid) {
    struct cpu c = {0, 0};
    if (pid <= 0) return c;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("open /proc/PID/stat");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p) fail("bad /proc/PID/stat");
    p += 2; /* field 3 (state) starts here */
    unsigned long long ut = 0, st = 0;
    if (sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        fail("bad /proc/PID/stat");
    double hz = (double)sysconf(_SC_CLK_TCK);
    c.user = (double)ut / hz;
    c.sys = (double)st / hz;
    return c;
}

/* Busy time of the whole machine (every CPU; all but idle and iowait), seconds. */
static inline double host_busy(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) die("open /proc/stat");
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
    fclose(f);
    if (n < 4) fail("bad /proc/stat");
    /* user nice system idle iowait irq softirq steal */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static inline long parse_long(const char *s, const char *what, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        fprintf(stderr, LOADGEN_NAME ": bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

static inline double parse_double(const char *s, const char *what) {
    char *end;
    double v = strtod(s, &end);
    if (*end || v < 0 || v > 3600) {
        fprintf(stderr, LOADGEN_NAME ": bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

static inline struct sockaddr_in loopback(const char *host, long port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || strcmp(host, "127.0.0.1") != 0) {
        fprintf(stderr, LOADGEN_NAME ": only 127.0.0.1 is allowed, not %s\n", host);
        exit(2);
    }
    return sa;
}

#endif
