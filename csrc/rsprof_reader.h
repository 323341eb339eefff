/* rsprof_reader.h: memory-ordered access to the shared region, for the reader
 * (rsprof/_ring.pyx). The layout itself is csrc/rsprof_shm.h. */
#ifndef RSPROF_READER_H
#define RSPROF_READER_H

#include <stdint.h>
#include <time.h>

#include "rsprof_shm.h"

static inline uint64_t rsprof_load_acquire_u64(const volatile uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void rsprof_store_release_u64(volatile uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline uint32_t rsprof_load_acquire_u32(const volatile uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void rsprof_store_release_u32(volatile uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline uint32_t rsprof_fetch_add_u32(volatile uint32_t *p, uint32_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}

static inline uint64_t rsprof_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif /* RSPROF_READER_H */
