/* rsprof_sampler.c: CPU self-sampling inside the target (SIGPROF), the
 * optional companion of rsprof_shim.c (linked by rsprof-trace's `cpu`
 * feature and into librsprof_shim.so).
 *
 * When it runs: only while the region is RECORDING and the reader asked for
 * it by writing a non-zero frequency into the header's `reserved0` (see
 * csrc/rsprof_shm.h). The frequency used is the program's own choice when it
 * defines `RSPROF_TRACE_CPU_HZ` (rsprof-trace's `profiler!(cpu = N)`),
 * otherwise the reader's `reserved0`; clamped to 1..10000 Hz.
 *
 * Timers: one POSIX timer per thread on that thread's CPU-time clock
 * (SIGEV_THREAD_ID, so SIGPROF goes to the thread that used the CPU).
 * Created with the raw timer_create system call (no glibc bookkeeping, no
 * malloc) when a thread first enters a recording hook in a session, and, at
 * the first such entry of a session, for every thread in /proc/self/task
 * (read with getdents64 into a stack buffer). The handler disarms its own
 * timer when it finds the region no longer recording; the next session
 * re-arms it. Entries of threads that have exited are reclaimed (timer_delete)
 * when the table of RSPROF_SAMPLER_MAX_THREADS is full.
 *
 * Threads started later: under LD_PRELOAD the pthread_create trampoline arms
 * them at their start. Where nothing wraps pthread_create (rsprof-trace links
 * the shim statically), a thread that only computes never enters a hook, so
 * the first arming of a session also starts a "scout": one timer on the
 * process's CPU-time clock (SIGEV_SIGNAL, every RSPROF_SCOUT_MS of process
 * CPU) whose signal makes the handler re-read /proc/self/task and arm the
 * threads it has not armed yet (under the same try-lock; if the interrupted
 * code holds it, the next scout retries). A scout signal is never a sample.
 *
 * The handler (SA_SIGINFO | SA_RESTART | SA_ONSTACK) is async-signal-safe: no
 * malloc, no locks, and no libc call at all: it runs on the program's small
 * alternate signal stack, where a lazily bound PLT call would run the dynamic
 * linker's resolver (which saves the whole XSAVE state there: a SIGSEGV on
 * AVX-512 machines); system calls are made inline (rsprof_sys.h), so errno is
 * never touched. It takes the interrupted RIP/RBP (PC/X29 on
 * aarch64) from the ucontext and walks frame records with the same bounds
 * proof as the heap walk, but with a proof of its own (pages proven readable
 * with process_vm_readv from the interrupted stack pointer upwards, kept in
 * locals: the per-thread cache of the heap walk may be half-updated by the
 * hook it interrupted). The sample's period_ns is the timer's interval times
 * (1 + si_overrun): the kernel checks CPU-time timers at its tick, so above
 * the tick rate one signal stands for several intervals. It writes one
 * RSPROF_REC_SAMPLE with
 * RSPROF_SHIM_NOWAIT: a full ring drops the sample and counts it in
 * `dropped`, it never waits, so interrupting a hook (even one that holds a
 * reserved, uncommitted ring slot or waits for space) cannot deadlock.
 *
 * Stack copies for CFI unwinding: while the header's `sampler_stack_bytes`
 * is not 0 the handler writes RSPROF_REC_SAMPLE_REGS instead: the same
 * sample plus the interrupted ip/sp/fp and a copy of the stack at [sp, sp +
 * asked) (asked clamped to RSPROF_SAMPLER_MAX_STACK_BYTES, rounded down to 8).
 * Up to 64 KiB never touches the handler's stack: the record is reserved in
 * the ring (never waited for, like every write here), the stack is copied
 * straight into the reserved slot by one process_vm_readv on ourselves (two
 * local iovecs when the slot wraps the ring's end), which copies up to the
 * first unreadable page and returns the count (an error copies nothing),
 * then the fixed part and the frames are written and the record committed.
 * The copy never reads past the end of the mapping that holds sp (the
 * thread's stack): the next mapping up is often readable, so the end is asked
 * of the kernel (PROCMAP_QUERY, once per thread; see stack_map_end).
 *
 * The handler is installed when the shim maps its region at start-up (if
 * SIGPROF is still at SIG_DFL), and the header's `sampler_ready` says so: the
 * reader may then wake the sampler with sigqueue(SIGPROF,
 * RSPROF_SAMPLER_WAKE), which arms every thread not armed yet (a process that
 * never allocates after attach, or rsprof-trace's `cpu` feature alone, which
 * has no hook at all). No timer runs before a reader asks for samples.
 *
 * A SIGPROF handler of the program's own: if SIGPROF has a handler (or is
 * ignored) when the shim starts, rsprof installs nothing and never samples in
 * this process (the program's handler is left alone; the heap recording is
 * unaffected). If the program installs one later, replacing ours, the next
 * arming notices it and stops; signals of timers still armed then go to the
 * program's handler at most until the session ends, and the reader sends its
 * wake-up only while SIGPROF is caught (it cannot tell whose handler it is:
 * a program that replaced ours receives one SI_QUEUE SIGPROF per second of a
 * self-sampling session).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "rsprof_shim_internal.h"
#include "rsprof_sys.h"

#define RSPROF_SAMPLER_MAX_THREADS 1024u
#define RSPROF_SCOUT RSPROF_SAMPLER_MAX_THREADS /* sival of the scout timer */
#define RSPROF_SCOUT_MS 50u
#define RSPROF_SAMPLER_MAX_HZ 10000u
#define PAGE 4096u
#define MAX_STACK_SPAN (64u << 20)

