/* rsprof_preload.c: the LD_PRELOAD interposer of librsprof_shim.so.
 *
 * Every interposed function is listed once, in RSPROF_INTERPOSED below; that
 * list generates the pointers to the real functions, their resolution with
 * dlsym(RTLD_NEXT, ...) and the hooks themselves. malloc_usable_size is not
 * interposed: it goes to libc untouched.
 *
 * Semantics are glibc's, because the real function does the work; the hook
 * only records around it: ALLOC after the real allocation returned, FREE
 * before the real free, realloc as described in rsprof_shim.h. A call that a
 * real function makes into another hook (glibc's reallocarray calls realloc
 * through the PLT) passes through unrecorded. The shim preserves errno, so
 * free keeps errno, posix_memalign does not touch it, and calloc's overflow
 * check, realloc(p, 0) (frees p, returns NULL) and the alignment checks are
 * glibc's own.
 *
 * Bootstrap: the first hook call resolves every real function. dlsym may
 * itself call malloc/calloc/realloc/free; on the resolving thread those calls
 * are served from a small static buffer whose blocks are never given to the
 * real free (free ignores them, realloc copies them out).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <pthread.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "rsprof_shim_internal.h"

/* name, return type, parameters, arguments, kind, size factors, alignment */
#define RSPROF_INTERPOSED(X)                                                              \
    X(malloc, void *, (size_t n), (n), ALLOC, n, 1, 16)                               \
    X(calloc, void *, (size_t n, size_t m), (n, m), ALLOC, n, m, 16)                  \
    X(realloc, void *, (void *p, size_t n), (p, n), REALLOC, n, 1, 16)                \
    X(reallocarray, void *, (void *p, size_t n, size_t m), (p, n, m), REALLOC, n, m, 16) \
    X(posix_memalign, int, (void **out, size_t a, size_t n), (out, a, n), POSIX, n, 1, a) \
    X(aligned_alloc, void *, (size_t a, size_t n), (a, n), ALLOC, n, 1, a)            \
    X(memalign, void *, (size_t a, size_t n), (a, n), ALLOC, n, 1, a)                 \
    X(valloc, void *, (size_t n), (n), ALLOC, n, 1, 4096)                             \
    X(pvalloc, void *, (size_t n), (n), ALLOC, n, 1, 4096)                            \
    X(free, void, (void *p), (p), FREE, 0, 0, 16)

/* ---- the real functions ------------------------------------------------- */

#define DECLARE_REAL(name, ret, params, args, kind, sa, sb, align) \
    static ret(*real_##name) params;
RSPROF_INTERPOSED(DECLARE_REAL)

static int g_resolved;                      /* 0 no, 1 resolving, 2 done (atomic) */
static RSPROF_IE_TLS int t_resolving;       /* this thread is inside dlsym */
/* Set around a real function while recording: libc calls malloc functions
 * through the PLT (glibc's reallocarray calls realloc), and such nested calls
 * must pass through unrecorded, or one realloc would be recorded twice. */
static RSPROF_IE_TLS int t_in_real;

static void die(const char *msg)
{
    ssize_t r = write(2, msg, strlen(msg));
    (void)r;
    _exit(127);
}

/* Stand-ins for functions an older (or newer) libc does not export. */
static void *fallback_reallocarray(void *p, size_t n, size_t m)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, m, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_realloc(p, bytes);
}

static void *fallback_valloc(size_t n)
{
    return real_memalign((size_t)getpagesize(), n);
}

static void *fallback_pvalloc(size_t n)
{
    size_t page = (size_t)getpagesize();
    size_t rounded;
    if (__builtin_add_overflow(n, page - 1, &rounded)) {
        errno = ENOMEM;
        return NULL;
    }
    rounded &= ~(page - 1);
    return real_memalign(page, rounded ? rounded : page);
}

