/* glibc_semantics.c: prints one line per allocator behaviour; the test runs it
 * with and without the shim and compares, and checks the expected values.
 * Lines "ptr NAME 0x..." name blocks whose records the test looks for. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                         \
    do {                                         \
        if (!(cond)) {                           \
            failures++;                          \
            printf("FAIL %s:%d ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                 \
            printf("\n");                        \
        }                                        \
    } while (0)

static int aligned(void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

int main(void)
{
    long page = sysconf(_SC_PAGESIZE);
    void *p;
    int rc;

    /* free keeps errno, also free(NULL) */
    p = malloc(10);
    errno = 1234;
    free(p);
    CHECK(errno == 1234, "errno after free: %d", errno);
    free(NULL);
    CHECK(errno == 1234, "errno after free(NULL): %d", errno);

    /* calloc overflow */
    errno = 0;
    p = calloc(SIZE_MAX / 2, 4);
    CHECK(p == NULL && errno == ENOMEM, "calloc overflow: %p errno %d", p, errno);
    printf("calloc_overflow %d %d\n", p == NULL, errno);

    /* posix_memalign: EINVAL for a bad alignment, errno untouched */
    errno = 77;
    p = (void *)1;
    rc = posix_memalign(&p, 3, 16);
    CHECK(rc == EINVAL && errno == 77, "posix_memalign(3): rc %d errno %d", rc, errno);
    printf("posix_memalign_bad %d %d\n", rc, errno);
    rc = posix_memalign(&p, 64, 100);
    CHECK(rc == 0 && aligned(p, 64), "posix_memalign(64): %d %p", rc, p);
    free(p);

    /* realloc(NULL, n) is malloc */
    p = realloc(NULL, 50);
    CHECK(p != NULL, "realloc(NULL, 50)");
    printf("ptr realloc_null %p\n", p);
    /* realloc(p, 0) frees p and returns NULL (glibc) */
    void *q = realloc(p, 0);
    printf("ptr realloc_zero %p\n", p);
    printf("realloc_zero_result %d\n", q == NULL);

    /* a failed realloc leaves the old block valid (PAD record, no FREE) */
    p = malloc(32);
    printf("ptr realloc_fail %p\n", p);
    errno = 0;
    q = realloc(p, SIZE_MAX - 4096);
    CHECK(q == NULL && errno == ENOMEM, "huge realloc: %p %d", q, errno);
    memset(p, 1, 32);
    errno = 0;
    q = reallocarray(p, SIZE_MAX / 2, 4);
    CHECK(q == NULL && errno == ENOMEM, "reallocarray overflow: %p %d", q, errno);
    memset(p, 2, 32);
    free(p);

    /* memalign / valloc / pvalloc / aligned_alloc alignment */
    p = memalign(4096, 10);
    CHECK(p && aligned(p, 4096), "memalign(4096)");
    free(p);
    p = memalign(48, 10); /* glibc rounds the alignment up to a power of two */
    printf("memalign48 %d %d\n", p != NULL, p ? aligned(p, 64) : -1);
    free(p);
    p = valloc(10);
    CHECK(p && aligned(p, (size_t)page), "valloc");
    free(p);
    p = pvalloc(10);
    CHECK(p && aligned(p, (size_t)page) && malloc_usable_size(p) >= (size_t)page, "pvalloc");
    printf("pvalloc_usable_ge_page %d\n", p ? malloc_usable_size(p) >= (size_t)page : -1);
    free(p);
    p = aligned_alloc(256, 512);
    CHECK(p && aligned(p, 256), "aligned_alloc(256)");
    free(p);
    errno = 0;
    p = aligned_alloc(3, 10);
    printf("aligned_alloc3 %d %d\n", p != NULL, errno);
    free(p);
    errno = 0;
    p = memalign(SIZE_MAX / 2 + 2, 10);
    printf("memalign_huge %d %d\n", p != NULL, errno);
    free(p);

    /* malloc_usable_size passes through */
    p = malloc(100);
    CHECK(malloc_usable_size(p) >= 100, "usable size %zu", malloc_usable_size(p));
    printf("ptr usable %p\n", p);
    free(p);

    /* malloc(0) and calloc(0, n) give unique blocks */
    p = malloc(0);
    q = calloc(0, 5);
    CHECK(p && q && p != q, "zero-size blocks");
    free(p);
    free(q);

    printf("failures %d\n", failures);
    return failures ? 1 : 0;
}