#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* The program's frequency (rsprof-trace exports it); absent otherwise. */
extern const uint32_t RSPROF_TRACE_CPU_HZ __attribute__((weak, visibility("hidden")));

struct tslot {
    uint32_t tid;     /* 0: free */
    int32_t kid;      /* kernel timer id */
    uint32_t session; /* session it was (re-)armed for */
    uint32_t interval_us;
};

static struct tslot g_slots[RSPROF_SAMPLER_MAX_THREADS];
static int g_lock;          /* try-lock of the arming path (never taken in the handler) */
static int g_handler;       /* 0 not yet, 1 ours installed, -1 never (a foreign handler) */
static uint32_t g_scanned;  /* SESSION_TAG-like: last session whose threads were scanned, +1 */
static int g_scout_kid = -1;  /* the scout timer (process CPU clock), once created */
static uint32_t g_scout_session;
static uint32_t g_interval_us; /* of the session being sampled (read by the scout) */
static RSPROF_IE_TLS uint64_t t_sampler_tag;

static inline uint32_t gettid_raw(void)
{
    return (uint32_t)rsprof_sys0(SYS_gettid);
}

RSPROF_HIDDEN int rsprof__write_record_nowait(const void *rec, uint32_t size);

RSPROF_NO_LIBCALLS static uint32_t effective_hz(uint32_t requested)
{
    uint32_t hz = requested;
    if (&RSPROF_TRACE_CPU_HZ != NULL && RSPROF_TRACE_CPU_HZ != 0)
        hz = RSPROF_TRACE_CPU_HZ;
    if (hz > RSPROF_SAMPLER_MAX_HZ)
        hz = RSPROF_SAMPLER_MAX_HZ;
    return hz ? hz : 1;
}

RSPROF_NO_LIBCALLS static void set_timer(int kid, uint32_t interval_us)
{
    struct itimerspec its;
    its.it_interval.tv_sec = interval_us / 1000000u;
    its.it_interval.tv_nsec = (long)(interval_us % 1000000u) * 1000L;
    its.it_value = its.it_interval;
    rsprof_sys4(SYS_timer_settime, kid, 0, &its, 0);
}

RSPROF_NO_LIBCALLS static void disarm_timer(int kid)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    rsprof_sys4(SYS_timer_settime, kid, 0, &its, 0);
}

/* ------------------------------------------------------------------------ */
/* The handler                                                               */
/* ------------------------------------------------------------------------ */

