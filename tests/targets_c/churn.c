/* churn.c: driven by commands on stdin (one per line), answers "ok" on stdout.
 *   a N SIZE   N malloc/free pairs of SIZE bytes at one site (site_a)
 *   b N SIZE   the same at another site (site_b)
 *   d N        N allocations from N different stacks (recursion depth 1..N)
 *   t N        N malloc/free pairs of 32 bytes, then print the elapsed ns
 *   q          exit
 * With arguments "loop N [threads]" it instead runs N small malloc/free pairs
 * (on each of `threads` threads) and prints the elapsed ns: the benchmark. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) void site_a(long n, size_t size)
{
    for (long i = 0; i < n; i++) {
        void *p = malloc(size);
        if (p == NULL)
            exit(3);
        ((volatile char *)p)[0] = 1;
        free(p);
    }
}

__attribute__((noinline)) void site_b(long n, size_t size)
{
    for (long i = 0; i < n; i++) {
        void *p = malloc(size);
        if (p == NULL)
            exit(3);
        ((volatile char *)p)[0] = 1;
        free(p);
    }
}

__attribute__((noinline)) int deep(int depth)
{
    if (depth <= 0) {
        void *p = malloc(48);
        ((volatile char *)p)[0] = 1;
        free(p);
        return 0;
    }
    return deep(depth - 1) + 1;
}

static long loop_n;

static void *loop_thread(void *arg)
{
    (void)arg;
    site_a(loop_n, 32);
    return NULL;
}

int main(int argc, char **argv)
{
    char line[128];
    if (argc > 2 && strcmp(argv[1], "loop") == 0) {
        loop_n = atol(argv[2]);
        int threads = argc > 3 ? atoi(argv[3]) : 1;
        pthread_t th[64];
        if (threads < 1 || threads > 64)
            return 2;
        uint64_t t0 = now_ns();
        if (threads == 1) {
            site_a(loop_n, 32);
        } else {
            for (int i = 0; i < threads; i++)
                pthread_create(&th[i], NULL, loop_thread, NULL);
            for (int i = 0; i < threads; i++)
                pthread_join(th[i], NULL);
        }
        printf("%llu\n", (unsigned long long)(now_ns() - t0));
        return 0;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof(line), stdin) != NULL) {
        char cmd = 0;
        long n = 0, size = 32;
        if (sscanf(line, "%c %ld %ld", &cmd, &n, &size) < 1)
            continue;
        if (cmd == 'q')
            break;
        if (cmd == 'a') {
            site_a(n, (size_t)size);
        } else if (cmd == 'b') {
            site_b(n, (size_t)size);
        } else if (cmd == 'd') {
            for (int i = 1; i <= n; i++)
                deep(i);
        } else if (cmd == 't') {
            uint64_t t0 = now_ns();
            site_a(n, 32);
            printf("ns %llu\n", (unsigned long long)(now_ns() - t0));
            continue;
        }
        printf("ok\n");
    }
    return 0;
}
