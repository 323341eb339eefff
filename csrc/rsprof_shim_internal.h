/* rsprof_shim_internal.h: what the LD_PRELOAD interposer shares with the
 * recorder inside librsprof_shim.so (hidden symbols, direct calls, and the
 * inline "is a reader recording?" test of the hot path). */
#ifndef RSPROF_SHIM_INTERNAL_H
#define RSPROF_SHIM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

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

/* A ring slot a signal handler (rsprof_sampler.c) writes in place, for a
 * record too big to build on its small stack first: reserve it (never waits:
 * a full ring or a region not recording drops it, counted as a drop the way
 * rsprof__write_record_nowait counts), write the body (never the first word),
 * then commit it with its header word. A reserved slot must be committed
 * (the reader stops at it until then). None of these calls libc. */
struct rsprof_slot {
    uint64_t pos;  /* ring position of the record's first byte */
    uint32_t size; /* the record's size (a multiple of 8) */
};
RSPROF_HIDDEN int rsprof__slot_reserve_nowait(uint32_t size, struct rsprof_slot *slot);
/* Copy n bytes (a multiple of 8) to offset off (a multiple of 8, >= 8) of the slot. */
RSPROF_HIDDEN void rsprof__slot_write(const struct rsprof_slot *slot, uint32_t off,
                                      const void *src, uint32_t n);
/* The ring bytes of [off, off + n) of the slot as iovecs (two when they wrap the
 * ring's end); returns how many (0 when n is 0). */
RSPROF_HIDDEN int rsprof__slot_iov(const struct rsprof_slot *slot, uint32_t off, uint32_t n,
                                   struct iovec iov[2]);
/* Publish the record: store its header word with release order. */
RSPROF_HIDDEN void rsprof__slot_commit(const struct rsprof_slot *slot, uint64_t word);

#endif /* RSPROF_SHIM_INTERNAL_H */