RSPROF_NO_LIBCALLS static int page_readable(uintptr_t page)
{
    uint64_t probe;
    struct iovec local = {&probe, sizeof(probe)};
    struct iovec remote = {(void *)page, sizeof(probe)};
    long got = rsprof_sys6(SYS_process_vm_readv, rsprof_sys0(SYS_getpid), (long)&local, 1,
                           (long)&remote, 1, 0);
    return got == (long)sizeof(probe);
}

/* Return addresses from the frame record at fp, on the stack above sp. */
RSPROF_NO_LIBCALLS __attribute__((no_sanitize_address)) static uint32_t
walk(uintptr_t sp, uintptr_t fp, uint64_t *out, uint32_t max)
{
    uint32_t n = 0;
    uintptr_t lo = sp & ~(uintptr_t)(PAGE - 1), hi = lo;
    for (unsigned steps = 0; n < max && steps < RSPROF_MAX_FRAMES + 16; steps++) {
        if ((fp & 7) != 0 || fp < sp || fp + 16 < fp || fp + 16 - sp > MAX_STACK_SPAN)
            break;
        while (fp + 16 > hi) {
            if (!page_readable(hi))
                return n;
            hi += PAGE;
        }
        const uintptr_t *rec = (const uintptr_t *)fp;
        uintptr_t next = rec[0], ret = rec[1];
        if (ret < 4096)
            break;
        out[n++] = ret;
        if (next <= fp)
            break;
        fp = next;
    }
    (void)lo;
    return n;
}

/* Where the stack's mapping ends. process_vm_readv stops at the first
 * unreadable page, but the mapping above a thread's stack is often readable
 * (measured here: a Rust worker's stack mapping ended 5.7 KiB above its sp,
 * and the next 144 MiB anonymous mapping began right there), so the copy is
 * also cut at the end of the mapping that holds sp, asked of the kernel with
 * PROCMAP_QUERY (Linux 6.11: an ioctl on /proc/self/maps, no text to parse)
 * and kept per thread in TLS that only this handler touches (SIGPROF is
 * blocked while it runs, so it never sees it half-written); an sp outside
 * the cached range asks again (a main stack that grew, an alternate or a
 * green-thread stack; one unmapped and mapped again at the same addresses
 * keeps the bounds cached first). Without PROCMAP_QUERY (older kernels, no
 * /proc) it returns 0, and the copy is cut only by the first unreadable page. */
