/* rsprof_shim_internal.h: what the LD_PRELOAD interposer shares with the
 * recorder inside librsprof_shim.so (hidden symbols, direct calls, and the
 * inline "is a reader recording?" test of the hot path). */
#ifndef RSPROF_SHIM_INTERNAL_H
#define RSPROF_SHIM_INTERNAL_H

#include <stddef.h>

#include "rsprof_shim.h"
#include "rsprof_shm.h"

#define RSPROF_HIDDEN __attribute__((visibility("hidden")))
#define RSPROF_IE_TLS __thread __attribute__((tls_model("initial-exec")))
#define RSPROF_LIKELY(x) __builtin_expect(!!(x), 1)
#define RSPROF_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* The mapped region's header, or a process-local dummy whose state is IDLE
 * (before init, without a valid region, and in a forked child). Never NULL. */
extern struct rsprof_shm_header *rsprof__hdr RSPROF_HIDDEN;

/* The whole cost of a hook while nobody records: one load of the pointer
 * (constant after init) and one relaxed load of the shared state. */
static inline int rsprof__on(void)
{
    const struct rsprof_shm_header *h = __atomic_load_n(&rsprof__hdr, __ATOMIC_ACQUIRE);
    return __atomic_load_n(&h->state, __ATOMIC_RELAXED) == RSPROF_STATE_RECORDING;
}

/* Hidden aliases of the public API (same code, so the same frame layout). */
RSPROF_HIDDEN void rsprof__alloc(void *ptr, size_t size);
RSPROF_HIDDEN void rsprof__free(void *ptr);
RSPROF_HIDDEN void rsprof__realloc_begin(struct rsprof_shim_realloc *r, void *old);
RSPROF_HIDDEN void rsprof__realloc_end(struct rsprof_shim_realloc *r, void *new_ptr,
                                       size_t size, int old_released);
RSPROF_HIDDEN int rsprof__init(void);

#endif /* RSPROF_SHIM_INTERNAL_H */
