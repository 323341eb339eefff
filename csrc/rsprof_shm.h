/* rsprof_shm.h: the one definition of the shared-memory ring between the
 * shim inside a target process (writer) and rsprof (reader).
 *
 * Region layout: a header page (struct rsprof_shm_header, padded to
 * RSPROF_SHM_HEADER_BYTES), then `ring_size` bytes of ring data (a power of
 * two). Positions (reserve, committed records, tail) are byte counts that only
 * grow; the byte at position p lives at data[p & (ring_size - 1)]. Records may
 * wrap around the end of the data area.
 *
 * Writing (many threads): reserve `size` bytes with a CAS on `reserve` (only
 * when `reserve + size - tail <= ring_size`), write the record body, then store
 * its first 8 bytes (the record header word, never 0) with release order: that
 * store commits the record. Reading (one reader): at position `tail`, load the
 * header word with acquire; 0 means "not committed yet" (stop there). After
 * consuming records the reader zeroes their bytes and then advances `tail`
 * with release, so a later lap sees 0 in uncommitted slots.
 *
 * Everything here is untrusted input to the reader: it validates magic,
 * version, sizes and every record length.
 */
#ifndef RSPROF_SHM_H
#define RSPROF_SHM_H

#include <stdint.h>

#define RSPROF_SHM_MAGIC 0x314d4853464f5250ULL /* "PROFSHM1" little-endian */
#define RSPROF_SHM_VERSION 6u /* 4: NODE records (a trie of stacks); 5: SAMPLE_REGS,
                                * header.sampler_stack_bytes; 6: the unwind table
                                * (header.unwind_generation, unwind_name) */
#define RSPROF_SHM_HEADER_BYTES 4096u
#define RSPROF_SHM_NAME_PREFIX "rsprof-" /* /dev/shm/rsprof-<pid>-<16 hex> */
#define RSPROF_SHM_ENV "RSPROF_SHM"      /* set by `rsprof run`: the region to use */
#define RSPROF_SHM_DEFAULT_RING (16u << 20)
#define RSPROF_MAX_FRAMES 64u            /* deepest stack a heap record carries */

/* header.state */
#define RSPROF_STATE_IDLE 0u      /* no reader: hooks record nothing */
#define RSPROF_STATE_RECORDING 1u /* a live reader: hooks record (and may wait for space) */
#define RSPROF_STATE_STOPPED 2u   /* the reader stopped answering: hooks record nothing */

/* A writer waits at most this long without a reader heartbeat before it
 * gives up and sets RSPROF_STATE_STOPPED. */
#define RSPROF_READER_TIMEOUT_NS 1000000000ull
#define RSPROF_START_GATE_MAX_NS 2000000000ull /* longest wait at start_gate */

/* Record types: the type is the top 4 bits of a record's first word.
 *
 * The two hot records are as small as they can be, because moving their bytes
 * between the target's core and the reader's is most of what heap tracking
 * costs (measured: 56 -> 24 bytes per alloc/free pair saved ~30 ns per pair):
 *   FREE  (8 bytes):  word = FREE << 60 | ptr
 *   ALLOC (16 bytes): word = ALLOC << 60 | stack_id << 36 | size; then ptr
 * Every other record is variable-size: word = type << 60 | total size in bytes
 * (a multiple of 8, at least 8; bits 32..59 zero). */
#define RSPROF_REC_PAD 1u       /* skip: size bytes of nothing */
#define RSPROF_REC_STACK 2u     /* a whole stack with an id (read; the shim sends NODEs) */
#define RSPROF_REC_ALLOC 3u     /* an allocation with an interned stack (16 bytes) */
#define RSPROF_REC_FREE 4u      /* a free (8 bytes) */
#define RSPROF_REC_ALLOC_RAW 5u /* an allocation carrying its stack (stack trie full) */
#define RSPROF_REC_SAMPLE 6u    /* a CPU sample taken by the SIGPROF self-sampler */
#define RSPROF_REC_THREAD 7u    /* a thread name (tid, comm) */
#define RSPROF_REC_ALLOC_BIG 8u /* an allocation too big (or a stack id too high) for ALLOC */
#define RSPROF_REC_NODE 9u      /* a new stack-trie node (24 bytes) */
#define RSPROF_REC_SAMPLE_REGS 10u /* a CPU sample with registers and a copy of the stack */