struct procmap_query_abi { /* <linux/fs.h>'s struct procmap_query */
    uint64_t size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size,
        vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
_Static_assert(sizeof(struct procmap_query_abi) == 104, "struct procmap_query");
#define RSPROF_PROCMAP_QUERY 0xC0686611ul /* _IOWR('f', 17, struct procmap_query) */

static RSPROF_IE_TLS uintptr_t t_stack_vma_lo, t_stack_vma_hi; /* the handler's alone */
static int g_no_procmap; /* 1: PROCMAP_QUERY is not there (atomic) */

RSPROF_NO_LIBCALLS __attribute__((noinline)) static uintptr_t stack_map_end(uintptr_t sp)
{
    if (sp >= t_stack_vma_lo && sp < t_stack_vma_hi)
        return t_stack_vma_hi;
    if (LOAD_RLX(&g_no_procmap))
        return 0;
    long fd = rsprof_sys4(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
        if (fd != -EMFILE && fd != -ENFILE && fd != -EINTR && fd != -ENOMEM)
            __atomic_store_n(&g_no_procmap, 1, __ATOMIC_RELAXED);
        return 0;
    }
    struct procmap_query_abi q;
    q.size = sizeof(q);
    q.query_flags = 0; /* the mapping that covers query_addr, or ENOENT */
    q.query_addr = sp;
    q.vma_start = q.vma_end = 0;
    q.vma_name_size = q.build_id_size = 0;
    q.vma_name_addr = q.build_id_addr = 0;
    long r = rsprof_sys3(SYS_ioctl, fd, RSPROF_PROCMAP_QUERY, &q);
    rsprof_sys1(SYS_close, fd);
    if (r != 0) {
        if (r == -ENOTTY || r == -EINVAL || r == -EOPNOTSUPP)
            __atomic_store_n(&g_no_procmap, 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (q.vma_start > sp || q.vma_end <= sp)
        return 0;
    t_stack_vma_lo = (uintptr_t)q.vma_start;
    t_stack_vma_hi = (uintptr_t)q.vma_end;
    return t_stack_vma_hi;
}

/* RSPROF_REC_SAMPLE_REGS: buf holds the frames at buf + 8 (depth of them); its
 * first 8 words take the fixed part. The stack goes straight into the ring. */
RSPROF_NO_LIBCALLS static void sample_regs(uint64_t *buf, uint32_t depth, uint64_t period_ns,
                                           uintptr_t ip, uintptr_t sp, uintptr_t fp,
                                           uint32_t asked)
{
    _Static_assert(sizeof(struct rsprof_rec_sample_regs) == 8 * 8, "fixed part: 8 words");
    _Static_assert(sizeof(struct rsprof_rec_sample) == 4 * 8, "fixed part: 4 words");
    struct rsprof_rec_sample_regs *rec = (struct rsprof_rec_sample_regs *)(void *)buf;
    uint32_t fixed = (uint32_t)(sizeof(*rec) + 8u * depth);
    struct rsprof_slot slot;
    if (!rsprof__slot_reserve_nowait(fixed + asked, &slot))
        return;
    rec->time_ns = rsprof_sys_monotonic_ns();
    /* Up to the end of the stack's mapping, and up to the first unreadable
     * page: the kernel returns the bytes copied so far; an error (sp not
     * mapped at all) copies nothing. */
    uint32_t want = asked;
    uintptr_t end = stack_map_end(sp);
    if (end != 0 && end - sp < want)
        want = (uint32_t)(end - sp);
    long got = 0;
    if (want > 0) {
        struct iovec local[2];
        struct iovec remote = {(void *)sp, want};
        int nlocal = rsprof__slot_iov(&slot, fixed, want, local);
        got = rsprof_sys6(SYS_process_vm_readv, rsprof_sys0(SYS_getpid), (long)local, nlocal,
                          (long)&remote, 1, 0);
    }
    rec->tid = gettid_raw();
    rec->depth = depth;
    rec->period_ns = period_ns;
    rec->ip = ip;
    rec->sp = sp;
    rec->fp = fp;
    rec->stack_bytes = got > 0 && (unsigned long)got <= want ? (uint64_t)got : 0;
    rsprof__slot_write(&slot, 8, buf + 1, fixed - 8);
    rsprof__slot_commit(&slot, RSPROF_REC_HEADER(RSPROF_REC_SAMPLE_REGS, fixed + asked));
}

/* The arming try-lock: never waited for in a handler (a held lock means "next
 * time"); unlock() releases it. */
RSPROF_NO_LIBCALLS static inline int try_lock(void)
{
    int unlocked = 0;
    return __atomic_compare_exchange_n(&g_lock, &unlocked, 1, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

RSPROF_NO_LIBCALLS static inline void unlock(void)
{
    STORE_REL(&g_lock, 0);
}

static void arm_all_threads(uint32_t sess, uint32_t interval_us);
static void arm_session_locked(uint32_t requested, uint32_t sess);

/* The reader's wake-up (RSPROF_SAMPLER_WAKE): arm every thread not armed yet. */
RSPROF_NO_LIBCALLS static void on_wake(struct rsprof_shm_header *h)
{
    uint32_t requested = LOAD_RLX(&h->reserved0);
    if (!rsprof__on() || requested == 0 || g_handler <= 0)
        return;
    if (!try_lock())
        return; /* the reader wakes again at its next flush */
    arm_session_locked(requested, LOAD_ACQ(&h->session));
    unlock();
}

/* The scout's signal: arm the threads started since the last look. */
RSPROF_NO_LIBCALLS static void on_scout(struct rsprof_shm_header *h)
{
    int kid = LOAD_RLX(&g_scout_kid);
    if (!rsprof__on() || LOAD_RLX(&h->reserved0) == 0) {
        uint32_t armed_for = LOAD_ACQ(&g_scout_session);
        disarm_timer(kid);
        if (LOAD_ACQ(&g_scout_session) != armed_for)
            set_timer(kid, RSPROF_SCOUT_MS * 1000u);
        return;
    }
    if (!try_lock())
        return; /* held by the code this signal interrupted, or by another thread */
    uint32_t sess = LOAD_ACQ(&h->session);
    if (LOAD_RLX(&g_scanned) == sess + 1)
        arm_all_threads(sess, LOAD_RLX(&g_interval_us));
    unlock();
}

/* The handler. Everything it reaches is RSPROF_NO_LIBCALLS and makes system
 * calls inline (rsprof_sys.h), so it neither goes through a PLT slot nor
 * changes errno: there is nothing to save. */
RSPROF_NO_LIBCALLS static void on_sigprof(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    struct rsprof_shm_header *h = __atomic_load_n(&rsprof__hdr, __ATOMIC_ACQUIRE);
    uint32_t idx = (uint32_t)si->si_value.sival_int;
    if (si->si_code == SI_QUEUE && si->si_value.sival_int == RSPROF_SAMPLER_WAKE &&
        (uint32_t)si->si_pid == LOAD_RLX(&h->reader_pid)) {
        on_wake(h);
        return;
    }
    if (si->si_code != SI_TIMER || idx > RSPROF_SCOUT)
        return; /* not one of our timers (kill -PROF, setitimer): ignored */
    if (idx == RSPROF_SCOUT) {
        on_scout(h);
        return;
    }
    struct tslot *s = &g_slots[idx];
    if (!rsprof__on() || LOAD_RLX(&h->reserved0) == 0) {
        uint32_t armed_for = LOAD_ACQ(&s->session);
        disarm_timer(LOAD_RLX(&s->kid));
        /* Re-armed for a new session meanwhile: keep it running. */
        if (LOAD_ACQ(&s->session) != armed_for)
            set_timer(LOAD_RLX(&s->kid), LOAD_RLX(&s->interval_us));
        return;
    }
    const ucontext_t *uc = ucv;
    uintptr_t ip, fp, sp;
#if defined(__x86_64__)
    ip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    fp = (uintptr_t)uc->uc_mcontext.gregs[REG_RBP];
    sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
#else
    ip = (uintptr_t)uc->uc_mcontext.pc;
    fp = (uintptr_t)uc->uc_mcontext.regs[29];
    sp = (uintptr_t)uc->uc_mcontext.sp;
#endif
    /* One buffer for both records: the frames at buf + 8, a SAMPLE's fixed part
     * in the 4 words before them, a SAMPLE_REGS's in the 8 words before them. */
    uint64_t buf[8 + RSPROF_MAX_FRAMES];
    uint64_t *frames = buf + 8;
    uint32_t max = h->max_frames < RSPROF_MAX_FRAMES ? h->max_frames : RSPROF_MAX_FRAMES;
    uint32_t depth = 0;
    if (max > 0) {
        frames[0] = ip;
        depth = 1 + walk(sp, fp, frames + 1, max - 1);
    }
    /* The thread CPU time this signal stands for: a CPU-time timer expires at
     * most at the kernel tick, and the intervals it missed by then are its
     * overruns (a 1 ms timer under a 250 Hz tick: one signal per 4 ms, 3 overruns). */
    int overrun = si->si_overrun;
    uint64_t period_ns = (uint64_t)LOAD_RLX(&s->interval_us) * 1000u *
                         (1u + (uint64_t)(overrun > 0 ? overrun : 0));
    uint32_t asked = LOAD_RLX(&h->sampler_stack_bytes);
    if (asked > RSPROF_SAMPLER_MAX_STACK_BYTES)
        asked = RSPROF_SAMPLER_MAX_STACK_BYTES;
    asked &= ~7u;
    if (asked == 0) {
        struct rsprof_rec_sample *rec = (struct rsprof_rec_sample *)(void *)(frames - 4);
        uint32_t size = (uint32_t)(sizeof(*rec) + 8u * depth);
        rec->header = RSPROF_REC_HEADER(RSPROF_REC_SAMPLE, size);
        rec->tid = gettid_raw();
        rec->depth = depth;
        rec->time_ns = rsprof_sys_monotonic_ns();
        rec->period_ns = period_ns;
        rsprof__write_record_nowait(rec, size);
        return;
    }
    sample_regs(buf, depth, period_ns, ip, sp, fp, asked);
}

/* ------------------------------------------------------------------------ */
/* Arming (hook context, under the try-lock)                                 */
/* ------------------------------------------------------------------------ */

static int handler_ours(void)
{
    struct sigaction cur;
    if (sigaction(SIGPROF, NULL, &cur) != 0)
        return 0;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigprof;
}

static int install_handler(void)
{
    if (g_handler == 1)
        return handler_ours() ? 1 : (g_handler = -1, 0);
    if (g_handler < 0)
        return 0;
    struct sigaction cur;
    if (sigaction(SIGPROF, NULL, &cur) != 0)
        return 0;
    if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = on_sigprof;
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGPROF, &sa, NULL) == 0) {
            g_handler = 1;
            return 1;
        }
        return 0;
    }
    g_handler = -1; /* the program's own handler (or SIG_IGN): leave it alone */
    return 0;
}

RSPROF_NO_LIBCALLS static int thread_alive(uint32_t tid)
{
    return rsprof_sys3(SYS_tgkill, rsprof_sys0(SYS_getpid), tid, 0) != -ESRCH;
}

RSPROF_NO_LIBCALLS static void arm_thread(uint32_t tid, uint32_t sess, uint32_t interval_us)
{
    struct tslot *free_slot = NULL;
    for (uint32_t i = 0; i < RSPROF_SAMPLER_MAX_THREADS; i++) {
        struct tslot *s = &g_slots[i];
        if (s->tid == tid) {
            if (LOAD_RLX(&s->session) != sess || s->interval_us != interval_us) {
                STORE_REL(&s->interval_us, interval_us);
                STORE_REL(&s->session, sess);
                set_timer(s->kid, interval_us);
            }
            return;
        }
        if (s->tid == 0 && free_slot == NULL)
            free_slot = s;
    }
    if (free_slot == NULL) {
        for (uint32_t i = 0; i < RSPROF_SAMPLER_MAX_THREADS; i++) {
            struct tslot *s = &g_slots[i];
            if (!thread_alive(s->tid)) {
                rsprof_sys1(SYS_timer_delete, s->kid);
                STORE_REL(&s->tid, 0u);
                if (free_slot == NULL)
                    free_slot = s;
            }
        }
        if (free_slot == NULL)
            return;
    }
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGPROF;
    sev.sigev_value.sival_int = (int)(free_slot - g_slots);
#ifdef sigev_notify_thread_id
    sev.sigev_notify_thread_id = (pid_t)tid;
#else
    sev._sigev_un._tid = (pid_t)tid;
#endif
    /* The CPU-time clock of thread `tid` (the kernel's MAKE_THREAD_CPUCLOCK). */
    clockid_t clk = (clockid_t)((~(uint32_t)tid) << 3) | 6;
    int kid = -1;
    if (rsprof_sys3(SYS_timer_create, clk, &sev, &kid) != 0)
        return;
    free_slot->kid = kid;
    STORE_REL(&free_slot->interval_us, interval_us);
    STORE_REL(&free_slot->session, sess);
    STORE_REL(&free_slot->tid, tid);
    set_timer(kid, interval_us);
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

RSPROF_NO_LIBCALLS static void arm_all_threads(uint32_t sess, uint32_t interval_us)
{
    long fd = rsprof_sys4(SYS_openat, AT_FDCWD, "/proc/self/task",
                          O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return;
    /* Small: this runs on the program's alternate signal stack (the reader's
     * wake-up, the scout); a directory entry is 24-32 bytes. */
    char buf[512] __attribute__((aligned(8)));
    for (;;) {
        long n = rsprof_sys3(SYS_getdents64, fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(void *)(buf + off);
            uint32_t tid = 0;
            for (const char *c = d->d_name; *c >= '0' && *c <= '9'; c++)
                tid = tid * 10 + (uint32_t)(*c - '0');
            if (tid != 0)
                arm_thread(tid, sess, interval_us);
            off += d->d_reclen;
        }
    }
    rsprof_sys1(SYS_close, fd);
}

/* Start (or restart, for a new session) the scout timer; under g_lock. */
RSPROF_NO_LIBCALLS static void start_scout(uint32_t sess)
{
    if (g_scout_kid < 0) {
        struct sigevent sev = {0};
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = SIGPROF;
        sev.sigev_value.sival_int = (int)RSPROF_SCOUT;
        int kid = -1;
        if (rsprof_sys3(SYS_timer_create, CLOCK_PROCESS_CPUTIME_ID, &sev, &kid) != 0)
            return;
        STORE_REL(&g_scout_kid, kid);
    }
    STORE_REL(&g_scout_session, sess);
    set_timer(g_scout_kid, RSPROF_SCOUT_MS * 1000u);
}

/* The first arming of a session (every thread in /proc/self/task, the
 * scout), or a re-scan for threads started since; under g_lock. */
RSPROF_NO_LIBCALLS static void arm_session_locked(uint32_t requested, uint32_t sess)
{
    uint32_t interval_us = 1000000u / effective_hz(requested);
    if (LOAD_RLX(&g_scanned) != sess + 1) {
        STORE_REL(&g_interval_us, interval_us);
        STORE_REL(&g_scanned, sess + 1);
        arm_all_threads(sess, interval_us);
        start_scout(sess);
    } else {
        arm_all_threads(sess, LOAD_RLX(&g_interval_us));
    }
}

/* Called by the shim's hooks while recording (its recursion guard set). */
RSPROF_HIDDEN void rsprof__sampler_enter(struct rsprof_shm_header *h);
void rsprof__sampler_enter(struct rsprof_shm_header *h)
{
    uint32_t requested = LOAD_RLX(&h->reserved0);
    if (RSPROF_LIKELY(requested == 0))
        return;
    uint32_t sess = LOAD_ACQ(&h->session);
    uint64_t tag = (1ull << 32) | sess;
    if (RSPROF_LIKELY(t_sampler_tag == tag) || g_handler < 0)
        return;
    if (!try_lock())
        return; /* another thread is arming: try again at the next hook */
    int saved = errno;
    if (install_handler()) {
        if (LOAD_RLX(&g_scanned) != sess + 1)
            arm_session_locked(requested, sess);
        arm_thread(gettid_raw(), sess, LOAD_RLX(&g_interval_us));
    }
    t_sampler_tag = tag;
    errno = saved;
    unlock();
}

/* At start-up, once the region is mapped: install the handler now (when
 * SIGPROF is still at its default), so that the reader can wake the sampler
 * of a process that never allocates after it attached. */
RSPROF_HIDDEN void rsprof__sampler_init(struct rsprof_shm_header *h);
void rsprof__sampler_init(struct rsprof_shm_header *h)
{
    if (!try_lock())
        return;
    int saved = errno;
    if (install_handler())
        STORE_REL(&h->sampler_ready, 1u);
    errno = saved;
    unlock();
}

/* A thread that starts while self-sampling is on arms its own timer at once,
 * before running its start routine: a worker that only computes never enters
 * an allocation hook, and would otherwise never be sampled. Called from the
 * pthread_create trampoline of the LD_PRELOAD shim. */
RSPROF_HIDDEN void rsprof__sampler_thread_start(void);
void rsprof__sampler_thread_start(void)
{
    struct rsprof_shm_header *h = __atomic_load_n(&rsprof__hdr, __ATOMIC_ACQUIRE);
    if (h == NULL || !rsprof__on() || g_handler <= 0)
        return;
    uint32_t requested = LOAD_RLX(&h->reserved0);
    if (requested == 0)
        return;
    int saved = errno;
    uint32_t sess = LOAD_ACQ(&h->session);
    for (unsigned spins = 0; !try_lock(); spins++) {
        if (spins > 1000) { /* the arming thread is stuck: give up, a hook retries */
            errno = saved;
            return;
        }
        sched_yield();
    }
    arm_thread(gettid_raw(), sess, 1000000u / effective_hz(requested));
    t_sampler_tag = (1ull << 32) | sess;
    unlock();
    errno = saved;
}
