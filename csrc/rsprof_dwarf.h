/* A small, bounds-checked DWARF (versions 2-5) reader for address -> inline-aware
 * source lookup. Only the compile units holding the requested addresses are
 * decoded (line program and DIE tree), like binutils addr2line does.
 *
 * All section buffers are borrowed: they must outlive the context. Returned
 * string pointers point into those buffers (always NUL-terminated within them).
 * Corrupt input never crashes: the affected compile unit or address reports
 * "unknown" (0 frames).
 */
#ifndef RSPROF_DWARF_H
#define RSPROF_DWARF_H

#include <stddef.h>
#include <stdint.h>

enum {
    RSD_INFO = 0,
    RSD_ABBREV,
    RSD_LINE,
    RSD_STR,
    RSD_LINE_STR,
    RSD_RANGES,
    RSD_RNGLISTS,
    RSD_ARANGES,
    RSD_ADDR,
    RSD_STR_OFFSETS,
    RSD_NSECT
};

typedef struct {
    const uint8_t *data;
    size_t size;
} rsd_section;

typedef struct {
    const char *name;     /* linkage name (preferred) or name; NULL if none */
    const char *comp_dir; /* DW_AT_comp_dir of the CU, or NULL */
    const char *dir;      /* the file's directory entry, or NULL */
    const char *file;     /* the file name; NULL when no file is known */
    uint32_t line;        /* 0 when unknown */
} rsd_frame;

typedef struct rsd_ctx rsd_ctx;

/* NULL on allocation failure or when .debug_info is unusable. */
rsd_ctx *rsd_open(const rsd_section sections[RSD_NSECT]);
void rsd_close(rsd_ctx *ctx);

/* Frames at `addr`, innermost first, at most `max`. Returns their count; 0 when
 * DWARF does not describe the address (or is corrupt there). */
int rsd_lookup(rsd_ctx *ctx, uint64_t addr, rsd_frame *out, int max);

/* Number of compile units decoded so far (for tests / statistics). */
size_t rsd_decoded_units(const rsd_ctx *ctx);
size_t rsd_unit_count(const rsd_ctx *ctx);

#endif