#define RSPROF_REC_TYPE_SHIFT 60
#define RSPROF_PTR_MASK ((1ull << 60) - 1)
#define RSPROF_ALLOC_SIZE_BITS 36
#define RSPROF_ALLOC_MAX_SIZE ((1ull << RSPROF_ALLOC_SIZE_BITS) - 1)
#define RSPROF_ALLOC_MAX_STACK ((1u << 24) - 1)

#define RSPROF_REC_HEADER(type, size) \
    (((uint64_t)(type) << RSPROF_REC_TYPE_SHIFT) | (uint64_t)(uint32_t)(size))
#define RSPROF_REC_TYPE(word) ((uint32_t)((word) >> RSPROF_REC_TYPE_SHIFT))
#define RSPROF_FREE_WORD(ptr) \
    (((uint64_t)RSPROF_REC_FREE << RSPROF_REC_TYPE_SHIFT) | ((uint64_t)(ptr) & RSPROF_PTR_MASK))
#define RSPROF_ALLOC_WORD(stack_id, size)                       \
    (((uint64_t)RSPROF_REC_ALLOC << RSPROF_REC_TYPE_SHIFT) |    \
     ((uint64_t)(stack_id) << RSPROF_ALLOC_SIZE_BITS) | (uint64_t)(size))
#define RSPROF_ALLOC_WORD_STACK(word) ((uint32_t)(((word) >> RSPROF_ALLOC_SIZE_BITS) & 0xffffffu))
#define RSPROF_ALLOC_WORD_SIZE(word) ((word) & RSPROF_ALLOC_MAX_SIZE)

/* Total size of the record starting with `word` (0: not a valid record). */
static inline uint32_t rsprof_rec_size(uint64_t word)
{
    uint32_t type = RSPROF_REC_TYPE(word);
    if (type == RSPROF_REC_FREE)
        return 8;
    if (type == RSPROF_REC_ALLOC)
        return 16;
    if ((word >> 32) & 0x0fffffffu)
        return 0;
    return (uint32_t)word;
}

struct rsprof_shm_header {
    uint64_t magic;          /* RSPROF_SHM_MAGIC */
    uint32_t version;        /* RSPROF_SHM_VERSION */
    uint32_t header_bytes;   /* RSPROF_SHM_HEADER_BYTES */
    uint64_t ring_size;      /* bytes of ring data after the header, a power of two */
    uint32_t pid;            /* the target process that writes */
    uint32_t max_frames;     /* RSPROF_MAX_FRAMES */
    /* writer side */
    uint64_t reserve;        /* atomic: bytes reserved by writers so far */
    uint64_t dropped;        /* atomic: records not written (signal handler, full, stopped) */
    uint64_t waits;          /* atomic: times a writer waited for ring space */
    uint64_t interned;       /* atomic: stack-trie nodes made by the shim (NODE records) */
    uint64_t raw_stacks;     /* atomic: allocations written with raw stacks (table full) */
    uint64_t truncated;      /* atomic: stacks cut at RSPROF_MAX_FRAMES */
    /* reader side */
    uint64_t tail;           /* atomic: bytes consumed by the reader */
    uint64_t heartbeat_ns;   /* atomic: CLOCK_MONOTONIC of the reader's last drain */
    uint32_t reader_pid;     /* atomic: the reader's pid, 0 when none */
    uint32_t state;          /* atomic: RSPROF_STATE_* */
    uint32_t session;        /* atomic: bumped by each attaching reader */
    uint32_t reserved0;      /* atomic, written by the reader: CPU self-sampling Hz it asks
                              * for (0 = off; csrc/rsprof_sampler.c, RSPROF_REC_SAMPLE) */
    uint32_t sampler_ready;  /* atomic, written by the shim: 1 when its SIGPROF handler is
                              * installed, so the reader may wake it (RSPROF_SAMPLER_WAKE) */
    uint32_t start_gate;     /* atomic, written by the reader: 1 = the process that claims
                              * this region waits in its start-up, at most
                              * RSPROF_START_GATE_MAX_NS, until the reader sets 0 (`rsprof
                              * run` reads the program's memory map there: a program that
                              * exits within milliseconds is still symbolized) */
    uint32_t sampler_stack_bytes; /* atomic, written by the reader: bytes of the interrupted
                              * thread's stack the self-sampler copies into each sample
                              * (RSPROF_REC_SAMPLE_REGS instead of RSPROF_REC_SAMPLE), for
                              * the reader to unwind with CFI; 0 = none. The shim clamps it
                              * to RSPROF_SAMPLER_MAX_STACK_BYTES and rounds it down to 8 */
    uint32_t reserved1;      /* 0 (pads the header to a multiple of 8) */
    /* The unwind table (struct rsprof_unwind_file_header below), for heap stacks of
     * code without frame pointers. Written by the reader only: first the file's name,
     * then the generation bumped with release order. The shim loads the generation
     * with acquire order and maps the named file when it differs from the one it
     * mapped last. */
    uint64_t unwind_generation; /* atomic: bumped at each publish; 0 = no table */
    char unwind_name[64];       /* the file's name under /dev/shm (no '/'), NUL-terminated */
};