static void resolve(void)
{
    int st = 0;
    if (__atomic_compare_exchange_n(&g_resolved, &st, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        t_resolving = 1;
#define RESOLVE(name, ret, params, args, kind, sa, sb, align) \
        real_##name = (ret(*) params)dlsym(RTLD_NEXT, #name);
        RSPROF_INTERPOSED(RESOLVE)
        t_resolving = 0;
        if (real_reallocarray == NULL)
            real_reallocarray = fallback_reallocarray;
        if (real_aligned_alloc == NULL)
            real_aligned_alloc = real_memalign;
        if (real_valloc == NULL)
            real_valloc = fallback_valloc;
        if (real_pvalloc == NULL)
            real_pvalloc = fallback_pvalloc;
        if (!real_malloc || !real_free || !real_calloc || !real_realloc || !real_memalign ||
            !real_posix_memalign)
            die("rsprof shim: cannot find the real malloc functions\n");
        __atomic_store_n(&g_resolved, 2, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&g_resolved, __ATOMIC_ACQUIRE) != 2) {
        if (t_resolving)
            return; /* dlsym calling back: the caller uses the bootstrap buffer */
        sched_yield();
    }
}

/* Non-zero when the caller must use the bootstrap buffer. */
static inline int bootstrapping(void)
{
    if (RSPROF_LIKELY(__atomic_load_n(&g_resolved, __ATOMIC_ACQUIRE) == 2))
        return 0;
    resolve();
    return __atomic_load_n(&g_resolved, __ATOMIC_ACQUIRE) != 2;
}

/* ---- the bootstrap buffer ------------------------------------------------- */

#define BOOT_BYTES (64 * 1024)
static _Alignas(4096) uint8_t g_boot[BOOT_BYTES];
static size_t g_boot_used; /* atomic */

static inline int is_boot(const void *p)
{
    return (const uint8_t *)p >= g_boot && (const uint8_t *)p < g_boot + BOOT_BYTES;
}

/* A never-freed block with its size in the 8 bytes before it (zeroed memory). */
static void *boot_alloc(size_t size, size_t align)
{
    if (align < 16)
        align = 16;
    if (align > 4096 || (align & (align - 1)) != 0 || size > BOOT_BYTES) {
        errno = align > 4096 ? ENOMEM : EINVAL;
        return NULL;
    }
    size_t used = __atomic_load_n(&g_boot_used, __ATOMIC_RELAXED);
    for (;;) {
        size_t start = (used + 8 + align - 1) & ~(align - 1);
        size_t end = start + ((size + 15) & ~(size_t)15);
        if (end > BOOT_BYTES) {
            errno = ENOMEM;
            return NULL;
        }
        if (__atomic_compare_exchange_n(&g_boot_used, &used, end, 1, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            uint64_t sz = size;
            memcpy(g_boot + start - 8, &sz, 8);
            return g_boot + start;
        }
    }
}

static size_t boot_size(const void *p)
{
    uint64_t sz;
    memcpy(&sz, (const uint8_t *)p - 8, 8);
    return (size_t)sz;
}

/* ---- hook bodies per kind ------------------------------------------------ */

/* A successful allocation is recorded with the requested size (calloc: n*m,
 * which cannot overflow once the real calloc succeeded). */
#define HOOK_ALLOC(name, ret, params, args, sa, sb, align)                  \
    ret name params                                                         \
    {                                                                       \
        if (RSPROF_UNLIKELY(bootstrapping())) {                             \
            size_t bytes_;                                                  \
            if (__builtin_mul_overflow((size_t)(sa), (size_t)(sb), &bytes_)) { \
                errno = ENOMEM;                                             \
                return NULL;                                                \
            }                                                               \
            return boot_alloc(bytes_, (size_t)(align));                     \
        }                                                                   \
        if (!rsprof__on() || t_in_real)                                     \
            return real_##name args;                                        \
        t_in_real = 1;                                                      \
        void *p_ = real_##name args;                                        \
        t_in_real = 0;                                                      \
        if (p_ != NULL)                                                     \
            rsprof__alloc(p_, (size_t)(sa) * (size_t)(sb));                 \
        return p_;                                                          \
    }

#define HOOK_POSIX(name, ret, params, args, sa, sb, align)                  \
    ret name params                                                         \
    {                                                                       \
        if (RSPROF_UNLIKELY(bootstrapping())) {                             \
            void *b_ = boot_alloc((size_t)(sa), (size_t)(align));           \
            if (b_ == NULL)                                                 \
                return ENOMEM;                                              \
            *out = b_;                                                      \
            return 0;                                                       \
        }                                                                   \
        if (!rsprof__on() || t_in_real)                                     \
            return real_##name args;                                        \
        t_in_real = 1;                                                      \
        int rc_ = real_##name args;                                         \
        t_in_real = 0;                                                      \
        if (rc_ == 0)                                                       \
            rsprof__alloc(*out, (size_t)(sa));                              \
        return rc_;                                                         \
    }

#define HOOK_FREE(name, ret, params, args, sa, sb, align)                   \
    ret name params                                                         \
    {                                                                       \
        if (p == NULL || RSPROF_UNLIKELY(is_boot(p)))                       \
            return;                                                         \
        if (RSPROF_UNLIKELY(bootstrapping()))                               \
            return; /* cannot happen: real blocks exist only after resolution */ \
        if (rsprof__on() && !t_in_real)                                     \
            rsprof__free(p);                                                \
        real_##name args;                                                   \
    }

/* FREE(old) is reserved before the real call and committed after it: as FREE
 * when the old block is gone (success, or glibc's size-0 free), as PAD when
 * the call failed and the old block is still valid. */
#define HOOK_REALLOC(name, ret, params, args, sa, sb, align)                \
    ret name params                                                         \
    {                                                                       \
        size_t bytes_;                                                      \
        int overflow_ = __builtin_mul_overflow((size_t)(sa), (size_t)(sb), &bytes_); \
        if (RSPROF_UNLIKELY(bootstrapping() || is_boot(p))) {               \
            if (overflow_) {                                                \
                errno = ENOMEM;                                             \
                return NULL;                                                \
            }                                                               \
            if (p != NULL && bytes_ == 0)                                   \
                return NULL;                                                \
            void *n_ = bootstrapping() ? boot_alloc(bytes_, 16) : real_malloc(bytes_); \
            if (n_ != NULL && p != NULL) {                                  \
                size_t old_ = boot_size(p);                                 \
                memcpy(n_, p, old_ < bytes_ ? old_ : bytes_);               \
            }                                                               \
            if (n_ != NULL && !is_boot(n_) && rsprof__on())                 \
                rsprof__alloc(n_, bytes_);                                  \
            return n_;                                                      \
        }                                                                   \
        if (!rsprof__on() || t_in_real)                                     \
            return real_##name args;                                        \
        struct rsprof_shim_realloc r_;                                      \
        rsprof__realloc_begin(&r_, p);                                      \
        t_in_real = 1;                                                      \
        void *n_ = real_##name args;                                        \
        t_in_real = 0;                                                      \
        int released_ = p != NULL && (n_ != NULL || (!overflow_ && bytes_ == 0)); \
        rsprof__realloc_end(&r_, n_, bytes_, released_);                    \
        return n_;                                                          \
    }

#define DEFINE_HOOK(name, ret, params, args, kind, sa, sb, align) \
    HOOK_##kind(name, ret, params, args, sa, sb, align)

#pragma GCC visibility push(default)
RSPROF_INTERPOSED(DEFINE_HOOK)
#pragma GCC visibility pop

/* ------------------------------------------------------------------------ */
/* Thread start: arm the CPU self-sampler in every new thread               */
/* ------------------------------------------------------------------------ */

/* Weak: a shim built without the self-sampler still links (and arms nothing). */
RSPROF_HIDDEN void rsprof__sampler_thread_start(void) __attribute__((weak));

/* Start routines waiting for their thread, passed by slot index (no malloc). */
#define START_SLOTS 256
struct start_slot {
    int used;
    void *(*fn)(void *);
    void *arg;
};
static struct start_slot g_start[START_SLOTS];
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *),
                                  void *);

