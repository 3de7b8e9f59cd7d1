// A model of the flusher's write pattern, without the broker: appends of 1.1 KB arrive at
// 2,000/s; one writer takes everything queued, writes it and syncs it, then answers it.
// Prints the p50/p99/p999/max of the time from arrival to answer (docs/benchmarks.md, set H).
//
//   cc -O2 -o /tmp/gcm benches/group_commit_model.c -lpthread
//   dd if=/dev/zero of=$DIR/pre bs=1M count=64 conv=fdatasync
//   /tmp/gcm 1 $DIR/pre              # overwrite inside a zero-filled file (the journal)
//   /tmp/gcm 0 $DIR/app              # append to one growing file
//   mkdir $DIR/obj.d; /tmp/gcm 2 $DIR/obj $DIR/obj.d   # new file + fdatasync + dir fsync (an object)
//   /tmp/gcm 3 $DIR/pre              # as 1, but O_DIRECT|O_DSYNC writes padded to 4 KiB, no fdatasync
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_N 30000
#define RATE 2000.0
#define RECORD 1100

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double arrived[MAX_N], latency[MAX_N];
/* Appends to model (GCM_RECORDS, default and at most MAX_N). */
static int N = MAX_N;
static int produced = 0;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void *arrivals(void *unused) {
    (void)unused;
    double t0 = now();
    for (int i = 0; i < N; i++) {
        double d, due = t0 + i / RATE;
        while ((d = due - now()) > 0)
            if (d > 0.0002) usleep((useconds_t)((d - 0.0001) * 1e6));
        pthread_mutex_lock(&mu);
        arrived[i] = now();
        produced = i + 1;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 3 || (atoi(argv[1]) == 2 && argc < 4)) {
        fprintf(stderr, "usage: %s 0|1 FILE | %s 2 PREFIX DIR\n", argv[0], argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]);
    if (getenv("GCM_RECORDS")) {
        N = atoi(getenv("GCM_RECORDS"));
        if (N < 1 || N > MAX_N) N = MAX_N;
    }
    static char buf[1 << 20] __attribute__((aligned(4096)));
    memset(buf, 'x', sizeof buf);
    int flags = O_RDWR | O_CREAT | (mode == 0 ? O_TRUNC : 0) | (mode == 3 ? O_DIRECT | O_DSYNC : 0);
    int fd = mode == 2 ? -1 : open(argv[2], flags, 0644);
    long pos = 0;
    int done = 0;
    pthread_t producer;
    pthread_create(&producer, NULL, arrivals, NULL);
    while (done < N) {
        pthread_mutex_lock(&mu);
        while (produced == done) pthread_cond_wait(&cv, &mu);
        int upto = produced;
        pthread_mutex_unlock(&mu);
        size_t len = (size_t)(upto - done) * RECORD;
        if (len > sizeof buf) len = sizeof buf;
        if (mode == 2) {
            char name[4096];
            snprintf(name, sizeof name, "%s/%d", argv[3], done);
            int f = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (write(f, buf, len) < 0 || fdatasync(f) < 0) return 1;
            close(f);
            int d = open(argv[3], O_RDONLY);
            fsync(d);
            close(d);
        } else if (mode == 3) {
            len = (len + 4095) & ~(size_t)4095;
            if (pwrite(fd, buf, len, pos) < 0) return 1;
            pos += (long)len;
        } else {
            if (pwrite(fd, buf, len, pos) < 0 || fdatasync(fd) < 0) return 1;
            pos += (long)len;
        }
        double t = now();
        for (int i = done; i < upto; i++) latency[i] = t - arrived[i];
        done = upto;
    }
    qsort(latency, N, sizeof(double), cmp);
    printf("mode %d p50 %.2f p99 %.2f p999 %.2f max %.2f ms\n", mode, latency[N / 2] * 1e3,
           latency[N * 99 / 100] * 1e3, latency[N * 999 / 1000] * 1e3, latency[N - 1] * 1e3);
    return 0;
}
