/* bench_drain.c: a minimal C reader of a shim region, to measure the shim's
 * own cost without a Python reader being the bottleneck. Usage:
 *   bench_drain NAME   drains until SIGTERM/SIGINT, then once more; prints
 *                      "records N bytes B" */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rsprof_shm.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    char path[512];
    snprintf(path, sizeof(path), "/dev/shm/%s", argv[1][0] == '/' ? argv[1] + 1 : argv[1]);
    int fd = open(path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 3;
    uint8_t *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return 4;
    struct rsprof_shm_header *h = (struct rsprof_shm_header *)base;
    uint8_t *data = base + RSPROF_SHM_HEADER_BYTES;
    uint64_t mask = h->ring_size - 1, records = 0, bytes = 0;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("ready\n");
    fflush(stdout);
    for (int last = 0; !last;) {
        last = stop;
        uint64_t tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
        uint64_t start = tail;
        for (;;) {
            uint64_t *wp = (uint64_t *)(void *)(data + (tail & mask));
            uint64_t word = __atomic_load_n(wp, __ATOMIC_ACQUIRE);
            if (word == 0)
                break;
            uint32_t size = rsprof_rec_size(word);
            if (size < 8 || (size & 7) || size > 4096)
                return 5;
            uint64_t off = tail & mask;
            if (off + size <= mask + 1) {
                memset(data + off, 0, size);
            } else {
                memset(data + off, 0, mask + 1 - off);
                memset(data, 0, size - (mask + 1 - off));
            }
            tail += size;
            records++;
        }
        bytes += tail - start;
        __atomic_store_n(&h->tail, tail, __ATOMIC_RELEASE);
        __atomic_store_n(&h->heartbeat_ns, now_ns(), __ATOMIC_RELEASE);
        if (tail == start) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    printf("records %llu bytes %llu\n", (unsigned long long)records, (unsigned long long)bytes);
    return 0;
}
