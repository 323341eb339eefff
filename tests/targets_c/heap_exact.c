/* heap_exact.c: known allocations through every interposed function.
 *
 * NTHREADS threads each run `iters` rounds; every round allocates once at
 * each site_* function (one call of one allocator function each), then frees
 * half of the blocks itself and hands the other half to a shared queue that
 * any thread (or main, at the end) frees. Thread 0 also leaks LEAK_COUNT
 * blocks of LEAK_SIZE at site_leak. The test derives every expected count and
 * byte total from these constants (keep them in sync with test_shim_heap.py).
 *
 * Built with -O2 -fno-omit-frame-pointer -fno-optimize-sibling-calls
 * -fno-inline -no-pie, so the first frame of each allocation lies inside its
 * site function.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NTHREADS 8
#define NSITES 12
#define LEAK_COUNT 37
#define LEAK_SIZE 1000
#define MAX_ITERS 2000

#define NOINLINE __attribute__((noinline))

NOINLINE void *site_malloc(void) { void *p = malloc(24); return p; }
NOINLINE void *site_calloc(void) { void *p = calloc(10, 8); return p; }
NOINLINE void *site_realloc_null(void) { void *p = realloc(NULL, 40); return p; }
NOINLINE void *site_realloc_base(void) { void *p = malloc(16); return p; }
NOINLINE void *site_realloc_grow(void *old) { void *p = realloc(old, 4000); return p; }
NOINLINE void *site_reallocarray_base(void) { void *p = malloc(8); return p; }
NOINLINE void *site_reallocarray(void *old) { void *p = reallocarray(old, 50, 16); return p; }
NOINLINE void *site_posix_memalign(void)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, 200) != 0)
        return NULL;
    return p;
}
NOINLINE void *site_aligned_alloc(void) { void *p = aligned_alloc(128, 256); return p; }
NOINLINE void *site_memalign(void) { void *p = memalign(256, 300); return p; }
NOINLINE void *site_valloc(void) { void *p = valloc(500); return p; }
NOINLINE void *site_pvalloc(void) { void *p = pvalloc(600); return p; }
NOINLINE void *site_leak(void) { void *p = malloc(LEAK_SIZE); return p; }

static void *leaked[LEAK_COUNT];
static int iters = 100;

/* A bounded queue of blocks to free on another thread (no allocation). */
static void *queue[NTHREADS * MAX_ITERS * NSITES];
static size_t q_head, q_tail;
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;

static void push(void *p)
{
    pthread_mutex_lock(&q_lock);
    queue[q_tail++ % (sizeof(queue) / sizeof(queue[0]))] = p;
    pthread_mutex_unlock(&q_lock);
}

static void *pop(void)
{
    void *p = NULL;
    pthread_mutex_lock(&q_lock);
    if (q_head != q_tail)
        p = queue[q_head++ % (sizeof(queue) / sizeof(queue[0]))];
    pthread_mutex_unlock(&q_lock);
    return p;
}

NOINLINE void free_local(void *p) { free(p); }
NOINLINE void free_remote(void *p) { free(p); }

static void check(void *p, const char *what)
{
    if (p == NULL) {
        fprintf(stderr, "allocation failed: %s\n", what);
        exit(3);
    }
    memset(p, 0xab, 8);
}

static void *worker(void *arg)
{
    long t = (long)arg;
    void *blocks[NSITES];
    for (int i = 0; i < iters; i++) {
        int n = 0;
        blocks[n++] = site_malloc();
        blocks[n++] = site_calloc();
        blocks[n++] = site_realloc_null();
        void *b = site_realloc_base();
        check(b, "realloc base");
        blocks[n++] = site_realloc_grow(b);
        b = site_reallocarray_base();
        check(b, "reallocarray base");
        blocks[n++] = site_reallocarray(b);
        blocks[n++] = site_posix_memalign();
        blocks[n++] = site_aligned_alloc();
        blocks[n++] = site_memalign();
        blocks[n++] = site_valloc();
        blocks[n++] = site_pvalloc();
        for (int k = 0; k < n; k++) {
            check(blocks[k], "site");
            if ((k + i + (int)t) % 2 == 0)
                free_local(blocks[k]);
            else
                push(blocks[k]);
        }
        void *r;
        for (int k = 0; k < 4 && (r = pop()) != NULL; k++)
            free_remote(r);
        if (t == 0 && i < LEAK_COUNT) {
            leaked[i] = site_leak();
            check(leaked[i], "leak");
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        iters = atoi(argv[1]);
    if (iters < LEAK_COUNT || iters > MAX_ITERS)
        return 2;
    pthread_t th[NTHREADS];
    for (long t = 0; t < NTHREADS; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    void *r;
    while ((r = pop()) != NULL)
        free_remote(r);
    printf("done %p\n", leaked[0]);
    return 0;
}
