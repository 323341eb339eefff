/* DWARF call frame information (.eh_frame, .debug_frame) as a compact sorted
 * table of unwind rules, for unwinding code built without frame pointers.
 *
 * Only what a profiler's unwinder needs is kept, per address range:
 *   - the CFA rule: a base register (the stack pointer or the frame register)
 *     plus an offset, or the PLT expression binutils emits for .plt;
 *   - the rule of the frame register (rbp on x86-64): unchanged, or saved at
 *     CFA + N;
 *   - the rule of the return address: saved at CFA + N, or undefined (the
 *     outermost frame, e.g. _start).
 * Anything else is kept as one "unsupported" row: the unwinder stops there
 * (or falls back to frame pointers) instead of guessing.
 *
 * Registers are named by role (CFA base, frame register, return address) so
 * another architecture (aarch64: sp = 31, fp = x29, ra = x30) needs only a new
 * role map; x86-64 is the only one implemented.
 *
 * Malformed input never crashes or loops: every read is bounds-checked and
 * every loop is bounded by the bytes it consumes; a bad CIE or FDE is skipped
 * and counted in bad_entries. */
#ifndef RSPROF_CFI_H
#define RSPROF_CFI_H

#include <stddef.h>
#include <stdint.h>

/* Row kinds. */
#define RSPROF_CFI_NONE 0        /* no FDE covers this address (the end of an FDE) */
#define RSPROF_CFI_SP 1          /* CFA = stack pointer + cfa_off */
#define RSPROF_CFI_BP 2          /* CFA = frame register + cfa_off */
#define RSPROF_CFI_PLT11 3       /* CFA = sp + 8 + (((pc & 15) >= 11) ? 8 : 0) */
#define RSPROF_CFI_PLT10 4       /* CFA = sp + 8 + (((pc & 15) >= 10) ? 8 : 0) */
#define RSPROF_CFI_OUTERMOST 5   /* the return address is undefined: no caller */
#define RSPROF_CFI_UNSUPPORTED 6 /* a rule this table does not model */

/* bp_off of a row whose frame register is unchanged by the frame. */
#define RSPROF_CFI_SAME INT16_MIN

/* DWARF register numbers of x86-64 by role. */
#define RSPROF_CFI_X86_64_SP 7
#define RSPROF_CFI_X86_64_FP 6
#define RSPROF_CFI_X86_64_RA 16

/* The layout of rsprof_shm.h's struct rsprof_unwind_row, the rows of the unwind
 * table file the shim maps (asserted in rsprof_cfi.c): keep the two in step. */
struct rsprof_cfi_row {
    uint64_t start;  /* object vaddr from which this row holds (up to the next row) */
    int32_t cfa_off; /* CFA = base register + cfa_off (PLT kinds: 8) */
    int16_t bp_off;  /* RSPROF_CFI_SAME: frame register unchanged; else saved at CFA + bp_off */
    int8_t ra_off;   /* the return address is saved at CFA + ra_off (x86-64: -8) */
    uint8_t kind;    /* RSPROF_CFI_* */
};

struct rsprof_cfi_table {
    struct rsprof_cfi_row *rows; /* sorted by start, strictly increasing */
    size_t n;
    size_t fdes;             /* FDEs decoded */
    size_t unsupported_rows; /* rows of kind RSPROF_CFI_UNSUPPORTED */
    size_t bad_entries;      /* CIEs/FDEs skipped as malformed */
};

/* Build the table of an object from its .eh_frame (loaded at object vaddr
 * eh_vaddr, which pc-relative pointers need) and/or its .debug_frame (absolute
 * addresses). Either may be NULL/0. Rows come from .eh_frame, plus .debug_frame
 * FDEs where .eh_frame covers nothing; where FDEs overlap, the earlier one (in
 * section order) keeps its coverage. Returns 0, or -1 when out of memory (the
 * table is then empty). */
int rsprof_cfi_build(struct rsprof_cfi_table *t, const uint8_t *eh, size_t eh_len,
                     uint64_t eh_vaddr, const uint8_t *dbg, size_t dbg_len);

/* The row holding vaddr: NULL, or a row of kind RSPROF_CFI_NONE, when no CFI
 * covers it. */
const struct rsprof_cfi_row *rsprof_cfi_find(const struct rsprof_cfi_table *t, uint64_t vaddr);

void rsprof_cfi_free(struct rsprof_cfi_table *t);

#endif