/* ------------------------------------------------------------------------
 * The unwind table: DWARF CFI rules of every mapped object, with runtime
 * addresses, built by the reader (from each object's .eh_frame/.debug_frame,
 * csrc/rsprof_cfi.c) and mapped read-only by the shim, which unwinds heap
 * allocation stacks in-process with it (the bytehound / heaptrack model).
 *
 * File: /dev/shm/<header.unwind_name>, struct rsprof_unwind_file_header, then
 * n_rows rows of struct rsprof_unwind_row (16 bytes each, little-endian, the
 * rows at offset 32). Rows are sorted by `start`, strictly increasing; a row
 * holds from its start up to the next row's start (the last one: up to the
 * end of the address space, so a table ends with a NONE row). The rows of all
 * modules are merged: where no module has rules (between modules, the end of
 * an FDE) a NONE row; an address below the first row has no rules either.
 * The file may be longer than its rows; the shim refuses a file whose magic,
 * version or row_bytes differ, with n_rows 0, with rows past the end of the
 * file or out of order, or larger than RSPROF_UNWIND_MAX_FILE_BYTES. The shim
 * opens it with its own credentials (the reader makes it readable to the
 * target's user).
 *
 * The shim unwinds with the table of the generation the header names, once it
 * has mapped it (one thread maps it at an allocation; the others, meanwhile,
 * and every thread after the file was refused, walk frame pointers). It never
 * unmaps a table and maps at most 256 per process: publish when the set of
 * mapped objects changed, not more often.
 *
 * A published file is immutable: the reader writes it completely before it
 * publishes its name, and never writes, truncates or extends it afterwards
 * (the shim's mapping of it stays in use, even after a newer one is
 * published); it may unlink it at any time. A name rewritten while a shim
 * copies it may be read torn: that open fails or the file is refused, and the
 * shim maps the next generation.
 * ------------------------------------------------------------------------ */
#define RSPROF_UNWIND_MAGIC 0x31574e55464f5250ULL /* "PROFUNW1" little-endian */
#define RSPROF_UNWIND_NAME_BYTES 64u
#define RSPROF_UNWIND_MAX_FILE_BYTES (1ull << 32) /* a larger file is refused */

/* Row kinds (the values of rsprof_cfi.h's RSPROF_CFI_*). */
#define RSPROF_UNWIND_NONE 0        /* no rules here: one frame-pointer step */
#define RSPROF_UNWIND_SP 1          /* CFA = stack pointer + cfa_off */
#define RSPROF_UNWIND_BP 2          /* CFA = frame register + cfa_off */
#define RSPROF_UNWIND_PLT11 3       /* CFA = sp + 8 + (((pc & 15) >= 11) ? 8 : 0) */
#define RSPROF_UNWIND_PLT10 4       /* CFA = sp + 8 + (((pc & 15) >= 10) ? 8 : 0) */
#define RSPROF_UNWIND_OUTERMOST 5   /* the return address is undefined: no caller */
#define RSPROF_UNWIND_UNSUPPORTED 6 /* a rule the table does not model: the stack ends */
#define RSPROF_UNWIND_BP_SAME INT16_MIN /* bp_off: the frame register is unchanged */

/* One rule row: exactly the layout of struct rsprof_cfi_row (rsprof_cfi.c
 * asserts it), with a runtime address in `start`. */
struct rsprof_unwind_row {
    uint64_t start;  /* runtime address from which this row holds (up to the next row) */
    int32_t cfa_off; /* CFA = base register + cfa_off (PLT kinds: 8) */
    int16_t bp_off;  /* RSPROF_UNWIND_BP_SAME, else rbp is saved at CFA + bp_off */
    int8_t ra_off;   /* the return address is saved at CFA + ra_off (x86-64: -8) */
    uint8_t kind;    /* RSPROF_UNWIND_* */
};

