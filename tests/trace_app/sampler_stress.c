/* sampler_stress.c: the SIGPROF self-sampler interrupting allocation hooks.
 *
 * Linked with csrc/rsprof_shim.c and csrc/rsprof_sampler.c. The process is
 * its own reader: it maps its region, asks for self-sampling (reserved0) at
 * RSPROF_TRACE_CPU_HZ = 5000, sets RECORDING and drains the ring, pausing the
 * drain for 200 ms every 500 ms so that the ring fills and the hooks wait
 * for space while SIGPROF keeps interrupting them. Worker threads malloc,
 * realloc and free through the shim's API in a tight loop.
 *
 * With "foreign" as second argument, a SIGPROF handler of the program's own
 * is installed first (rsprof must leave it and sample nothing).
 *
 * Prints "foreign_kept 0|1", then "samples S hook_samples H worker_samples W allocs A frees F
 * dropped D waits X malformed M" and exits 0; a deadlock is caught by
 * alarm() (exit by SIGALRM).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rsprof_shim.h"
#include "rsprof_shm.h"

const uint32_t RSPROF_TRACE_CPU_HZ = 5000;

#define WORKERS 4
static volatile int g_stop;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) void *traced_malloc(size_t n)
{
    void *p = malloc(n);
    rsprof_shim_record_alloc(p, n);
    return p;
}

__attribute__((noinline)) void traced_free(void *p)
{
    rsprof_shim_record_free(p);
    free(p);
}

__attribute__((noinline)) void *traced_realloc(void *old, size_t n)
{
    struct rsprof_shim_realloc r;
    rsprof_shim_realloc_begin(&r, old);
    void *p = realloc(old, n);
    rsprof_shim_realloc_end(&r, p, n, p != NULL);
    return p;
}

__attribute__((noinline)) void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    void *keep[64] = {0};
    while (!g_stop) {
        for (int i = 0; i < 64; i++) {
            seed = seed * 1103515245u + 12345u;
            size_t n = 16 + (seed >> 16) % 4000;
            if (keep[i] != NULL && (seed & 1))
                keep[i] = traced_realloc(keep[i], n);
            else {
                traced_free(keep[i]);
                keep[i] = traced_malloc(n);
            }
        }
    }
    for (int i = 0; i < 64; i++)
        traced_free(keep[i]);
    return NULL;
}

static struct rsprof_shm_header *map_own_region(size_t *len_out)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "rsprof-%d-", (int)getpid());
    DIR *d = opendir("/dev/shm");
    struct dirent *de;
    char path[512] = "";
    while (d != NULL && (de = readdir(d)) != NULL)
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
            snprintf(path, sizeof(path), "/dev/shm/%s", de->d_name);
    if (d != NULL)
        closedir(d);
    int fd = open(path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "no region %s\n", prefix);
        exit(3);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        exit(3);
    *len_out = (size_t)st.st_size;
    return map;
}

static int name_starts(uint64_t addr, const char *prefix)
{
    Dl_info info;
    return dladdr((void *)(uintptr_t)addr, &info) && info.dli_sname != NULL &&
           strncmp(info.dli_sname, prefix, strlen(prefix)) == 0;
}

static void foreign_handler(int sig)
{
    (void)sig;
}

int main(int argc, char **argv)
{
    /* "foreign": the program has a SIGPROF handler of its own; rsprof must
     * leave it alone and take no samples. */
    int foreign = argc > 2 && strcmp(argv[2], "foreign") == 0;
    if (foreign)
        signal(SIGPROF, foreign_handler);
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    alarm(60); /* a deadlock ends here, with SIGALRM */
    if (!rsprof_shim_init())
        return 3;
    size_t len;
    struct rsprof_shm_header *h = map_own_region(&len);
    uint8_t *data = (uint8_t *)h + h->header_bytes;
    uint64_t mask = h->ring_size - 1;
    __atomic_fetch_add(&h->session, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&h->reader_pid, (uint32_t)getpid(), __ATOMIC_RELEASE);
    __atomic_store_n(&h->heartbeat_ns, now_ns(), __ATOMIC_RELEASE);
    __atomic_store_n(&h->reserved0, 99u, __ATOMIC_RELEASE);
    __atomic_store_n(&h->state, RSPROF_STATE_RECORDING, __ATOMIC_RELEASE);

    pthread_t th[WORKERS];
    for (uintptr_t i = 0; i < WORKERS; i++)
        pthread_create(&th[i], NULL, worker, (void *)(i + 1));

    uint64_t samples = 0, hook = 0, in_worker = 0, allocs = 0, frees = 0, malformed = 0;
    uint64_t start = now_ns(), tail = 0;
    uint64_t frames[RSPROF_MAX_FRAMES + 8];
    for (;;) {
        uint64_t now = now_ns();
        int stopping = now - start > (uint64_t)(seconds * 1e9);
        if (stopping && !g_stop) {
            g_stop = 1;
            for (int i = 0; i < WORKERS; i++)
                pthread_join(th[i], NULL);
            __atomic_store_n(&h->state, RSPROF_STATE_IDLE, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&h->heartbeat_ns, now, __ATOMIC_RELEASE);
        if (!stopping && ((now - start) / 1000000) % 500 < 200) {
            usleep(1000); /* not draining: the ring fills, hooks wait */
            continue;
        }
        int progressed = 0;
        for (;;) {
            uint64_t *wp = (uint64_t *)(void *)(data + (tail & mask));
            uint64_t word = __atomic_load_n(wp, __ATOMIC_ACQUIRE);
            if (word == 0)
                break;
            uint32_t size = rsprof_rec_size(word);
            if (size < 8 || (size & 7) || size > h->ring_size) {
                malformed++;
                fprintf(stderr, "malformed word %llx\n", (unsigned long long)word);
                return 4;
            }
            uint64_t body[4];
            for (uint32_t k = 0; k < 4 && k * 8 < size; k++)
                body[k] = *(uint64_t *)(void *)(data + ((tail + 8 * k) & mask));
            switch (RSPROF_REC_TYPE(word)) {
            case RSPROF_REC_ALLOC:
            case RSPROF_REC_ALLOC_BIG:
            case RSPROF_REC_ALLOC_RAW:
                allocs++;
                break;
            case RSPROF_REC_FREE:
                frees++;
                break;
            case RSPROF_REC_SAMPLE: {
                uint32_t depth = (uint32_t)(body[1] >> 32);
                if (depth < 1 || depth > RSPROF_MAX_FRAMES ||
                    size != sizeof(struct rsprof_rec_sample) + 8 * depth) {
                    malformed++;
                    break;
                }
                samples++;
                for (uint32_t k = 0; k < depth; k++)
                    frames[k] = *(uint64_t *)(void *)(data + ((tail + sizeof(struct rsprof_rec_sample) +
                                                               8 * k) & mask));
                if (name_starts(frames[0], "rsprof_shim_"))
                    hook++;
                for (uint32_t k = 1; k < depth; k++)
                    if (name_starts(frames[k], "worker")) {
                        in_worker++;
                        break;
                    }
                break;
            }
            default:
                break;
            }
            for (uint32_t k = 0; k < size; k += 8)
                *(uint64_t *)(void *)(data + ((tail + k) & mask)) = 0;
            tail += size;
            __atomic_store_n(&h->tail, tail, __ATOMIC_RELEASE);
            progressed = 1;
        }
        if (stopping && !progressed &&
            __atomic_load_n(&h->reserve, __ATOMIC_ACQUIRE) == tail)
            break;
        if (!progressed)
            usleep(500);
    }
    struct sigaction cur;
    sigaction(SIGPROF, NULL, &cur);
    printf("foreign_kept %d\n", foreign && cur.sa_handler == foreign_handler);
    printf("samples %llu hook_samples %llu worker_samples %llu allocs %llu frees %llu "
           "dropped %llu waits %llu malformed %llu\n",
           (unsigned long long)samples, (unsigned long long)hook,
           (unsigned long long)in_worker, (unsigned long long)allocs,
           (unsigned long long)frees, (unsigned long long)h->dropped,
           (unsigned long long)h->waits, (unsigned long long)malformed);
    return 0;
}
