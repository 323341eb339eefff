/* asan_direct.c: the shim linked in directly (as a Rust #[global_allocator]
 * would use it), built with -fsanitize=address,undefined together with
 * csrc/rsprof_shim.c. Threads allocate, reallocate and free through wrappers
 * that call the shim API around the real functions. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rsprof_shim.h"

#define NTHREADS 6
#define ROUNDS 3000

__attribute__((noinline)) static void *my_alloc(size_t n)
{
    void *p = malloc(n);
    rsprof_shim_record_alloc(p, n);
    return p;
}

__attribute__((noinline)) static void my_free(void *p)
{
    rsprof_shim_record_free(p);
    free(p);
}

__attribute__((noinline)) static void *my_realloc(void *p, size_t n)
{
    struct rsprof_shim_realloc r;
    rsprof_shim_realloc_begin(&r, p);
    void *q = realloc(p, n);
    rsprof_shim_realloc_end(&r, q, n, q != NULL || n == 0);
    return q;
}

__attribute__((noinline)) static int nest(int depth, size_t n)
{
    if (depth == 0) {
        char *p = my_alloc(n);
        memset(p, 7, n);
        p = my_realloc(p, n * 2);
        memset(p, 8, n * 2);
        my_free(p);
        return 1;
    }
    return nest(depth - 1, n) + 1;
}

static void *worker(void *arg)
{
    long t = (long)arg;
    for (int i = 0; i < ROUNDS; i++)
        nest((int)((i + t) % 80), (size_t)(16 + (i % 7) * 8));
    return NULL;
}

int main(void)
{
    if (!rsprof_shim_init()) {
        fprintf(stderr, "no region\n");
        return 2;
    }
    pthread_t th[NTHREADS];
    for (long t = 0; t < NTHREADS; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    printf("done %d\n", rsprof_shim_recording());
    return 0;
}