static void *start_trampoline(void *p)
{
    struct start_slot *slot = p;
    void *(*fn)(void *) = slot->fn;
    void *arg = slot->arg;
    __atomic_store_n(&slot->used, 0, __ATOMIC_RELEASE);
    if (rsprof__sampler_thread_start != NULL)
        rsprof__sampler_thread_start();
    return fn(arg);
}

#pragma GCC visibility push(default)
int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *),
                   void *arg)
{
    int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        __atomic_load_n(&real_pthread_create, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        real = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(
            RTLD_NEXT, "pthread_create");
        if (real == NULL)
            return EAGAIN;
        __atomic_store_n(&real_pthread_create, real, __ATOMIC_RELEASE);
    }
    if (rsprof__on()) {
        for (int i = 0; i < START_SLOTS; i++) {
            int unused = 0;
            if (__atomic_compare_exchange_n(&g_start[i].used, &unused, 1, 0, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED)) {
                g_start[i].fn = fn;
                g_start[i].arg = arg;
                int rc = real(thread, attr, start_trampoline, &g_start[i]);
                if (rc != 0)
                    __atomic_store_n(&g_start[i].used, 0, __ATOMIC_RELEASE);
                return rc;
            }
        }
    }
    return real(thread, attr, fn, arg); /* not recording, or 256 threads starting at once */
}
#pragma GCC visibility pop

__attribute__((constructor(101))) static void preload_constructor(void)
{
    int saved = errno;
    if (__atomic_load_n(&g_resolved, __ATOMIC_ACQUIRE) != 2)
        resolve();
    rsprof__init();
    errno = saved;
}