struct rsprof_unwind_file_header {
    uint64_t magic;     /* RSPROF_UNWIND_MAGIC */
    uint32_t version;   /* RSPROF_SHM_VERSION */
    uint32_t row_bytes; /* sizeof(struct rsprof_unwind_row), 16 */
    uint64_t n_rows;    /* rows that follow the header */
    uint64_t reserved;  /* 0 */
    /* struct rsprof_unwind_row rows[n_rows] follow */
};

/* The most stack one RSPROF_REC_SAMPLE_REGS carries (header.sampler_stack_bytes). */
#define RSPROF_SAMPLER_MAX_STACK_BYTES 65536u

/* The reader's wake-up call to the self-sampler: sigqueue(pid, SIGPROF,
 * {.sival_int = RSPROF_SAMPLER_WAKE}) after attaching with reserved0 != 0,
 * and again at every flush: the handler arms the timers of threads it has not
 * armed yet (a process that never allocates would otherwise never arm any). */
#define RSPROF_SAMPLER_WAKE 0x72737077 /* "wpsr" */

/* RSPROF_REC_STACK: header, id, depth, frames[depth] (return addresses as walked) */
struct rsprof_rec_stack {
    uint64_t header;
    uint32_t stack_id;
    uint32_t depth;
    /* uint64_t frames[depth] follow */
};

/* RSPROF_REC_NODE: header = RSPROF_REC_HEADER(RSPROF_REC_NODE, 24). The shim
 * interns stacks as a trie (heaptrack's trace tree): the stack of node
 * `node_id` is [ret] followed by the stack of `parent_id` (0: the root, the
 * empty stack). Ids start at 1; a parent is always written before its
 * children (in every reader session) and parent_id < node_id. ALLOC and
 * ALLOC_BIG stack ids name nodes. */
struct rsprof_rec_node {
    uint64_t header;
    uint32_t node_id;
    uint32_t parent_id;
    uint64_t ret; /* a return address, as walked */
};

/* RSPROF_REC_ALLOC: header = RSPROF_ALLOC_WORD(stack_id, size) */
struct rsprof_rec_alloc {
    uint64_t header;
    uint64_t ptr;
};

/* RSPROF_REC_ALLOC_BIG */
struct rsprof_rec_alloc_big {
    uint64_t header;
    uint32_t stack_id;
    uint32_t reserved;
    uint64_t ptr;
    uint64_t size;
};

/* RSPROF_REC_FREE: the header word alone, RSPROF_FREE_WORD(ptr) */
struct rsprof_rec_free {
    uint64_t header;
};

/* RSPROF_REC_ALLOC_RAW: an allocation, then depth and the frames */
struct rsprof_rec_alloc_raw {
    uint64_t header;
    uint64_t ptr;
    uint64_t size;
    uint32_t depth;
    uint32_t reserved;
    /* uint64_t frames[depth] follow */
};

/* RSPROF_REC_SAMPLE: a CPU sample (frames[0] is the interrupted IP).
 * period_ns: the thread CPU time the sample stands for, the timer's interval
 * times (1 + its overruns): a CPU-time timer fires at most at the kernel tick,
 * so at a requested rate above the tick each signal stands for several
 * intervals (siginfo's si_overrun counts the ones it missed). */
struct rsprof_rec_sample {
    uint64_t header;
    uint32_t tid;
    uint32_t depth;
    uint64_t time_ns;
    uint64_t period_ns;
    /* uint64_t frames[depth] follow */
};

/* RSPROF_REC_SAMPLE_REGS: a CPU sample as RSPROF_REC_SAMPLE (tid, time_ns,
 * period_ns, the frame-pointer walk), plus what a CFI unwinder needs: the
 * interrupted registers and a copy of the top of the interrupted thread's
 * stack. Written instead of RSPROF_REC_SAMPLE while the header's
 * sampler_stack_bytes (the bytes asked, after the shim's clamp to
 * RSPROF_SAMPLER_MAX_STACK_BYTES and rounding down to 8) is not 0.
 * Layout: this struct, uint64_t frames[depth] (frames[0] = ip, then return
 * addresses as walked), then the stack area: the record's size is
 * sizeof(struct) + 8 * depth + the bytes asked (a multiple of 8), and the
 * first stack_bytes of that area are the bytes at [sp, sp + stack_bytes) of
 * the thread's memory. stack_bytes may be fewer than asked (0 included): the
 * copy (one process_vm_readv) stops at the first unreadable page, the end of
 * the stack's mapping. The rest of the area is not meaningful. */
