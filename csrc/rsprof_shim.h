/* rsprof_shim.h: the in-target heap recorder of rsprof (the writer side of
 * csrc/rsprof_shm.h).
 *
 * Used by the LD_PRELOAD interposer (csrc/rsprof_preload.c) and meant to be
 * linked into a Rust `#[global_allocator]` wrapper. The calling convention of
 * every recording function: call it DIRECTLY from the allocator entry point
 * (malloc, GlobalAlloc::alloc, ...). The recorded stack starts at the return
 * address into the caller of that entry point: the shim skips exactly its own
 * frame and the entry point's frame (everything must keep frame pointers).
 *
 * Ordering rules the caller keeps (docs/architecture.md):
 *   - alloc:   ptr = real_alloc(size); rsprof_shim_record_alloc(ptr, size);
 *   - free:    rsprof_shim_record_free(ptr); real_free(ptr);
 *   - realloc: struct rsprof_shim_realloc r;
 *              rsprof_shim_realloc_begin(&r, old);        (reserves FREE(old))
 *              new = real_realloc(old, size);
 *              rsprof_shim_realloc_end(&r, new, size, released);
 *     where `released` says whether the old block is gone (new != NULL, or
 *     glibc's realloc(p, 0) which frees p). realloc_end commits the reserved
 *     slot as FREE(old) if released, as a PAD record otherwise, then records
 *     ALLOC(new, size) when new != NULL.
 *
 * All functions are async-signal-tolerant (no locks, no malloc), preserve
 * errno, and return at once (one relaxed load) unless a reader is recording.
 */
#ifndef RSPROF_SHIM_H
#define RSPROF_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RSPROF_SHIM_API __attribute__((visibility("default")))

/* Map the region named by $RSPROF_SHM (and remove that variable from the
 * environment), or create a private IDLE region /dev/shm/rsprof-<pid>-<hex>.
 * Idempotent and thread-safe; runs automatically as a constructor. Returns 1
 * when a region is mapped, 0 otherwise (nothing will ever be recorded). */
RSPROF_SHIM_API int rsprof_shim_init(void);

/* Non-zero while a reader is recording (a cheap relaxed load). */
RSPROF_SHIM_API int rsprof_shim_recording(void);

/* After the real allocation returned ptr (non-NULL) for `size` bytes. */
RSPROF_SHIM_API void rsprof_shim_record_alloc(void *ptr, size_t size);

/* Before the real free of ptr (NULL is ignored). */
RSPROF_SHIM_API void rsprof_shim_record_free(void *ptr);

/* realloc: see the ordering rules above. The struct is opaque to callers. */
struct rsprof_shim_realloc {
    uint64_t pos;   /* reserved ring position of the FREE(old) record */
    uint64_t old;   /* the old pointer */
    uint32_t armed; /* 1 when pos is reserved and must be committed */
    uint32_t unused;
};
RSPROF_SHIM_API void rsprof_shim_realloc_begin(struct rsprof_shim_realloc *r, void *old);
RSPROF_SHIM_API void rsprof_shim_realloc_end(struct rsprof_shim_realloc *r, void *new_ptr,
                                             size_t size, int old_released);

/* Write one complete record (its first 8 bytes are the header word) into the
 * ring, e.g. a RSPROF_REC_SAMPLE from the SIGPROF self-sampler. With
 * RSPROF_SHIM_NOWAIT (always in a signal handler) a full ring drops the record
 * instead of waiting for the reader. Returns 1 if written. */
#define RSPROF_SHIM_NOWAIT 1
RSPROF_SHIM_API int rsprof_shim_write_record(const void *record, size_t size, int flags);

#ifdef __cplusplus
}
#endif

#endif /* RSPROF_SHIM_H */
