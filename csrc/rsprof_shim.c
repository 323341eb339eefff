/* rsprof_shim.c: the heap recorder inside the target process.
 *
 * Writes the records of csrc/rsprof_shm.h into a shared-memory ring that
 * rsprof drains. Built into librsprof_shim.so together with the LD_PRELOAD
 * interposer (rsprof_preload.c); also linkable on its own behind a Rust
 * #[global_allocator] (see rsprof_shim.h for the API and its ordering rules).
 *
 * Rules kept everywhere below:
 *   - while the region's state is not RECORDING a hook does one relaxed load
 *     and returns; nothing grows;
 *   - no locks, no malloc: the stack trie lives in private mmap'd memory,
 *     the ring is reserved with a CAS; errno is preserved;
 *   - a per-thread recursion guard (initial-exec TLS) is set around anything
 *     that may call back into libc's allocator (pthread_getattr_np, init);
 *   - the ring is only waited on outside signal handlers, and for as long as
 *     the reader's process lives (a slow or stopped reader is waited for:
 *     recording is exact); only a reader that is gone makes the shim set
 *     STOPPED and drop (counted in `dropped`). See "Reader liveness".
 *
 * Processes started by the target: a fork()ed child stops recording at once
 * (pthread_atfork child handler: the shared mapping is replaced by private
 * anonymous memory and the header pointer by an IDLE dummy), so it never
 * writes into the parent's ring. exec()ed programs inherit LD_PRELOAD and so
 * load the shim again, but RSPROF_SHM is removed from the environment at init,
 * so they never map the parent's region: each creates a private IDLE region of
 * its own (/dev/shm/rsprof-<pid>-<hex>, unlinked at its exit) and records
 * nothing unless a reader attaches to it. Regions whose process exec()ed or
 * left through _exit() (no destructors) are swept when the next process
 * creates its region (sweep_regions), and by rsprof. Children made with raw clone()/vfork() without exec
 * bypass pthread_atfork and are not supported.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "rsprof_shim_internal.h"
#include "rsprof_sys.h"

#if !defined(__x86_64__) && !defined(__aarch64__)
#error "rsprof_shim: frame record layout known only for x86-64 and aarch64"
#endif

/* ------------------------------------------------------------------------ */
/* Process-local state                                                       */
/* ------------------------------------------------------------------------ */

static struct rsprof_shm_header g_dummy; /* state 0 == RSPROF_STATE_IDLE */
struct rsprof_shm_header *rsprof__hdr = &g_dummy;

static uint8_t *g_data;        /* ring bytes */
static uint64_t g_ring;        /* ring size (power of two) */
static uint64_t g_mask;
static uint32_t g_max_frames;  /* min(header.max_frames, RSPROF_MAX_FRAMES) */
static void *g_map;            /* whole mapping, replaced in a fork child */
static size_t g_map_len;
static int g_created;          /* we created a private region: unlink at exit */
static pid_t g_owner;
static char g_name[96];
static int g_init;             /* 0 never, 1 running, 2 done (atomic) */
static int g_mapped;

/* Per thread; initial-exec so that reading them never allocates. */
static RSPROF_IE_TLS int t_guard;
static RSPROF_IE_TLS uint32_t t_tid;
static RSPROF_IE_TLS uint32_t t_stack_state; /* 0 unknown, 1 range cached, 2 unavailable */
static RSPROF_IE_TLS uintptr_t t_stack_lo;
static RSPROF_IE_TLS uintptr_t t_stack_hi;
static RSPROF_IE_TLS uint64_t t_thread_tag; /* session tag of the last THREAD record */

#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD_RLX(p, v) ((void)__atomic_fetch_add((p), (v), __ATOMIC_RELAXED))

/* "announced in session s": distinct from 0 (never) for every s. */
#define SESSION_TAG(s) ((1ull << 32) | (uint64_t)(s))

static inline struct rsprof_shm_header *hdr(void)
{
    return __atomic_load_n(&rsprof__hdr, __ATOMIC_ACQUIRE);
}

static inline int recording(const struct rsprof_shm_header *h)
{
    return LOAD_RLX(&h->state) == RSPROF_STATE_RECORDING;
}

static uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    if (clock_gettime(clk, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void short_sleep(long ns)
{
    /* The raw syscall: nanosleep() is a cancellation point, an allocator
     * hook must not be one. */
    struct timespec ts = {0, ns};
    syscall(SYS_nanosleep, &ts, NULL);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static void spin_wait(unsigned *n)
{
    if (++*n < 64)
        cpu_relax();
    else if (*n < 256)
        sched_yield();
    else
        short_sleep(20000);
}

static inline uint32_t my_tid(void)
{
    if (RSPROF_UNLIKELY(t_tid == 0))
        t_tid = (uint32_t)syscall(SYS_gettid);
    return t_tid;
}

/* ------------------------------------------------------------------------ */
/* Ring                                                                      */
/* ------------------------------------------------------------------------ */

/* One attempt to reserve `size` bytes: 1 reserved (at *pos), 0 the ring is
 * full, -1 not recording (counted as a drop only if the reader vanished:
 * STOPPED; a reader that detached, IDLE, ended the recording and nothing is
 * lost). Reachable from the signal handler: no libc call (rsprof_sys.h). */
RSPROF_NO_LIBCALLS static int ring_try_reserve(struct rsprof_shm_header *h, uint32_t size,
                                               uint64_t *pos)
{
    for (;;) {
        if (!recording(h)) {
            if (LOAD_RLX(&h->state) == RSPROF_STATE_STOPPED)
                ADD_RLX(&h->dropped, 1);
            return -1;
        }
        uint64_t r = LOAD_RLX(&h->reserve);
        uint64_t t = LOAD_ACQ(&h->tail);
        if (!(r + size - t <= g_ring && t <= r))
            return 0;
        if (__atomic_compare_exchange_n(&h->reserve, &r, r + size, 1, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            *pos = r;
            return 1;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Reader liveness                                                           */
/* ------------------------------------------------------------------------ */

/* A writer that finds the ring full waits for as long as the reader lives: a
 * reader that is only slow (a long commit, descheduled, SIGSTOPped) is waited
 * for, because recording is exact. Only a reader that is gone releases the
 * program. "Gone" is decided by the reader's process, never by its heartbeat
 * (a busy reader can miss any deadline): the heartbeat only says when to start
 * asking (RSPROF_READER_TIMEOUT_NS without one), and a waiting writer then
 * asks at most every LIVENESS_CHECK_NS:
 *   - the reader is our parent (`rsprof run`): alive while getppid() names
 *     it. When it dies we are reparented, so a recycled pid never passes for
 *     it; a reader that was our parent and no longer is, is gone;
 *   - otherwise a pidfd of the reader, opened while it was known alive (at a
 *     wait of its session with the heartbeat fresh), polls readable once it
 *     has exited;
 *   - without one (kernel < 5.3, another thread holds it, or the fd is no
 *     longer ours), kill(pid, 0) failing with ESRCH. Without a reader pid
 *     (a region made by an older reader) the stale heartbeat alone decides.
 * The watch below belongs to one thread at a time (g_watch_owner, taken with a
 * CAS and never waited for: another thread, or a signal handler nested in the
 * owner, checks without it). No malloc, no lock; errno is preserved; the
 * syscalls are raw or not cancellation points. */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same on every architecture */
#endif
#define LIVENESS_CHECK_NS 100000000ull

static uint32_t g_watch_owner;  /* tid using the watch, 0 = free (atomic) */
static uint64_t g_watch_key;    /* WATCH_KEY(session, reader pid) watched, 0 = none (atomic) */
static int g_watch_parent;      /* that reader was our parent */
static int g_watch_fd = -1;     /* its pidfd, or -1 */
static uint64_t g_watch_dev;    /* fstat of the pidfd, to tell it is still ours */
static uint64_t g_watch_ino;

#define WATCH_KEY(sess, pid) ((1ull << 63) | ((uint64_t)(pid) << 32) | (uint64_t)(sess))

static int watch_take(void)
{
    uint32_t free_ = 0;
    return __atomic_compare_exchange_n(&g_watch_owner, &free_, my_tid(), 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

static void watch_release(void)
{
    STORE_REL(&g_watch_owner, 0);
}

static void watch_close(void)
{
    if (g_watch_fd >= 0)
        syscall(SYS_close, g_watch_fd);
    g_watch_fd = -1;
}

/* Called at a wait while the heartbeat is fresh (the reader is known alive):
 * remember how to tell later that this session's reader is gone. */
static void reader_watch(struct rsprof_shm_header *h)
{
    uint32_t sess = LOAD_ACQ(&h->session);
    uint32_t pid = LOAD_ACQ(&h->reader_pid);
    uint64_t key = WATCH_KEY(sess, pid);
    if (pid == 0 || LOAD_ACQ(&g_watch_key) == key || !watch_take())
        return;
    int saved = errno;
    if (LOAD_RLX(&g_watch_key) != key) {
        watch_close();
        g_watch_parent = (uint32_t)getppid() == pid;
        if (!g_watch_parent) {
            long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
            struct stat st;
            if (fd >= 0 && fstat((int)fd, &st) == 0) {
                g_watch_fd = (int)fd;
                g_watch_dev = (uint64_t)st.st_dev;
                g_watch_ino = (uint64_t)st.st_ino;
            } else if (fd >= 0) {
                syscall(SYS_close, fd);
            }
        }
        STORE_REL(&g_watch_key, key);
    }
    watch_release();
    errno = saved;
}

/* Whether the watched pidfd says its process exited: 1 exited, 0 alive, -1
 * cannot tell (the fd is not ours any more). Watch owner only. */
static int watch_exited(void)
{
    struct stat st;
    if (g_watch_fd < 0 || fstat(g_watch_fd, &st) != 0 || (uint64_t)st.st_dev != g_watch_dev ||
        (uint64_t)st.st_ino != g_watch_ino) {
        g_watch_fd = -1; /* closed or replaced behind our back: never close it */
        return -1;
    }
    struct pollfd p = {.fd = g_watch_fd, .events = POLLIN, .revents = 0};
    struct timespec zero = {0, 0};
    long n = syscall(SYS_ppoll, &p, 1, &zero, NULL, 0);
    if (n < 0 || (p.revents & POLLNVAL))
        return -1;
    return n > 0 && (p.revents & (POLLIN | POLLHUP)) != 0;
}

/* Is the reader of the current session gone (its process dead)? */
static int reader_gone(struct rsprof_shm_header *h)
{
    uint32_t sess = LOAD_ACQ(&h->session);
    uint32_t pid = LOAD_ACQ(&h->reader_pid);
    if (pid == 0)
        return 1; /* no reader named: the stale heartbeat is all there is */
    int saved = errno;
    int gone = -1;
    if ((uint32_t)getppid() == pid) {
        gone = 0;
    } else if (watch_take()) {
        if (LOAD_RLX(&g_watch_key) == WATCH_KEY(sess, pid))
            gone = g_watch_parent ? 1 : watch_exited();
        watch_release();
    }
    if (gone < 0)
        gone = kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    errno = saved;
    return gone;
}

/* Reserve `size` bytes. Unless `nowait`, waits (short sleeps) for ring space
 * for as long as the reader lives (above). Returns 0 and counts a drop when
 * the record cannot be written. */
static int ring_reserve(struct rsprof_shm_header *h, uint32_t size, int nowait, uint64_t *pos)
{
    int waited = 0;
    uint64_t next_check = 0;
    for (;;) {
        int got = ring_try_reserve(h, size, pos);
        if (got != 0)
            return got > 0;
        if (nowait) {
            ADD_RLX(&h->dropped, 1);
            return 0;
        }
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        uint64_t beat = LOAD_ACQ(&h->heartbeat_ns);
        int stale = now > beat && now - beat > RSPROF_READER_TIMEOUT_NS;
        if (!waited) {
            waited = 1;
            ADD_RLX(&h->waits, 1);
            if (!stale)
                reader_watch(h);
        }
        if (stale && now >= next_check) {
            next_check = now + LIVENESS_CHECK_NS;
            if (reader_gone(h)) {
                uint32_t want = RSPROF_STATE_RECORDING;
                __atomic_compare_exchange_n(&h->state, &want, RSPROF_STATE_STOPPED, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
                ADD_RLX(&h->dropped, 1);
                return 0;
            }
        }
        {
            int saved = errno; /* the hot paths do not save errno: slow paths do */
            short_sleep(50000);
            errno = saved;
        }
    }
}

/* Copies whole 8-byte words (record sizes and positions are multiples of 8)
 * without memcpy: the signal handler reaches it. */
RSPROF_NO_LIBCALLS static inline void copy_words(uint8_t *dst, const uint8_t *src, uint64_t n)
{
    for (uint64_t i = 0; i < n; i += 8) {
        uint64_t w;
        __builtin_memcpy(&w, src + i, 8);
        __builtin_memcpy(dst + i, &w, 8);
    }
}

RSPROF_NO_LIBCALLS static void ring_copy(uint64_t pos, const void *src, uint64_t n)
{
    uint64_t off = pos & g_mask;
    if (off + n <= g_ring) {
        copy_words(g_data + off, src, n);
    } else {
        uint64_t first = g_ring - off;
        copy_words(g_data + off, src, first);
        copy_words(g_data, (const uint8_t *)src + first, n - first);
    }
}

/* Write the body, then publish the header word with release: the commit.
 * Positions and sizes are multiples of 8, so the word never wraps. */
RSPROF_NO_LIBCALLS static void ring_commit(uint64_t pos, const void *rec, uint32_t size)
{
    uint64_t word;
    __builtin_memcpy(&word, rec, 8);
    if (size > 8)
        ring_copy(pos + 8, (const uint8_t *)rec + 8, size - 8);
    STORE_REL((uint64_t *)(void *)(g_data + (pos & g_mask)), word);
}

static int ring_write(struct rsprof_shm_header *h, const void *rec, uint32_t size, int nowait)
{
    uint64_t pos;
    if (!ring_reserve(h, size, nowait, &pos))
        return 0;
    ring_commit(pos, rec, size);
    return 1;
}

/* A signal handler's write (rsprof_sampler.c): never waits (a full ring drops
 * the record and counts it), calls no libc function, leaves errno alone. */
RSPROF_HIDDEN int rsprof__write_record_nowait(const void *rec, uint32_t size);
RSPROF_NO_LIBCALLS int rsprof__write_record_nowait(const void *rec, uint32_t size)
{
    struct rsprof_shm_header *h = hdr();
    uint64_t pos;
    int got = ring_try_reserve(h, size, &pos);
    if (got == 0)
        ADD_RLX(&h->dropped, 1);
    if (got <= 0)
        return 0;
    ring_commit(pos, rec, size);
    return 1;
}

/* A slot written in place by a signal handler (rsprof_shim_internal.h). */
RSPROF_NO_LIBCALLS int rsprof__slot_reserve_nowait(uint32_t size, struct rsprof_slot *slot)
{
    struct rsprof_shm_header *h = hdr();
    int got = ring_try_reserve(h, size, &slot->pos);
    if (got == 0)
        ADD_RLX(&h->dropped, 1);
    slot->size = got > 0 ? size : 0;
    return got > 0;
}

RSPROF_NO_LIBCALLS void rsprof__slot_write(const struct rsprof_slot *slot, uint32_t off,
                                           const void *src, uint32_t n)
{
    if (off >= 8 && off <= slot->size && n <= slot->size - off)
        ring_copy(slot->pos + off, src, n);
}

RSPROF_NO_LIBCALLS int rsprof__slot_iov(const struct rsprof_slot *slot, uint32_t off, uint32_t n,
                                        struct iovec iov[2])
{
    if (n == 0 || off < 8 || off > slot->size || n > slot->size - off)
        return 0;
    uint64_t at = (slot->pos + off) & g_mask;
    iov[0].iov_base = g_data + at;
    if (at + n <= g_ring) {
        iov[0].iov_len = n;
        return 1;
    }
    iov[0].iov_len = g_ring - at;
    iov[1].iov_base = g_data;
    iov[1].iov_len = n - (g_ring - at);
    return 2;
}

RSPROF_NO_LIBCALLS void rsprof__slot_commit(const struct rsprof_slot *slot, uint64_t word)
{
    STORE_REL((uint64_t *)(void *)(g_data + (slot->pos & g_mask)), word);
}

static void commit_pad(uint64_t pos, uint32_t size)
{
    uint64_t word = RSPROF_REC_HEADER(RSPROF_REC_PAD, size);
    STORE_REL((uint64_t *)(void *)(g_data + (pos & g_mask)), word);
}

/* ------------------------------------------------------------------------ */
/* Stack walking                                                             */
/* ------------------------------------------------------------------------ */

/* The readable extent of this thread's stack is learnt page by page, without
 * locks and without malloc: pthread_getattr_np is not usable here, because
 * it takes the thread's lock and (for the main thread) mallocs, and a caller
 * such as Rust's runtime may already hold that lock when it allocates
 * (a deadlock, seen here). A page is proven readable with process_vm_readv
 * on ourselves, which fails with EFAULT instead of faulting; only pages
 * contiguous with the current stack pointer are accepted, so a walk never
 * leaves the stack's mapping (the next mapping up is a guard page or another
 * thread's stack guard, both unreadable). Validated pages are cached per
 * thread, so after the first walks no system call is made. */
#define PAGE 4096u
#define MAX_STACK_SPAN (64u << 20) /* never walk further than this above sp */

static int page_readable(uintptr_t page)
{
    uint64_t probe;
    struct iovec local = {&probe, sizeof(probe)};
    struct iovec remote = {(void *)page, sizeof(probe)};
    int saved = errno;
    long got = syscall(SYS_process_vm_readv, (long)getpid(), &local, 1UL, &remote, 1UL, 0UL);
    errno = saved;
    return got == (long)sizeof(probe);
}

/* Is [addr, addr + len) inside the readable stack range above `sp`? Extends
 * the cached range [t_stack_lo, t_stack_hi) upwards a page at a time. */
static int stack_readable(uintptr_t sp, uintptr_t addr, uintptr_t len)
{
    uintptr_t end = addr + len;
    if (addr < sp || end < addr || end - sp > MAX_STACK_SPAN)
        return 0;
    if (RSPROF_UNLIKELY(t_stack_state == 2))
        return 0;
    if (t_stack_state == 0 || sp < t_stack_lo || sp >= t_stack_hi) {
        /* First walk on this thread, or the stack pointer left the cached range
         * (e.g. a signal stack): restart from sp's own page. */
        t_stack_lo = sp & ~(uintptr_t)(PAGE - 1);
        t_stack_hi = t_stack_lo + PAGE;
        t_stack_state = 1;
    }
    while (end > t_stack_hi) {
        if (!page_readable(t_stack_hi))
            return 0;
        t_stack_hi += PAGE;
    }
    return 1;
}

/* Is [addr, addr + len) (addr 8-aligned) proven readable in this thread's
 * stack above sp0? [lo, *hi) is the walk's local copy of the proven range: the
 * fast path touches no TLS and makes no call; only a new page does. Written so
 * that no sum can wrap (a garbage address near the top of the address space
 * must not pass for one inside the range). */
static inline int stack_word_ok(uintptr_t sp0, uintptr_t lo, uintptr_t *hi, uintptr_t addr,
                                uintptr_t len)
{
    if ((addr & 7) != 0)
        return 0;
    if (RSPROF_LIKELY(addr >= lo && addr < *hi && *hi - addr >= len))
        return 1;
    if (!stack_readable(sp0, addr, len))
        return 0;
    *hi = t_stack_hi;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* The unwind table: CFI rows published by the reader (x86-64)              */
/* ------------------------------------------------------------------------ */

/* Code built without frame pointers (a default `cargo build --release`, Rust's
 * prebuilt std) breaks the frame-pointer chain at its first frame. The reader
 * builds the DWARF CFI rules of every mapped object, with runtime addresses,
 * into a read-only file (struct rsprof_unwind_file_header, rsprof_shm.h) and
 * publishes its name in the region header (unwind_name, then unwind_generation
 * bumped with release). The heap walk then unwinds with those rules:
 *
 *   - mapping: an allocation whose walk sees a generation other than the one
 *     last tried lets ONE thread (a try-lock, never waited for: the others walk
 *     with frame pointers meanwhile) open /dev/shm/<name>, fstat, mmap it
 *     read-only, close the fd and validate it (magic, version, row size, rows
 *     inside the file and in order); then (rows, n, generation) is published
 *     with release. A failure is remembered for that generation (frame
 *     pointers then). A mapping is never unmapped once published (another
 *     thread may be reading it; refreshes are rare), its descriptor never
 *     rewritten. Raw system calls only (no errno, no malloc, no lock);
 *   - rows are found by pc - 1 (a return address may sit past its function's
 *     end) through a direct-mapped cache {pc, row index} shared by all
 *     threads, written without ordering: an entry is used only when the row it
 *     names covers pc - 1 in the current table (rows[i].start <= pc - 1 <
 *     rows[i + 1].start), so a torn or stale entry gives the right row or a
 *     miss, and a miss is a binary search.
 *
 * x86-64 only (the rules name rsp/rbp and the binutils PLT expression); other
 * architectures always walk frame pointers. */
#if defined(__x86_64__)
#define UW_ENABLED 1
#else
#define UW_ENABLED 0
#endif

struct uw_map {
    const struct rsprof_unwind_row *rows;
    uint64_t n;   /* rows, at least 1 */
    uint64_t gen; /* the header's unwind_generation it was mapped for */
};

#define UW_MAX_MAPS 256u     /* mappings (publishes) per process; then no more refreshes */
#define UW_CACHE_BITS 12u    /* 4096 cache entries, 64 KiB */
#define UW_SHM_DIR "/dev/shm/"

struct uw_slot {
    uint64_t pc;  /* a return address */
    uint64_t idx; /* the row covering pc - 1, in the table current when written */
};

static uint32_t g_uw_lock; /* atomic: 1 while a thread maps a table */
static struct uw_slot g_uw_cache[1u << UW_CACHE_BITS];

#if UW_ENABLED
static struct uw_map g_uw_maps[UW_MAX_MAPS]; /* [0, g_uw_nmaps): written once each */
static uint32_t g_uw_nmaps;                  /* the lock holder's */
static const struct uw_map *g_uw_cur;        /* atomic: the newest mapping, NULL = none */
static uint64_t g_uw_tried;                  /* atomic: last generation mapped or failed */

enum { UW_MAPPED, UW_FAILED, UW_RETRY };

/* Map and validate the table named in the header for generation `gen`. */
static int uw_map_file(struct rsprof_shm_header *h, uint64_t gen)
{
    const size_t dir = sizeof(UW_SHM_DIR) - 1;
    char path[sizeof(UW_SHM_DIR) + RSPROF_UNWIND_NAME_BYTES];
    for (size_t i = 0; i < dir; i++)
        path[i] = UW_SHM_DIR[i];
    size_t k = 0;
    for (; k < RSPROF_UNWIND_NAME_BYTES; k++) {
        char c = LOAD_RLX(&h->unwind_name[k]);
        if (c == 0)
            break;
        if (c == '/')
            return UW_FAILED;
        path[dir + k] = c;
    }
    if (k == 0 || k == RSPROF_UNWIND_NAME_BYTES ||
        (path[dir] == '.' && (k == 1 || (k == 2 && path[dir + 1] == '.'))))
        return UW_FAILED;
    path[dir + k] = 0;
    /* The name belongs to `gen` only if no newer publish began meanwhile. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (LOAD_ACQ(&h->unwind_generation) != gen)
        return UW_RETRY;
    long fd = rsprof_sys4(SYS_openat, AT_FDCWD, path,
                          O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0);
    if (fd < 0)
        return UW_FAILED;
    struct stat st;
    long rc = rsprof_sys2(SYS_fstat, fd, &st);
    uint64_t size = rc == 0 ? (uint64_t)st.st_size : 0;
    long map = -1;
    if (rc == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
        size >= sizeof(struct rsprof_unwind_file_header) + sizeof(struct rsprof_unwind_row) &&
        size <= RSPROF_UNWIND_MAX_FILE_BYTES)
        map = rsprof_sys6(SYS_mmap, 0, (long)size, PROT_READ, MAP_SHARED, fd, 0);
    rsprof_sys1(SYS_close, fd);
    if ((unsigned long)map >= -4095ul) /* -errno, or not attempted */
        return UW_FAILED;
    const uint8_t *base = (const uint8_t *)map;
    const struct rsprof_unwind_file_header *fh = (const struct rsprof_unwind_file_header *)base;
    const struct rsprof_unwind_row *rows =
        (const struct rsprof_unwind_row *)(base + sizeof(struct rsprof_unwind_file_header));
    uint64_t n = fh->n_rows;
    int ok = fh->magic == RSPROF_UNWIND_MAGIC && fh->version == RSPROF_SHM_VERSION &&
             fh->row_bytes == sizeof(struct rsprof_unwind_row) && n >= 1 &&
             n <= (size - sizeof(struct rsprof_unwind_file_header)) /
                      sizeof(struct rsprof_unwind_row) &&
             g_uw_nmaps < UW_MAX_MAPS;
    for (uint64_t i = 1; ok && i < n; i++)
        ok = rows[i - 1].start < rows[i].start;
    if (!ok) {
        rsprof_sys2(SYS_munmap, map, (long)size);
        return UW_FAILED;
    }
    struct uw_map *m = &g_uw_maps[g_uw_nmaps++];
    m->rows = rows;
    m->n = n;
    m->gen = gen;
    STORE_REL(&g_uw_cur, m);
    return UW_MAPPED;
}

/* Another generation was published: one thread maps it, the others go on. */
__attribute__((noinline, cold)) static void uw_refresh(struct rsprof_shm_header *h, uint64_t gen)
{
    uint32_t free_ = 0;
    if (!__atomic_compare_exchange_n(&g_uw_lock, &free_, 1, 0, __ATOMIC_ACQUIRE,
                                     __ATOMIC_RELAXED))
        return;
    if (LOAD_RLX(&g_uw_tried) != gen && uw_map_file(h, gen) != UW_RETRY)
        STORE_REL(&g_uw_tried, gen);
    STORE_REL(&g_uw_lock, 0);
}
#endif

/* The table to unwind with now: the mapping of the generation the header names,
 * or NULL (none published, not mapped yet, or refused): frame pointers. */
static inline const struct uw_map *uw_table(struct rsprof_shm_header *h)
{
#if UW_ENABLED
    uint64_t gen = LOAD_ACQ(&h->unwind_generation);
    if (RSPROF_LIKELY(gen == 0))
        return NULL;
    const struct uw_map *m = LOAD_ACQ(&g_uw_cur);
    if (RSPROF_LIKELY(m != NULL && m->gen == gen))
        return m;
    if (LOAD_ACQ(&g_uw_tried) != gen)
        uw_refresh(h, gen);
    m = LOAD_ACQ(&g_uw_cur);
    return m != NULL && m->gen == gen ? m : NULL;
#else
    (void)h;
    return NULL;
#endif
}

/* The rows the previous walk of this thread used, by depth: a thread walks the
 * same frames again and again (its callers do not change between two of its
 * allocations), and this hint's address does not depend on pc, so its load is
 * off the walk's chain of dependent loads (pc -> cache entry -> row -> the
 * stack word at CFA + ra_off -> the next pc). Validated like a cache entry. */
static RSPROF_IE_TLS uint64_t t_uw_pc[RSPROF_MAX_FRAMES];
static RSPROF_IE_TLS uint32_t t_uw_idx[RSPROF_MAX_FRAMES];

/* Does row i of m hold q? (Any i: the index may come from another table.) */
static inline int uw_holds(const struct rsprof_unwind_row *rows, uint64_t n, uint64_t i,
                           uint64_t q)
{
    return i < n && rows[i].start <= q && (i + 1 == n || q < rows[i + 1].start);
}

/* The row covering pc - 1 (pc a return address, the k-th frame of the walk),
 * NULL below the first row: the thread's hint, the shared cache, or a binary
 * search (which refreshes both). */
static inline const struct rsprof_unwind_row *uw_row(const struct uw_map *m, uint64_t pc,
                                                     uint32_t k)
{
    const struct rsprof_unwind_row *rows = m->rows;
    uint64_t n = m->n, q = pc - 1;
    uint64_t i = t_uw_idx[k];
    if (RSPROF_LIKELY(t_uw_pc[k] == pc && uw_holds(rows, n, i, q)))
        return &rows[i];
    struct uw_slot *slot = &g_uw_cache[(pc * 0x9e3779b97f4a7c15ull) >> (64 - UW_CACHE_BITS)];
    i = LOAD_RLX(&slot->idx);
    if (LOAD_RLX(&slot->pc) != pc || !uw_holds(rows, n, i, q)) {
        uint64_t lo = 0, hi = n;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (rows[mid].start <= q)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == 0)
            return NULL;
        i = lo - 1;
        __atomic_store_n(&slot->idx, i, __ATOMIC_RELAXED);
        __atomic_store_n(&slot->pc, pc, __ATOMIC_RELAXED);
    }
    t_uw_pc[k] = pc;
    t_uw_idx[k] = (uint32_t)i;
    return &rows[i];
}

#define WALK_STEPS (RSPROF_MAX_FRAMES + 16)

/* Walk frame records from `fp` (a frame of the shim), dropping the first
 * `skip` return addresses. Every frame record must lie in this thread's
 * readable stack above the current stack pointer, be 8-byte aligned, and come
 * above the previous one: code without frame pointers gives a short stack,
 * never a fault.
 *
 * With an unwind table `m`, frame records are followed only through the
 * shim's own frames (built with frame pointers); from the first return address
 * kept on, CFI rules: the state there is pc = that address, sp = the CFA of
 * the shim frame it returns from (its frame record + 16), bp = the rbp saved
 * in that record. Per frame: the row of pc - 1; CFA = sp or bp + cfa_off (the
 * PLT expression: sp + 8, + 8 past the push); the return address at CFA +
 * ra_off and, if saved, rbp at CFA + bp_off, both proven readable as above;
 * the new sp (the CFA) must be above the old. A NONE row (no rules here) is
 * one frame-pointer step (bp at or above sp, proven; sp = bp + 16); OUTERMOST
 * ends the stack, and so do UNSUPPORTED, an unknown kind, a failed proof and
 * a return address below 4096. Reads of foreign stack frames are not
 * instrumented by ASan. */
__attribute__((noinline, no_sanitize_address)) static uint32_t
walk_stack(uintptr_t fp, unsigned skip, uint64_t *out, uint32_t max, int *truncated,
           const struct uw_map *m)
{
    uint32_t n = 0;
    uintptr_t sp0 = (uintptr_t)__builtin_frame_address(0);
    /* Local copies of the proven-readable range: the fast path below touches
     * no TLS; only the slow path (a new page) updates them. */
    uintptr_t lo = sp0, hi = 0;
    if (t_stack_state == 1 && sp0 >= t_stack_lo && sp0 < t_stack_hi)
        hi = t_stack_hi;
    unsigned steps = 0;
    uintptr_t pc = 0, sp = 0, bp = 0;
    for (; steps < WALK_STEPS; steps++) {
        if (!stack_word_ok(sp0, lo, &hi, fp, 16))
            return n;
        const uintptr_t *rec = (const uintptr_t *)fp;
        uintptr_t next = rec[0];
        uintptr_t ret = rec[1];
        if (ret < 4096)
            return n;
        if (m != NULL) {
            /* CFI from the first return address on, skipped or not: the frame
             * it returns into may keep no frame pointer (rsprof-trace's
             * allocator wrapper in a release build), so `next` can be junk. */
            pc = ret;
            sp = fp + 16;
            bp = next;
            goto cfi;
        }
        if (skip > 0) {
            skip--;
        } else {
            if (n == max) {
                *truncated = 1;
                return n;
            }
            out[n++] = ret;
        }
        if (next <= fp)
            return n;
        fp = next;
    }
    return n;
cfi:
    /* pc: a return address not yet counted against `skip` or kept. */
    if (skip > 0) {
        skip--;
    } else {
        if (n == max) {
            *truncated = 1;
            return n;
        }
        out[n++] = pc;
    }
    for (uint32_t d = 0; ++steps < WALK_STEPS; d++) {
        /* d: the frame's depth in this walk, skipped frames included (the
         * per-thread hint of uw_row is kept per depth). */
        const struct rsprof_unwind_row *row = uw_row(m, pc, d < RSPROF_MAX_FRAMES ? d : 0);
        unsigned kind = row != NULL ? row->kind : RSPROF_UNWIND_NONE;
        uintptr_t cfa, ra, nbp = bp;
        if (kind == RSPROF_UNWIND_NONE) {
            /* No rules: one frame-pointer step. */
            if (bp < sp || !stack_word_ok(sp0, lo, &hi, bp, 16))
                break;
            const uintptr_t *rec = (const uintptr_t *)bp;
            nbp = rec[0];
            ra = rec[1];
            cfa = bp + 16;
        } else {
            if (kind == RSPROF_UNWIND_SP)
                cfa = sp + (uintptr_t)(intptr_t)row->cfa_off;
            else if (kind == RSPROF_UNWIND_BP)
                cfa = bp + (uintptr_t)(intptr_t)row->cfa_off;
            else if (kind == RSPROF_UNWIND_PLT11 || kind == RSPROF_UNWIND_PLT10)
                cfa = sp + 8 + ((pc & 15) >= (kind == RSPROF_UNWIND_PLT11 ? 11u : 10u) ? 8 : 0);
            else
                break; /* OUTERMOST (no caller), UNSUPPORTED, unknown */
            uintptr_t at = cfa + (uintptr_t)(intptr_t)row->ra_off;
            if (!stack_word_ok(sp0, lo, &hi, at, 8))
                break;
            ra = *(const uintptr_t *)at;
            int16_t bp_off = row->bp_off;
            if (bp_off != RSPROF_UNWIND_BP_SAME) {
                at = cfa + (uintptr_t)(intptr_t)bp_off;
                if (!stack_word_ok(sp0, lo, &hi, at, 8))
                    break;
                nbp = *(const uintptr_t *)at;
            }
        }
        if (cfa <= sp || ra < 4096)
            break;
        if (skip > 0) {
            skip--;
        } else {
            if (n == max) {
                *truncated = 1;
                break;
            }
            out[n++] = ra;
        }
        pc = ra;
        sp = cfa;
        bp = nbp;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Stack interning: a trie of call sites (private memory, insert-only,      */
/* lock-free)                                                                */
/* ------------------------------------------------------------------------ */

/* A stack is a path in a trie whose nodes are (parent node, return address),
 * outermost frame nearest the root (heaptrack's trace tree). A node id is
 * the stack id the records carry; the reader learns each node once per
 * session from a NODE record, written before any record naming it and after
 * its parent's. Consecutive allocations of a thread share most of their outer
 * frames, so each thread keeps the path of its previous stack (t_path_*): an
 * allocation compares its walked frames with that path from the outside in
 * and looks up only the frames that differ, typically one to three, instead
 * of hashing and comparing the whole stack (binary-trees: 36 frames deep,
 * 131 k distinct stacks).
 *
 * A node's first KIDS_IN_LIST children hang in a list from the node itself;
 * further children (a node with many callees) go to a hash index keyed by
 * (parent, ret). Lists keep lookups in memory order: nodes are handed out
 * densely in creation order, which is the order a program's call tree is
 * first walked and, in a program that repeats its work, walked again, so a
 * lookup mostly touches the cache lines its predecessor touched or the next
 * ones (measured on binary-trees: a hash index alone missed the cache twice
 * per lookup, three lookups per allocation). A child's id is always above
 * its parent's. Two threads adding the same child at once may both succeed
 * (one in the list, one in the index): the reader merges equal paths. */
struct node {
    uint64_t ret;       /* key: the return address; written before the node is linked */
    uint32_t parent;    /* key: the parent node's id, 0 = the root */
    uint32_t first;     /* atomic: newest child in this node's list, 0 = none */
    uint32_t next;      /* the next older sibling in the parent's list */
    uint32_t kids;      /* atomic: children added (those past KIDS_IN_LIST: the index) */
    uint32_t announced; /* atomic: session + 1 of the session whose NODE record was written */
    uint32_t busy;      /* atomic: 1 while a thread writes this node's NODE record */
};

/* Up to 4 Mi nodes (128 MiB reserved) and an index of 4 Mi slots (16 MiB
 * reserved) for the children of wide nodes. All of it MAP_NORESERVE: only
 * what is used is ever touched. */
#define MAX_NODES (1u << 22)
#define INDEX_BITS 22
#define INDEX_SLOTS (1u << INDEX_BITS)
#define MAX_PROBES 512
#define KIDS_IN_LIST 8u
#define ANNOUNCED(sess) ((sess) + 1u) /* 0: never */

struct table {
    struct node root;            /* id 0: only its child list is used */
    uint32_t count;              /* nodes handed out (ids 1..count) */
    uint32_t max_count;
    uint32_t index[INDEX_SLOTS]; /* 0: empty, else node id */
    struct node nodes[MAX_NODES]; /* id n lives at nodes[n - 1] */
};

static struct table *g_table;
static uint32_t g_table_limit = MAX_NODES; /* RSPROF_SHIM_MAX_STACKS lowers it (tests) */

static struct table *table_get(void)
{
    struct table *t = LOAD_ACQ(&g_table);
    if (RSPROF_LIKELY(t != NULL))
        return t;
    int saved = errno;
    void *p = mmap(NULL, sizeof(struct table), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    errno = saved;
    if (p == MAP_FAILED)
        return NULL;
    t = p;
    t->max_count = g_table_limit;
    struct table *expected = NULL;
    if (!__atomic_compare_exchange_n(&g_table, &expected, t, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        munmap(p, sizeof(struct table));
        return expected;
    }
    return t;
}

static inline struct node *node_at(struct table *t, uint32_t id)
{
    return id ? &t->nodes[id - 1] : &t->root;
}

static inline uint32_t edge_slot(uint32_t parent, uint64_t ret)
{
    uint64_t h = ret * 0x9e3779b97f4a7c15ull ^ (uint64_t)parent * 0xc2b2ae3d27d4eb4full;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return (uint32_t)h & (INDEX_SLOTS - 1);
}

static int emit_node(struct rsprof_shm_header *h, uint32_t id, const struct node *n)
{
    struct rsprof_rec_node rec;
    rec.header = RSPROF_REC_HEADER(RSPROF_REC_NODE, sizeof(rec));
    rec.node_id = id;
    rec.parent_id = n->parent;
    rec.ret = n->ret;
    return ring_write(h, &rec, sizeof(rec), 0);
}

/* With the node's busy flag held: write its NODE record for the current
 * session unless that was done, then release the flag. */
static int announce_held(struct rsprof_shm_header *h, struct node *n, uint32_t id)
{
    int ok = 1;
    uint32_t cur = LOAD_ACQ(&h->session);
    if (LOAD_ACQ(&n->announced) != ANNOUNCED(cur)) {
        ok = emit_node(h, id, n);
        if (ok)
            STORE_REL(&n->announced, ANNOUNCED(cur));
    }
    STORE_REL(&n->busy, 0);
    return ok;
}

/* Make sure node `id`'s NODE record was written in session `sess` before
 * anyone writes a record naming it (one thread writes, others wait; the
 * node's creator holds `busy` from before the node is linked). */
static int announce(struct rsprof_shm_header *h, struct node *n, uint32_t id, uint32_t sess)
{
    unsigned spins = 0;
    for (;;) {
        if (LOAD_ACQ(&n->announced) == ANNOUNCED(sess))
            return 1;
        uint32_t idle = 0;
        if (__atomic_compare_exchange_n(&n->busy, &idle, 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return announce_held(h, n, id);
        spin_wait(&spins);
    }
}

/* A fresh node (busy, not linked anywhere yet), 0 when the table is full. */
static uint32_t node_take(struct table *t, uint32_t parent, uint64_t ret)
{
    uint32_t n = LOAD_RLX(&t->count);
    do {
        if (n >= t->max_count)
            return 0;
    } while (!__atomic_compare_exchange_n(&t->count, &n, n + 1, 1, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    struct node *fresh = &t->nodes[n];
    fresh->ret = ret;
    fresh->parent = parent;
    fresh->busy = 1; /* held until its NODE record is written */
    return n + 1;
}

/* Search parent's list from `head` down to (not including) `stop`. */
static inline uint32_t list_find(struct table *t, uint32_t head, uint32_t stop, uint64_t ret)
{
    for (uint32_t c = head; c != stop && c != 0; c = t->nodes[c - 1].next)
        if (t->nodes[c - 1].ret == ret)
            return c;
    return 0;
}

/* Find or add the child in the hash index; *mine: a node taken for it. */
static uint32_t index_child(struct table *t, uint32_t parent, uint64_t ret, uint32_t *mine)
{
    uint32_t idx = edge_slot(parent, ret);
    for (unsigned probe = 0; probe < MAX_PROBES; probe++, idx = (idx + 1) & (INDEX_SLOTS - 1)) {
        uint32_t cur = LOAD_ACQ(&t->index[idx]);
        if (cur == 0) {
            if (*mine == 0 && (*mine = node_take(t, parent, ret)) == 0)
                return 0;
            if (__atomic_compare_exchange_n(&t->index[idx], &cur, *mine, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return *mine;
            /* Lost the race for this slot: cur now holds the winner's id. */
        }
        const struct node *e = &t->nodes[cur - 1];
        if (e->ret == ret && e->parent == parent)
            return cur;
    }
    return 0;
}

/* The child of node `parent` for return address `ret`, announced in session
 * `sess`: found, or made (its NODE record written before anyone can use it).
 * 0 when the table is full or the record could not be written (*dropped). */
static uint32_t child_of(struct rsprof_shm_header *h, struct table *t, uint32_t parent,
                         uint64_t ret, uint32_t sess, int *dropped)
{
    struct node *p = node_at(t, parent);
    uint32_t head = LOAD_ACQ(&p->first);
    uint32_t found = list_find(t, head, 0, ret);
    uint32_t mine = 0; /* a node taken for this edge; never seen if not linked */
    if (found == 0 && LOAD_RLX(&p->kids) >= KIDS_IN_LIST) {
        found = index_child(t, parent, ret, &mine);
    } else if (found == 0) {
        if (__atomic_fetch_add(&p->kids, 1, __ATOMIC_RELAXED) >= KIDS_IN_LIST) {
            found = index_child(t, parent, ret, &mine);
        } else if ((mine = node_take(t, parent, ret)) != 0) {
            for (;;) {
                t->nodes[mine - 1].next = head;
                if (__atomic_compare_exchange_n(&p->first, &head, mine, 0, __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE)) {
                    found = mine;
                    break;
                }
                /* Others linked children since: one of them may be ours. */
                uint32_t seen = t->nodes[mine - 1].next;
                if ((found = list_find(t, head, seen, ret)) != 0)
                    break;
            }
        }
    }
    if (found == 0)
        return 0;
    struct node *n = &t->nodes[found - 1];
    int ok;
    if (found == mine) {
        ADD_RLX(&h->interned, 1);
        ok = announce_held(h, n, found);
    } else {
        ok = announce(h, n, found, sess);
    }
    if (!ok)
        *dropped = 1;
    return ok ? found : 0;
}

/* The path of this thread's previous stack, innermost first as walked:
 * t_path_nodes[i] is the node of frames [i, depth), announced in the session
 * of t_path_tag. */
static RSPROF_IE_TLS uint32_t t_path_depth;
static RSPROF_IE_TLS uint32_t t_path_tag; /* ANNOUNCED(session) of the path, 0 = none */
static RSPROF_IE_TLS uint64_t t_path_frames[RSPROF_MAX_FRAMES];
static RSPROF_IE_TLS uint32_t t_path_nodes[RSPROF_MAX_FRAMES];

enum { INTERN_OK, INTERN_FULL, INTERN_DROPPED };

/* The node id of `frames` (announced in session `sess`), interning what is
 * new. The empty stack is the root, id 0. */
static int intern(struct rsprof_shm_header *h, const uint64_t *frames, uint32_t depth,
                  uint32_t sess, uint32_t *id)
{
    uint32_t prev = t_path_depth, same = 0;
    if (t_path_tag == ANNOUNCED(sess)) {
        while (same < depth && same < prev &&
               frames[depth - 1 - same] == t_path_frames[prev - 1 - same])
            same++;
        if (same == depth && same == prev && depth > 0) {
            *id = t_path_nodes[0]; /* the same stack as last time: nothing to look up */
            return INTERN_OK;
        }
    }
    struct table *t = table_get();
    if (t == NULL)
        return INTERN_FULL;
    uint32_t node = same ? t_path_nodes[prev - same] : 0;
    if (same && prev != depth) {
        /* The shared outer frames move to the end of the new path. */
        memmove(t_path_frames + depth - same, t_path_frames + prev - same, 8u * same);
        memmove(t_path_nodes + depth - same, t_path_nodes + prev - same, 4u * same);
    }
    t_path_depth = 0; /* valid again only once complete */
    t_path_tag = ANNOUNCED(sess);
    for (uint32_t i = depth - same; i-- > 0;) {
        int dropped = 0;
        node = child_of(h, t, node, frames[i], sess, &dropped);
        if (node == 0)
            return dropped ? INTERN_DROPPED : INTERN_FULL;
        t_path_frames[i] = frames[i];
        t_path_nodes[i] = node;
    }
    t_path_depth = depth;
    *id = node;
    return INTERN_OK;
}

/* ------------------------------------------------------------------------ */
/* Records                                                                   */
/* ------------------------------------------------------------------------ */

static void emit_thread(struct rsprof_shm_header *h, uint32_t sess)
{
    struct rsprof_rec_thread rec;
    memset(&rec, 0, sizeof(rec));
    rec.header = RSPROF_REC_HEADER(RSPROF_REC_THREAD, sizeof(rec));
    rec.tid = my_tid();
    int saved = errno;
    if (prctl(PR_GET_NAME, (unsigned long)rec.name, 0, 0, 0) != 0)
        rec.name[0] = 0;
    errno = saved;
    rec.name[15] = 0;
    if (ring_write(h, &rec, sizeof(rec), 0))
        t_thread_tag = SESSION_TAG(sess);
}

/* The slow path of an allocation record; `fp` is the frame of the API
 * function the allocator entry point called (skip its return address). */
__attribute__((noinline)) static void record_alloc(struct rsprof_shm_header *h, void *ptr,
                                                   size_t size, uintptr_t fp)
{
    uint64_t frames[RSPROF_MAX_FRAMES];
    int truncated = 0;
    uint32_t depth = walk_stack(fp, 1, frames, g_max_frames, &truncated, uw_table(h));
    if (truncated)
        ADD_RLX(&h->truncated, 1);
    for (;;) {
        uint32_t sess = LOAD_ACQ(&h->session);
        if (t_thread_tag != SESSION_TAG(sess))
            emit_thread(h, sess);
        uint32_t id = 0;
        int r = intern(h, frames, depth, sess, &id);
        if (r == INTERN_DROPPED) {
            ADD_RLX(&h->dropped, 1);
            return;
        }
        if (r == INTERN_FULL) {
            uint64_t buf[4 + RSPROF_MAX_FRAMES];
            struct rsprof_rec_alloc_raw *rec = (struct rsprof_rec_alloc_raw *)(void *)buf;
            uint32_t rsize = (uint32_t)(sizeof(*rec) + 8u * depth);
            rec->header = RSPROF_REC_HEADER(RSPROF_REC_ALLOC_RAW, rsize);
            rec->ptr = (uint64_t)(uintptr_t)ptr;
            rec->size = size;
            rec->depth = depth;
            rec->reserved = 0;
            memcpy(buf + 4, frames, 8u * depth);
            if (ring_write(h, buf, rsize, 0))
                ADD_RLX(&h->raw_stacks, 1);
            return;
        }
        /* The compact 16-byte record, or the 32-byte one for huge sizes. */
        int big = (uint64_t)size > RSPROF_ALLOC_MAX_SIZE || id > RSPROF_ALLOC_MAX_STACK;
        uint32_t rsize = big ? (uint32_t)sizeof(struct rsprof_rec_alloc_big)
                             : (uint32_t)sizeof(struct rsprof_rec_alloc);
        uint64_t pos;
        if (!ring_reserve(h, rsize, 0, &pos))
            return;
        if (LOAD_ACQ(&h->session) != sess) {
            /* A new reader attached between the announcement and the
             * reservation: its NODE records may predate the new session. */
            commit_pad(pos, rsize);
            continue;
        }
        if (big) {
            struct rsprof_rec_alloc_big rec;
            rec.header = RSPROF_REC_HEADER(RSPROF_REC_ALLOC_BIG, sizeof(rec));
            rec.stack_id = id;
            rec.reserved = 0;
            rec.ptr = (uint64_t)(uintptr_t)ptr;
            rec.size = size;
            ring_commit(pos, &rec, sizeof(rec));
        } else {
            struct rsprof_rec_alloc rec;
            rec.header = RSPROF_ALLOC_WORD(id, size);
            rec.ptr = (uint64_t)(uintptr_t)ptr;
            ring_commit(pos, &rec, sizeof(rec));
        }
        return;
    }
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */
/* ------------------------------------------------------------------------ */

/* The SIGPROF self-sampler (csrc/rsprof_sampler.c), when linked in: hooks
 * that record give it the chance to arm CPU timers, which it does only when
 * the reader asked for self-sampling (header.reserved0 != 0). Weak in the
 * shared shim (both objects are linked together anyway); a static archive
 * must reference it strongly, or the linker never pulls the sampler's member
 * in (RSPROF_WITH_SAMPLER, set by rsprof-trace's build.rs for `cpu`). */
#ifdef RSPROF_WITH_SAMPLER
RSPROF_HIDDEN void rsprof__sampler_enter(struct rsprof_shm_header *h);
RSPROF_HIDDEN void rsprof__sampler_init(struct rsprof_shm_header *h);
#define SAMPLER_LINKED(fn) 1
#else
RSPROF_HIDDEN void rsprof__sampler_enter(struct rsprof_shm_header *h) __attribute__((weak));
RSPROF_HIDDEN void rsprof__sampler_init(struct rsprof_shm_header *h) __attribute__((weak));
#define SAMPLER_LINKED(fn) ((fn) != NULL)
#endif

static inline void sampler_enter(struct rsprof_shm_header *h)
{
    if (SAMPLER_LINKED(rsprof__sampler_enter) && RSPROF_UNLIKELY(LOAD_RLX(&h->reserved0) != 0))
        rsprof__sampler_enter(h);
}

__attribute__((noinline)) void rsprof_shim_record_alloc(void *ptr, size_t size)
{
    struct rsprof_shm_header *h = hdr();
    if (RSPROF_LIKELY(!recording(h)))
        return;
    if (ptr == NULL || t_guard)
        return;
    /* errno: nothing on this path changes it except the slow paths (waiting
     * for ring space, mapping the table, naming a thread), which save it. */
    t_guard = 1;
    sampler_enter(h);
    record_alloc(h, ptr, size, (uintptr_t)__builtin_frame_address(0));
    t_guard = 0;
}

__attribute__((noinline)) void rsprof_shim_record_free(void *ptr)
{
    struct rsprof_shm_header *h = hdr();
    if (RSPROF_LIKELY(!recording(h)))
        return;
    if (ptr == NULL || t_guard)
        return;
    t_guard = 1; /* errno: untouched here but in the (errno-saving) wait path */
    sampler_enter(h);
    struct rsprof_rec_free rec = {RSPROF_FREE_WORD((uintptr_t)ptr)};
    ring_write(h, &rec, sizeof(rec), 0);
    t_guard = 0;
}

__attribute__((noinline)) void rsprof_shim_realloc_begin(struct rsprof_shim_realloc *r,
                                                         void *old)
{
    r->armed = 0;
    r->old = (uint64_t)(uintptr_t)old;
    struct rsprof_shm_header *h = hdr();
    if (RSPROF_LIKELY(!recording(h)))
        return;
    if (old == NULL || t_guard)
        return;
    t_guard = 1;
    int saved = errno;
    if (ring_reserve(h, sizeof(struct rsprof_rec_free), 0, &r->pos))
        r->armed = 1;
    errno = saved;
    t_guard = 0;
}

__attribute__((noinline)) void rsprof_shim_realloc_end(struct rsprof_shim_realloc *r,
                                                       void *new_ptr, size_t size,
                                                       int old_released)
{
    if (r->armed) {
        /* Always commit a reserved slot, whatever the state now: the reader
         * stops at uncommitted records. */
        r->armed = 0;
        if (old_released) {
            struct rsprof_rec_free rec = {RSPROF_FREE_WORD(r->old)};
            ring_commit(r->pos, &rec, sizeof(rec));
        } else {
            commit_pad(r->pos, sizeof(struct rsprof_rec_free));
        }
    }
    struct rsprof_shm_header *h = hdr();
    if (RSPROF_LIKELY(!recording(h)))
        return;
    if (new_ptr == NULL || t_guard)
        return;
    t_guard = 1;
    int saved = errno;
    record_alloc(h, new_ptr, size, (uintptr_t)__builtin_frame_address(0));
    errno = saved;
    t_guard = 0;
}

int rsprof_shim_recording(void)
{
    return recording(hdr());
}

int rsprof_shim_write_record(const void *record, size_t size, int flags)
{
    struct rsprof_shm_header *h = hdr();
    if (!recording(h))
        return 0;
    uint64_t word;
    if (size < 8 || (size & 7) != 0 || size > g_ring || size > 0xffffffffu)
        return 0;
    memcpy(&word, record, 8);
    if (word == 0 || rsprof_rec_size(word) != size)
        return 0;
    int saved = errno;
    int ok = ring_write(h, record, (uint32_t)size, flags & RSPROF_SHIM_NOWAIT);
    errno = saved;
    return ok;
}

void rsprof__alloc(void *ptr, size_t size) __attribute__((alias("rsprof_shim_record_alloc")));
void rsprof__free(void *ptr) __attribute__((alias("rsprof_shim_record_free")));
void rsprof__realloc_begin(struct rsprof_shim_realloc *r, void *old)
    __attribute__((alias("rsprof_shim_realloc_begin")));
void rsprof__realloc_end(struct rsprof_shim_realloc *r, void *new_ptr, size_t size,
                         int old_released) __attribute__((alias("rsprof_shim_realloc_end")));

/* ------------------------------------------------------------------------ */
/* Region set-up                                                             */
/* ------------------------------------------------------------------------ */

static void publish(void *map, size_t len, struct rsprof_shm_header *h)
{
    g_map = map;
    g_map_len = len;
    g_ring = h->ring_size;
    g_mask = g_ring - 1;
    g_data = (uint8_t *)map + RSPROF_SHM_HEADER_BYTES;
    uint32_t mf = h->max_frames;
    g_max_frames = mf < RSPROF_MAX_FRAMES ? mf : RSPROF_MAX_FRAMES;
    g_mapped = 1;
    __atomic_store_n(&rsprof__hdr, h, __ATOMIC_RELEASE);
}

/* The region rsprof made for us: validate everything, claim it if its pid is
 * 0 (rsprof created it before we existed), refuse it if it names another pid. */
static void open_named(const char *env)
{
    char name[256];
    size_t n = strlen(env);
    if (n == 0 || n > 200)
        return;
    size_t k = 0;
    if (env[0] != '/')
        name[k++] = '/';
    for (size_t i = 0; i < n; i++) {
        if (env[i] == '/' && (i != 0 || k != 0))
            return; /* a name under /dev/shm only */
        name[k++] = env[i];
    }
    name[k] = 0;
    if (k < 2)
        return;
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)(RSPROF_SHM_HEADER_BYTES + 4096) ||
        (uint64_t)st.st_size > (1ull << 40)) {
        close(fd);
        return;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return;
    struct rsprof_shm_header *h = map;
    uint64_t ring = h->ring_size;
    uint32_t pid = (uint32_t)getpid();
    uint32_t owner = 0;
    int ok = LOAD_ACQ(&h->magic) == RSPROF_SHM_MAGIC && h->version == RSPROF_SHM_VERSION &&
             h->header_bytes == RSPROF_SHM_HEADER_BYTES && ring >= 4096 &&
             (ring & (ring - 1)) == 0 && ring <= len - RSPROF_SHM_HEADER_BYTES &&
             (__atomic_compare_exchange_n(&h->pid, &owner, pid, 0, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE) ||
              owner == pid);
    if (!ok) {
        munmap(map, len);
        return;
    }
    publish(map, len, h);
    /* `rsprof run` reads our memory map while we wait here (every library is
     * mapped by now: constructors run after the loader's work); bounded, so a
     * reader that died never holds the program. */
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + RSPROF_START_GATE_MAX_NS;
    while (LOAD_ACQ(&h->start_gate) != 0 && now_ns(CLOCK_MONOTONIC) < deadline)
        short_sleep(50000);
}

static void hex64(char *out, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = digits[v & 15];
        v >>= 4;
    }
}

static char *put_uint(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static int pid_dead(uint32_t pid)
{
    return pid != 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Regions nobody will unlink: a process that exec()s or leaves through _exit()
 * (dash does) never runs its destructors. Before creating ours, remove
 *   - rsprof-<our pid>-* regions whose header names our pid: an earlier image
 *     of this process, so `rsprof -p` finds only ours;
 *   - rsprof-* regions whose writer (header pid, or the pid in the name when
 *     the header has none) and reader are both dead, as rsprof itself does.
 * Regions of other users cannot be opened (mode 0600) and are left alone. */
static void sweep_regions(pid_t self)
{
    char mine[48], *p = mine;
    memcpy(p, RSPROF_SHM_NAME_PREFIX, sizeof(RSPROF_SHM_NAME_PREFIX) - 1);
    p += sizeof(RSPROF_SHM_NAME_PREFIX) - 1;
    p = put_uint(p, (uint64_t)self);
    *p++ = '-';
    *p = 0;
    size_t mlen = (size_t)(p - mine);
    const size_t plen = sizeof(RSPROF_SHM_NAME_PREFIX) - 1;
    DIR *dir = opendir("/dev/shm");
    if (dir == NULL)
        return;
    struct dirent *de;
    for (unsigned seen = 0; seen < 256 && (de = readdir(dir)) != NULL;) {
        if (strncmp(de->d_name, RSPROF_SHM_NAME_PREFIX, plen) != 0 || strlen(de->d_name) > 80)
            continue;
        seen++;
        uint32_t name_pid = 0;
        for (const char *c = de->d_name + plen; *c >= '0' && *c <= '9'; c++)
            name_pid = name_pid * 10 + (uint32_t)(*c - '0');
        char name[96];
        name[0] = '/';
        strcpy(name + 1, de->d_name);
        int fd = shm_open(name, O_RDONLY, 0);
        if (fd < 0)
            continue;
        struct stat st;
        void *map = MAP_FAILED;
        if (fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(struct rsprof_shm_header))
            map = mmap(NULL, sizeof(struct rsprof_shm_header), PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (map == MAP_FAILED)
            continue;
        const struct rsprof_shm_header *h = map;
        int valid = LOAD_ACQ(&h->magic) == RSPROF_SHM_MAGIC;
        uint32_t owner = LOAD_ACQ(&h->pid);
        uint32_t reader = LOAD_ACQ(&h->reader_pid);
        munmap(map, sizeof(struct rsprof_shm_header));
        if (!valid)
            continue;
        int earlier_image = strncmp(de->d_name, mine, mlen) == 0 && owner == (uint32_t)self;
        int abandoned = pid_dead(owner ? owner : name_pid) && (reader == 0 || pid_dead(reader));
        if (earlier_image || abandoned)
            shm_unlink(name);
    }
    closedir(dir);
}

/* No reader yet: a private IDLE region a reader may attach to later. */
static void create_private(void)
{
    uint64_t rnd = 0;
    if (syscall(SYS_getrandom, &rnd, sizeof(rnd), 1 /* GRND_NONBLOCK */) != (long)sizeof(rnd))
        rnd = now_ns(CLOCK_MONOTONIC) ^ ((uint64_t)(uintptr_t)&rnd << 16) ^
              (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    pid_t pid = getpid();
    sweep_regions(pid);
    char *p = g_name;
    *p++ = '/';
    memcpy(p, RSPROF_SHM_NAME_PREFIX, sizeof(RSPROF_SHM_NAME_PREFIX) - 1);
    p += sizeof(RSPROF_SHM_NAME_PREFIX) - 1;
    p = put_uint(p, (uint64_t)pid);
    *p++ = '-';
    hex64(p, rnd);
    p[16] = 0;
    int fd = shm_open(g_name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0)
        return;
    size_t len = RSPROF_SHM_HEADER_BYTES + RSPROF_SHM_DEFAULT_RING;
    void *map = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) == 0)
        map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        shm_unlink(g_name);
        return;
    }
    struct rsprof_shm_header *h = map;
    h->version = RSPROF_SHM_VERSION;
    h->header_bytes = RSPROF_SHM_HEADER_BYTES;
    h->ring_size = RSPROF_SHM_DEFAULT_RING;
    h->pid = (uint32_t)pid;
    h->max_frames = RSPROF_MAX_FRAMES;
    h->state = RSPROF_STATE_IDLE;
    STORE_REL(&h->magic, RSPROF_SHM_MAGIC);
    g_created = 1;
    g_owner = pid;
    publish(map, len, h);
}

static void atfork_child(void)
{
    /* The child must never write into the parent's ring: switch to the IDLE
     * dummy and replace the shared mapping by private memory (a hook that was
     * interrupted mid-record then writes into memory nobody reads). */
    __atomic_store_n(&rsprof__hdr, &g_dummy, __ATOMIC_RELEASE);
    if (g_map != NULL)
        mmap(g_map, g_map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
             -1, 0);
    g_created = 0;
    t_tid = 0;
    watch_close(); /* the parent's reader watch means nothing here */
    g_watch_key = 0;
    g_watch_owner = 0;
    g_uw_lock = 0; /* a parent's thread may have held it: it does not exist here */
}

int rsprof_shim_init(void)
{
    int st = LOAD_ACQ(&g_init);
    if (st == 2)
        return g_mapped;
    st = 0;
    if (!__atomic_compare_exchange_n(&g_init, &st, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 0; /* another thread is initializing: not recording yet */
    int saved_guard = t_guard;
    t_guard = 1;
    int saved = errno;
    const char *limit = getenv("RSPROF_SHIM_MAX_STACKS"); /* for tests: a small table */
    if (limit != NULL) {
        unsigned long v = strtoul(limit, NULL, 10);
        if (v < g_table_limit)
            g_table_limit = (uint32_t)v;
    }
    const char *env = getenv(RSPROF_SHM_ENV);
    if (env != NULL && env[0] != 0) {
        char copy[256];
        size_t n = strnlen(env, sizeof(copy) - 1);
        memcpy(copy, env, n);
        copy[n] = 0;
        /* Children we exec must never map our region. */
        unsetenv(RSPROF_SHM_ENV);
        open_named(copy);
    } else {
        if (env != NULL)
            unsetenv(RSPROF_SHM_ENV);
        create_private();
    }
    if (g_mapped) {
        pthread_atfork(NULL, NULL, atfork_child);
        if (SAMPLER_LINKED(rsprof__sampler_init))
            rsprof__sampler_init(hdr());
    }
    errno = saved;
    t_guard = saved_guard;
    STORE_REL(&g_init, 2);
    return g_mapped;
}

int rsprof__init(void) __attribute__((alias("rsprof_shim_init")));

__attribute__((constructor(102))) static void shim_constructor(void)
{
    rsprof_shim_init();
}

__attribute__((destructor)) static void shim_destructor(void)
{
    /* Only the name goes: the mapping stays valid for hooks that still run
     * (other destructors, other threads). */
    if (g_created && getpid() == g_owner) {
        int saved = errno;
        shm_unlink(g_name);
        g_created = 0;
        errno = saved;
    }
}