struct rsprof_rec_sample_regs {
    uint64_t header;      /* RSPROF_REC_HEADER(RSPROF_REC_SAMPLE_REGS, size) */
    uint32_t tid;
    uint32_t depth;       /* frame-pointer frames that follow, as in RSPROF_REC_SAMPLE */
    uint64_t time_ns;
    uint64_t period_ns;
    uint64_t ip, sp, fp;  /* interrupted PC, stack pointer, frame pointer
                           * (x86-64: RIP, RSP, RBP; aarch64: PC, SP, X29) */
    uint64_t stack_bytes; /* bytes of stack copied from sp (<= the bytes asked) */
    /* uint64_t frames[depth]; then uint8_t stack[] */
};

/* RSPROF_REC_THREAD */
struct rsprof_rec_thread {
    uint64_t header;
    uint32_t tid;
    uint32_t reserved;
    char name[16];
};

_Static_assert(sizeof(struct rsprof_shm_header) == 200, "shm header layout");
_Static_assert(sizeof(struct rsprof_shm_header) <= RSPROF_SHM_HEADER_BYTES, "header fits");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, reserve) == 32, "reserve offset");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, tail) == 80, "tail offset");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, heartbeat_ns) == 88, "heartbeat");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, state) == 100, "state offset");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, start_gate) == 116, "start_gate");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, sampler_stack_bytes) == 120,
               "sampler_stack_bytes offset");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, reserved1) == 124, "reserved1");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, unwind_generation) == 128,
               "unwind_generation offset");
_Static_assert(__builtin_offsetof(struct rsprof_shm_header, unwind_name) == 136,
               "unwind_name offset");
_Static_assert(sizeof(((struct rsprof_shm_header *)0)->unwind_name) == RSPROF_UNWIND_NAME_BYTES,
               "unwind_name size");
_Static_assert(sizeof(struct rsprof_unwind_row) == 16, "unwind row");
_Static_assert(__builtin_offsetof(struct rsprof_unwind_row, cfa_off) == 8, "row cfa_off");
_Static_assert(__builtin_offsetof(struct rsprof_unwind_row, bp_off) == 12, "row bp_off");
_Static_assert(__builtin_offsetof(struct rsprof_unwind_row, ra_off) == 14, "row ra_off");
_Static_assert(__builtin_offsetof(struct rsprof_unwind_row, kind) == 15, "row kind");
_Static_assert(sizeof(struct rsprof_unwind_file_header) == 32, "unwind file header");
_Static_assert(__builtin_offsetof(struct rsprof_unwind_file_header, n_rows) == 16, "n_rows");
_Static_assert(sizeof(struct rsprof_rec_stack) == 16, "stack record");
_Static_assert(sizeof(struct rsprof_rec_alloc) == 16, "alloc record");
_Static_assert(sizeof(struct rsprof_rec_node) == 24, "node record");
_Static_assert(sizeof(struct rsprof_rec_alloc_big) == 32, "big alloc record");
_Static_assert(sizeof(struct rsprof_rec_free) == 8, "free record");
_Static_assert(sizeof(struct rsprof_rec_alloc_raw) == 32, "raw alloc record");
_Static_assert(sizeof(struct rsprof_rec_sample) == 32, "sample record");
_Static_assert(__builtin_offsetof(struct rsprof_rec_sample, period_ns) == 24, "sample period");
_Static_assert(sizeof(struct rsprof_rec_sample_regs) == 64, "sample regs record");
_Static_assert(__builtin_offsetof(struct rsprof_rec_sample_regs, period_ns) == 24,
               "sample regs period");
_Static_assert(__builtin_offsetof(struct rsprof_rec_sample_regs, ip) == 32, "sample regs ip");
_Static_assert(__builtin_offsetof(struct rsprof_rec_sample_regs, stack_bytes) == 56,
               "sample regs stack_bytes");
_Static_assert(RSPROF_SAMPLER_MAX_STACK_BYTES % 8 == 0, "stack copy in words");
_Static_assert(sizeof(struct rsprof_rec_sample_regs) + 8u * RSPROF_MAX_FRAMES +
                   RSPROF_SAMPLER_MAX_STACK_BYTES <= RSPROF_SHM_DEFAULT_RING / 64,
               "the largest SAMPLE_REGS record is small next to a ring");
_Static_assert(sizeof(struct rsprof_rec_thread) == 32, "thread record");
_Static_assert((RSPROF_SHM_DEFAULT_RING & (RSPROF_SHM_DEFAULT_RING - 1)) == 0, "ring pow2");

#endif /* RSPROF_SHM_H */
