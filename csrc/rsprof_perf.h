/* rsprof_perf.h: the perf_event_open side of CPU sampling.
 *
 * Opening a software cpu-clock event for one thread on one CPU with user
 * callchains, and the memory-ordered access to a perf mmap ring's head and
 * tail. Used by rsprof/_ring.pyx; the record layouts themselves come from
 * <linux/perf_event.h>.
 */
#ifndef RSPROF_PERF_H
#define RSPROF_PERF_H

#include <errno.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

/* What every CPU sample carries, in this order (perf orders fields by bit):
 * ip, pid/tid, time, period, callchain, user registers (bp, sp, ip), a copy
 * of the top of the user stack. The period of a cpu-clock sample is the
 * nanoseconds of CPU it stands for. The registers and the stack copy are what
 * the reader unwinds with CFI (--unwind auto/dwarf, rsprof/_unwind.pyx); with
 * --unwind fp a short copy lets it recover the caller of a leaf in code
 * without frame pointers (libc), see _unwind.pyx. */
#define RSPROF_SAMPLE_TYPE                                                   \
    (PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_PERIOD | \
     PERF_SAMPLE_CALLCHAIN | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER)

#if defined(__x86_64__)
#include <asm/perf_regs.h>
/* Registers copied per sample, in bit order: bp, sp, then ip. */
#define RSPROF_REGS_MASK                                                     \
    ((1ULL << PERF_REG_X86_BP) | (1ULL << PERF_REG_X86_SP) | (1ULL << PERF_REG_X86_IP))
#define RSPROF_NREGS 3
#else
#define RSPROF_REGS_MASK 0ULL
#define RSPROF_NREGS 0
#endif

/* Bytes of user stack copied per sample (from the stack pointer up) with
 * --unwind fp; auto/dwarf ask for --stack-size (rsprof_perf_open's stack_bytes). */
#define RSPROF_STACK_BYTES 512

/* Deepest user stack requested from the kernel; a chain this long is counted
 * as truncated. */
#define RSPROF_MAX_STACK 127

/* Callchain entries at or above this are context markers, not addresses. */
#define RSPROF_CONTEXT_MAX ((uint64_t)PERF_CONTEXT_MAX)
#define RSPROF_CONTEXT_USER ((uint64_t)PERF_CONTEXT_USER)

/* Largest record the kernel can write (its size field is 16 bits). */
#define RSPROF_MAX_RECORD 65536

/* Open a cpu-clock sampling event on thread `tid` (any CPU when cpu < 0).
 * inherit: threads the thread creates later get the event too (needs cpu >= 0
 * to be mmapped). stack_bytes: user stack copied per sample (a multiple of 8).
 * Returns the fd, or -errno. */
static inline int rsprof_perf_open(int tid, int cpu, uint64_t freq, int inherit,
                                   int watermark_bytes, uint32_t stack_bytes) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.freq = 1;
    attr.sample_freq = freq;
    attr.sample_type = RSPROF_SAMPLE_TYPE;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    attr.exclude_callchain_kernel = 1;
    attr.sample_max_stack = RSPROF_MAX_STACK;
    attr.sample_regs_user = RSPROF_REGS_MASK;
    attr.sample_stack_user = stack_bytes;
    attr.inherit = inherit ? 1 : 0;
    attr.comm = 1;
    attr.task = 1;
    attr.sample_id_all = 0;
    attr.use_clockid = 1; /* sample times comparable with CLOCK_MONOTONIC */
    attr.clockid = CLOCK_MONOTONIC;
    attr.watermark = 1;
    attr.wakeup_watermark = (uint32_t)watermark_bytes;
    long fd = syscall(SYS_perf_event_open, &attr, (pid_t)tid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0)
        return -errno;
    return (int)fd;
}

/* Send `fd`'s records to `target_fd`'s ring (same CPU). Returns 0 or -errno. */
static inline int rsprof_perf_set_output(int fd, int target_fd) {
    if (ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT, target_fd) < 0)
        return -errno;
    return 0;
}

static inline uint64_t rsprof_ring_head(const volatile struct perf_event_mmap_page *page) {
    return __atomic_load_n(&page->data_head, __ATOMIC_ACQUIRE);
}

static inline uint64_t rsprof_ring_tail(const volatile struct perf_event_mmap_page *page) {
    return page->data_tail;
}

static inline void rsprof_ring_set_tail(volatile struct perf_event_mmap_page *page, uint64_t tail) {
    __atomic_store_n(&page->data_tail, tail, __ATOMIC_RELEASE);
}

#endif /* RSPROF_PERF_H */
