/* rsprof_sys.h: raw system calls for the code a signal handler can reach.
 *
 * Why: the SIGPROF handler runs on the program's alternate signal stack
 * (Rust's std gives every thread one of max(SIGSTKSZ, AT_MINSIGSTKSZ) bytes).
 * A call into libc through a PLT slot that is not bound yet goes through the
 * dynamic linker's resolver (_dl_runtime_resolve_xsave), which saves the whole
 * XSAVE state (several KiB with AVX-512) on that small stack and runs off its
 * end: the program dies with SIGSEGV. librsprof_shim.so is linked with
 * -z now, and, so that this holds wherever the shim is linked (rsprof-trace
 * links it into the program, whose link flags are not ours), everything the
 * handler reaches calls no libc function at all: system calls are issued
 * inline here, and they leave errno alone (the result carries -errno).
 * tests/integration/test_sampler_stack.py checks both (BIND_NOW, and no PLT
 * call reachable from the handler in the built shim) and measures the
 * handler's stack use on a painted alternate stack.
 */
#ifndef RSPROF_SYS_H
#define RSPROF_SYS_H

#include <stdint.h>
#include <sys/syscall.h>

/* Every function of the handler's path carries this: no loop may be turned
 * into a call of memcpy/memset (gcc's loop distribution does that at -O2). */
#if defined(__clang__)
#define RSPROF_NO_LIBCALLS __attribute__((no_builtin("memcpy", "memset")))
#else
#define RSPROF_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif

#if defined(__x86_64__)

static inline long rsprof_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ __volatile__("syscall"
                         : "=a"(ret)
                         : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                         : "rcx", "r11", "memory");
    return ret;
}

#elif defined(__aarch64__)

static inline long rsprof_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ __volatile__("svc 0"
                         : "+r"(x0)
                         : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                         : "memory");
    return x0;
}

#else
#error "rsprof_sys.h: raw system calls known only for x86-64 and aarch64"
#endif

#define rsprof_sys0(n) rsprof_sys6((n), 0, 0, 0, 0, 0, 0)
#define rsprof_sys1(n, a) rsprof_sys6((n), (long)(a), 0, 0, 0, 0, 0)
#define rsprof_sys2(n, a, b) rsprof_sys6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define rsprof_sys3(n, a, b, c) rsprof_sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define rsprof_sys4(n, a, b, c, d) \
    rsprof_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

/* CLOCK_MONOTONIC in nanoseconds, by the system call (no vDSO: reaching it
 * needs libc), 0 on failure. */
static inline uint64_t rsprof_sys_monotonic_ns(void)
{
    struct {
        long tv_sec;
        long tv_nsec;
    } ts = {0, 0};
    if (rsprof_sys2(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif /* RSPROF_SYS_H */
