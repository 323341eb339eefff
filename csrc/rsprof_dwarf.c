/* Bounds-checked DWARF 2-5 reader: see rsprof_dwarf.h. */
#include "rsprof_dwarf.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* constants                                                                 */

#define DW_TAG_entry_point 0x03
#define DW_TAG_compile_unit 0x11
#define DW_TAG_inlined_subroutine 0x1d
#define DW_TAG_subprogram 0x2e
#define DW_TAG_partial_unit 0x3c

#define DW_AT_name 0x03
#define DW_AT_stmt_list 0x10
#define DW_AT_low_pc 0x11
#define DW_AT_high_pc 0x12
#define DW_AT_comp_dir 0x1b
#define DW_AT_abstract_origin 0x31
#define DW_AT_specification 0x47
#define DW_AT_ranges 0x55
#define DW_AT_call_file 0x58
#define DW_AT_call_line 0x59
#define DW_AT_linkage_name 0x6e
#define DW_AT_str_offsets_base 0x72
#define DW_AT_addr_base 0x73
#define DW_AT_rnglists_base 0x74
#define DW_AT_MIPS_linkage_name 0x2007
#define DW_AT_GNU_addr_base 0x2133

#define DW_FORM_addr 0x01
#define DW_FORM_block2 0x03
#define DW_FORM_block4 0x04
#define DW_FORM_data2 0x05
#define DW_FORM_data4 0x06
#define DW_FORM_data8 0x07
#define DW_FORM_string 0x08
#define DW_FORM_block 0x09
#define DW_FORM_block1 0x0a
#define DW_FORM_data1 0x0b
#define DW_FORM_flag 0x0c
#define DW_FORM_sdata 0x0d
#define DW_FORM_strp 0x0e
#define DW_FORM_udata 0x0f
#define DW_FORM_ref_addr 0x10
#define DW_FORM_ref1 0x11
#define DW_FORM_ref2 0x12
#define DW_FORM_ref4 0x13
#define DW_FORM_ref8 0x14
#define DW_FORM_ref_udata 0x15
#define DW_FORM_indirect 0x16
#define DW_FORM_sec_offset 0x17
#define DW_FORM_exprloc 0x18
#define DW_FORM_flag_present 0x19
#define DW_FORM_strx 0x1a
#define DW_FORM_addrx 0x1b
#define DW_FORM_ref_sup4 0x1c
#define DW_FORM_strp_sup 0x1d
#define DW_FORM_data16 0x1e
#define DW_FORM_line_strp 0x1f
#define DW_FORM_ref_sig8 0x20
#define DW_FORM_implicit_const 0x21
#define DW_FORM_loclistx 0x22
#define DW_FORM_rnglistx 0x23
#define DW_FORM_ref_sup8 0x24
#define DW_FORM_strx1 0x25
#define DW_FORM_strx2 0x26
#define DW_FORM_strx3 0x27
#define DW_FORM_strx4 0x28
#define DW_FORM_addrx1 0x29
#define DW_FORM_addrx2 0x2a
#define DW_FORM_addrx3 0x2b
#define DW_FORM_addrx4 0x2c
#define DW_FORM_GNU_addr_index 0x1f01
#define DW_FORM_GNU_str_index 0x1f02
#define DW_FORM_GNU_ref_alt 0x1f20
#define DW_FORM_GNU_strp_alt 0x1f21

#define DW_UT_compile 0x01
#define DW_UT_type 0x02
#define DW_UT_partial 0x03
#define DW_UT_skeleton 0x04
#define DW_UT_split_compile 0x05
#define DW_UT_split_type 0x06

#define DW_LNCT_path 1
#define DW_LNCT_directory_index 2

#define MAX_DEPTH 1024
#define MAX_ORIGIN_HOPS 16
#define NO_OFFSET ((uint64_t)-1)

/* ------------------------------------------------------------------------ */
/* cursor                                                                    */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} cur_t;

static inline void cur_init(cur_t *c, const uint8_t *base, size_t size, size_t off) {
    if (base == NULL || off > size) {
        c->p = c->end = base;
        c->bad = 1;
    } else {
        c->p = base + off;
        c->end = base + size;
        c->bad = 0;
    }
}

static inline size_t cur_left(const cur_t *c) { return (size_t)(c->end - c->p); }

static inline int need(cur_t *c, uint64_t n) {
    if (c->bad || (uint64_t)cur_left(c) < n) {
        c->bad = 1;
        c->p = c->end;
        return 0;
    }
    return 1;
}

static inline uint64_t rd_n(cur_t *c, unsigned n) {
    uint64_t v = 0;
    unsigned i;
    if (!need(c, n)) return 0;
    for (i = 0; i < n; i++) v |= (uint64_t)c->p[i] << (8 * i);
    c->p += n;
    return v;
}

static inline uint8_t rd_u8(cur_t *c) { return (uint8_t)rd_n(c, 1); }
static inline uint16_t rd_u16(cur_t *c) { return (uint16_t)rd_n(c, 2); }
static inline uint32_t rd_u32(cur_t *c) { return (uint32_t)rd_n(c, 4); }
static inline uint64_t rd_u64(cur_t *c) { return rd_n(c, 8); }

static inline void skip(cur_t *c, uint64_t n) {
    if (need(c, n)) c->p += n;
}

static uint64_t rd_uleb(cur_t *c) {
    uint64_t v = 0;
    unsigned shift = 0;
    while (1) {
        uint8_t b;
        if (!need(c, 1)) return 0;
        b = *c->p++;
        if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80)) break;
    }
    return v;
}

static int64_t rd_sleb(cur_t *c) {
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b = 0;
    while (1) {
        if (!need(c, 1)) return 0;
        b = *c->p++;
        if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80)) break;
    }
    if (shift < 64 && (b & 0x40)) v |= ~(uint64_t)0 << shift;
    return (int64_t)v;
}

/* NUL-terminated string at the cursor; NULL (and bad) when unterminated. */
static const char *rd_cstr(cur_t *c) {
    const uint8_t *nul;
    const char *s;
    if (c->bad) return NULL;
    nul = memchr(c->p, 0, cur_left(c));
    if (nul == NULL) {
        c->bad = 1;
        c->p = c->end;
        return NULL;
    }
    s = (const char *)c->p;
    c->p = nul + 1;
    return s;
}

/* A string at `off` in a section, or NULL when out of bounds / unterminated. */
static const char *sec_str(const rsd_section *s, uint64_t off) {
    const uint8_t *nul;
    if (s->data == NULL || off >= s->size) return NULL;
    nul = memchr(s->data + off, 0, s->size - (size_t)off);
    return nul != NULL ? (const char *)(s->data + off) : NULL;
}

/* ------------------------------------------------------------------------ */
/* growable arrays                                                           */

static int grow(void **ptr, size_t *cap, size_t need_n, size_t elem) {
    size_t ncap;
    void *np;
    if (need_n <= *cap) return 1;
    ncap = *cap ? *cap : 16;
    while (ncap < need_n) {
        if (ncap > ((size_t)-1) / 2 / elem) return 0;
        ncap *= 2;
    }
    np = realloc(*ptr, ncap * elem);
    if (np == NULL) return 0;
    *ptr = np;
    *cap = ncap;
    return 1;
}

#define PUSH(arr, n, cap, val)                                                  \
    (grow((void **)&(arr), &(cap), (n) + 1, sizeof(*(arr))) ? ((arr)[(n)++] = (val), 1) : 0)

/* ------------------------------------------------------------------------ */
/* data structures                                                           */

typedef struct {
    uint64_t attr, form;
    int64_t implicit_const;
} attr_spec;

typedef struct {
    uint64_t code;
    uint64_t tag;
    int has_children;
    size_t first, count; /* into specs */
    int64_t fixed;       /* byte size of all attributes if constant, else -1 */
} abbrev_t;

typedef struct {
    abbrev_t *abbrevs;
    size_t n, cap;
    attr_spec *specs;
    size_t nspecs, capspecs;
    int sorted_dense; /* abbrevs[i].code == i + 1 for all i */
} abbrev_table;

typedef struct {
    uint64_t lo, hi;
} range_t;

typedef struct {
    int32_t parent;        /* enclosing function index, -1 at top */
    uint32_t subtree_end;  /* one past the last descendant function */
    uint32_t rstart, rcount;
    uint64_t die_off;      /* absolute offset of the DIE */
    uint64_t origin;       /* absolute offset of abstract_origin/specification */
    uint64_t linkage_form, linkage_u; /* raw string attributes, resolved lazily */
    uint64_t name_form, name_u;
    const char *linkage_str, *name_str; /* DW_FORM_string values */
    const char *resolved;
    uint32_t call_file, call_line;
    uint8_t is_inline, name_done;
} func_t;

typedef struct {
    uint64_t lo, hi;
    uint32_t func;
} top_t;

typedef struct {
    uint64_t lo, hi;
    uint32_t file, line;
} row_t;

typedef struct {
    const char *name;
    uint64_t dir;
} file_t;

typedef struct {
    func_t *funcs;
    size_t nfuncs, capfuncs;
    range_t *ranges;
    size_t nranges, capranges;
    top_t *tops;
    size_t ntops, captops;
    row_t *rows;
    size_t nrows, caprows;
    file_t *files;
    size_t nfiles, capfiles;
    const char **dirs;
    size_t ndirs, capdirs;
    uint16_t line_version;
} cu_data;

typedef struct {
    uint64_t off;     /* unit header offset in .debug_info */
    uint64_t die_off; /* first DIE */
    uint64_t end;
    uint64_t abbrev_off;
    uint16_t version;
    uint8_t addr_size, off_size, unit_type;
    /* from the unit DIE (valid once `root_done`) */
    int root_done, root_ok;
    uint64_t base_addr;
    uint64_t addr_base, str_offsets_base, rnglists_base;
    int has_rnglists_base;
    const char *comp_dir;
    uint64_t stmt_list;
    abbrev_table *abbr; /* parsed lazily */
    int abbr_state;     /* 0 not parsed, 1 ok, -1 failed */
    cu_data *data;
    int state;          /* 0 not decoded, 1 ok, -1 failed */
} unit_t;

typedef struct {
    uint64_t lo, hi;
    uint32_t unit;
} arange_t;

struct rsd_ctx {
    rsd_section s[RSD_NSECT];
    unit_t *units;
    size_t nunits, capunits;
    arange_t *aranges;
    size_t naranges, caparanges;
    arange_t *cuidx; /* from unit DIE ranges, built lazily */
    size_t ncuidx, capcuidx;
    int cuidx_state;
    size_t decoded;
};

/* attribute value as read from .debug_info */
typedef struct {
    uint64_t form;
    uint64_t u;           /* constants, offsets, indices, addresses */
    int64_t s;            /* sdata / implicit_const */
    const char *str;      /* DW_FORM_string */
} fval;

/* ------------------------------------------------------------------------ */
/* sorting helpers                                                           */

static int cmp_arange(const void *a, const void *b) {
    const arange_t *x = a, *y = b;
    if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
    return x->unit < y->unit ? -1 : x->unit > y->unit;
}

static int cmp_top(const void *a, const void *b) {
    const top_t *x = a, *y = b;
    if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
    return x->func < y->func ? -1 : x->func > y->func;
}

static int cmp_abbrev(const void *a, const void *b) {
    const abbrev_t *x = a, *y = b;
    return x->code < y->code ? -1 : x->code > y->code;
}

/* rows: sort by lo, keeping the original order (stable) via index in `line` tie-break
 * is not available, so we sort (lo, seq order) using a merge sort. */
static void merge_rows(row_t *a, row_t *tmp, size_t n) {
    size_t i, j, k, mid;
    if (n < 2) return;
    mid = n / 2;
    merge_rows(a, tmp, mid);
    merge_rows(a + mid, tmp, n - mid);
    if (a[mid - 1].lo <= a[mid].lo) return;
    i = 0;
    j = mid;
    k = 0;
    while (i < mid && j < n) tmp[k++] = (a[j].lo < a[i].lo) ? a[j++] : a[i++];
    while (i < mid) tmp[k++] = a[i++];
    while (j < n) tmp[k++] = a[j++];
    memcpy(a, tmp, n * sizeof(row_t));
}

/* ------------------------------------------------------------------------ */
/* abbreviations                                                             */

static void abbrev_free(abbrev_table *t) {
    if (t == NULL) return;
    free(t->abbrevs);
    free(t->specs);
    free(t);
}

static abbrev_table *abbrev_parse(const rsd_section *sec, uint64_t off) {
    cur_t c;
    abbrev_table *t = calloc(1, sizeof(*t));
    size_t i;
    if (t == NULL) return NULL;
    cur_init(&c, sec->data, sec->size, off > sec->size ? sec->size + 1 : (size_t)off);
    while (!c.bad) {
        abbrev_t a;
        uint64_t code = rd_uleb(&c);
        if (c.bad) break;
        if (code == 0) break;
        a.code = code;
        a.tag = rd_uleb(&c);
        a.has_children = rd_u8(&c) != 0;
        a.first = t->nspecs;
        a.count = 0;
        a.fixed = -2; /* computed per unit on first use */
        while (!c.bad) {
            attr_spec sp;
            sp.attr = rd_uleb(&c);
            sp.form = rd_uleb(&c);
            sp.implicit_const = 0;
            if (sp.form == DW_FORM_implicit_const) sp.implicit_const = rd_sleb(&c);
            if (sp.attr == 0 && sp.form == 0) break;
            if (!PUSH(t->specs, t->nspecs, t->capspecs, sp)) goto fail;
            a.count++;
        }
        if (c.bad) break;
        if (!PUSH(t->abbrevs, t->n, t->cap, a)) goto fail;
    }
    if (c.bad) goto fail;
    t->sorted_dense = 1;
    for (i = 0; i < t->n; i++) {
        if (t->abbrevs[i].code != i + 1) {
            t->sorted_dense = 0;
            break;
        }
    }
    if (!t->sorted_dense && t->n > 1) qsort(t->abbrevs, t->n, sizeof(abbrev_t), cmp_abbrev);
    return t;
fail:
    abbrev_free(t);
    return NULL;
}

static abbrev_t *abbrev_find(const abbrev_table *t, uint64_t code) {
    size_t lo, hi;
    if (t->sorted_dense) return (code >= 1 && code <= t->n) ? &t->abbrevs[code - 1] : NULL;
    lo = 0;
    hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->abbrevs[mid].code < code)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < t->n && t->abbrevs[lo].code == code) ? &t->abbrevs[lo] : NULL;
}

/* ------------------------------------------------------------------------ */
/* forms                                                                     */

/* Read one attribute value; returns 0 on error (unsupported form or truncation). */
static int read_form(cur_t *c, const unit_t *u, uint64_t form, int64_t implicit_const, fval *v) {
    int hops = 0;
    v->u = 0;
    v->s = 0;
    v->str = NULL;
    while (form == DW_FORM_indirect) {
        if (++hops > 4) return 0;
        form = rd_uleb(c);
        if (c->bad) return 0;
        if (form == DW_FORM_implicit_const) return 0; /* no value to take it from */
    }
    v->form = form;
    switch (form) {
    case DW_FORM_addr:
        v->u = rd_n(c, u->addr_size);
        break;
    case DW_FORM_block2:
        skip(c, rd_u16(c));
        break;
    case DW_FORM_block4:
        skip(c, rd_u32(c));
        break;
    case DW_FORM_data2:
    case DW_FORM_ref2:
    case DW_FORM_strx2:
    case DW_FORM_addrx2:
        v->u = rd_u16(c);
        break;
    case DW_FORM_data4:
    case DW_FORM_ref4:
    case DW_FORM_ref_sup4:
    case DW_FORM_strx4:
    case DW_FORM_addrx4:
        v->u = rd_u32(c);
        break;
    case DW_FORM_data8:
    case DW_FORM_ref8:
    case DW_FORM_ref_sig8:
    case DW_FORM_ref_sup8:
        v->u = rd_u64(c);
        break;
    case DW_FORM_data16:
        skip(c, 16);
        break;
    case DW_FORM_string:
        v->str = rd_cstr(c);
        break;
    case DW_FORM_block:
    case DW_FORM_exprloc:
        skip(c, rd_uleb(c));
        break;
    case DW_FORM_block1:
        skip(c, rd_u8(c));
        break;
    case DW_FORM_data1:
    case DW_FORM_ref1:
    case DW_FORM_flag:
    case DW_FORM_strx1:
    case DW_FORM_addrx1:
        v->u = rd_u8(c);
        break;
    case DW_FORM_strx3:
    case DW_FORM_addrx3:
        v->u = rd_n(c, 3);
        break;
    case DW_FORM_sdata:
        v->s = rd_sleb(c);
        v->u = (uint64_t)v->s;
        break;
    case DW_FORM_udata:
    case DW_FORM_ref_udata:
    case DW_FORM_strx:
    case DW_FORM_addrx:
    case DW_FORM_loclistx:
    case DW_FORM_rnglistx:
    case DW_FORM_GNU_addr_index:
    case DW_FORM_GNU_str_index:
        v->u = rd_uleb(c);
        break;
    case DW_FORM_strp:
    case DW_FORM_line_strp:
    case DW_FORM_sec_offset:
    case DW_FORM_strp_sup:
    case DW_FORM_GNU_ref_alt:
    case DW_FORM_GNU_strp_alt:
        v->u = rd_n(c, u->off_size);
        break;
    case DW_FORM_ref_addr:
        v->u = rd_n(c, u->version <= 2 ? u->addr_size : u->off_size);
        break;
    case DW_FORM_flag_present:
        v->u = 1;
        break;
    case DW_FORM_implicit_const:
        v->s = implicit_const;
        v->u = (uint64_t)implicit_const;
        break;
    default:
        c->bad = 1;
        return 0;
    }
    return !c->bad;
}

/* Size of a form's value when it does not depend on the data, else -1. */
static int form_fixed_size(const unit_t *u, uint64_t form) {
    switch (form) {
    case DW_FORM_addr:
        return u->addr_size;
    case DW_FORM_data1:
    case DW_FORM_ref1:
    case DW_FORM_flag:
    case DW_FORM_strx1:
    case DW_FORM_addrx1:
        return 1;
    case DW_FORM_data2:
    case DW_FORM_ref2:
    case DW_FORM_strx2:
    case DW_FORM_addrx2:
        return 2;
    case DW_FORM_strx3:
    case DW_FORM_addrx3:
        return 3;
    case DW_FORM_data4:
    case DW_FORM_ref4:
    case DW_FORM_ref_sup4:
    case DW_FORM_strx4:
    case DW_FORM_addrx4:
        return 4;
    case DW_FORM_data8:
    case DW_FORM_ref8:
    case DW_FORM_ref_sig8:
    case DW_FORM_ref_sup8:
        return 8;
    case DW_FORM_data16:
        return 16;
    case DW_FORM_strp:
    case DW_FORM_line_strp:
    case DW_FORM_sec_offset:
    case DW_FORM_strp_sup:
    case DW_FORM_GNU_ref_alt:
    case DW_FORM_GNU_strp_alt:
        return u->off_size;
    case DW_FORM_ref_addr:
        return u->version <= 2 ? u->addr_size : u->off_size;
    case DW_FORM_flag_present:
    case DW_FORM_implicit_const:
        return 0;
    default:
        return -1;
    }
}

static int64_t abbrev_fixed(const unit_t *u, const abbrev_table *t, abbrev_t *a) {
    if (a->fixed == -2) {
        size_t i;
        int64_t total = 0;
        for (i = 0; i < a->count; i++) {
            int sz = form_fixed_size(u, t->specs[a->first + i].form);
            if (sz < 0) {
                total = -1;
                break;
            }
            total += sz;
        }
        a->fixed = total;
    }
    return a->fixed;
}

static int form_is_const(uint64_t form) {
    switch (form) {
    case DW_FORM_data1:
    case DW_FORM_data2:
    case DW_FORM_data4:
    case DW_FORM_data8:
    case DW_FORM_udata:
    case DW_FORM_sdata:
    case DW_FORM_implicit_const:
        return 1;
    default:
        return 0;
    }
}

static int form_is_addrx(uint64_t form) {
    return form == DW_FORM_addrx || form == DW_FORM_addrx1 || form == DW_FORM_addrx2 ||
           form == DW_FORM_addrx3 || form == DW_FORM_addrx4 || form == DW_FORM_GNU_addr_index;
}

static int form_is_strx(uint64_t form) {
    return form == DW_FORM_strx || form == DW_FORM_strx1 || form == DW_FORM_strx2 ||
           form == DW_FORM_strx3 || form == DW_FORM_strx4 || form == DW_FORM_GNU_str_index;
}

/* Absolute .debug_info offset of a reference; NO_OFFSET when unsupported. */
static uint64_t ref_target(const unit_t *u, const fval *v) {
    switch (v->form) {
    case DW_FORM_ref1:
    case DW_FORM_ref2:
    case DW_FORM_ref4:
    case DW_FORM_ref8:
    case DW_FORM_ref_udata:
        if (v->u >= u->end - u->off) return NO_OFFSET;
        return u->off + v->u;
    case DW_FORM_ref_addr:
        return v->u;
    default:
        return NO_OFFSET;
    }
}

static const char *str_value(const rsd_ctx *ctx, const unit_t *u, const fval *v) {
    switch (v->form) {
    case DW_FORM_string:
        return v->str;
    case DW_FORM_strp:
        return sec_str(&ctx->s[RSD_STR], v->u);
    case DW_FORM_line_strp:
        return sec_str(&ctx->s[RSD_LINE_STR], v->u);
    default:
        if (form_is_strx(v->form)) {
            cur_t c;
            uint64_t base = u->str_offsets_base, off;
            if (v->u > (uint64_t)1 << 40) return NULL;
            off = base + v->u * u->off_size;
            if (off < base || off > ctx->s[RSD_STR_OFFSETS].size) return NULL;
            cur_init(&c, ctx->s[RSD_STR_OFFSETS].data, ctx->s[RSD_STR_OFFSETS].size, (size_t)off);
            off = rd_n(&c, u->off_size);
            if (c.bad) return NULL;
            return sec_str(&ctx->s[RSD_STR], off);
        }
        return NULL;
    }
}

static int addr_index(const rsd_ctx *ctx, const unit_t *u, uint64_t idx, uint64_t *out) {
    cur_t c;
    uint64_t off;
    if (idx > (uint64_t)1 << 40) return 0;
    off = u->addr_base + idx * u->addr_size;
    if (off < u->addr_base || off > ctx->s[RSD_ADDR].size) return 0;
    cur_init(&c, ctx->s[RSD_ADDR].data, ctx->s[RSD_ADDR].size, (size_t)off);
    *out = rd_n(&c, u->addr_size);
    return !c.bad;
}

static int addr_value(const rsd_ctx *ctx, const unit_t *u, const fval *v, uint64_t *out) {
    if (v->form == DW_FORM_addr) {
        *out = v->u;
        return 1;
    }
    if (form_is_addrx(v->form)) return addr_index(ctx, u, v->u, out);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* units                                                                     */

static int parse_units(rsd_ctx *ctx) {
    const rsd_section *info = &ctx->s[RSD_INFO];
    uint64_t off = 0;
    while (off + 11 <= info->size) {
        cur_t c;
        unit_t u;
        uint64_t len;
        memset(&u, 0, sizeof(u));
        cur_init(&c, info->data, info->size, (size_t)off);
        len = rd_u32(&c);
        u.off_size = 4;
        if (len == 0xffffffffu) {
            len = rd_u64(&c);
            u.off_size = 8;
        } else if (len >= 0xfffffff0u) {
            break;
        }
        if (c.bad || len > cur_left(&c)) break;
        u.off = off;
        u.end = (uint64_t)(c.p - info->data) + len;
        u.version = rd_u16(&c);
        if (u.version >= 2 && u.version <= 4) {
            u.abbrev_off = rd_n(&c, u.off_size);
            u.addr_size = rd_u8(&c);
            u.unit_type = DW_UT_compile;
        } else if (u.version == 5) {
            u.unit_type = rd_u8(&c);
            u.addr_size = rd_u8(&c);
            u.abbrev_off = rd_n(&c, u.off_size);
            if (u.unit_type == DW_UT_skeleton || u.unit_type == DW_UT_split_compile)
                skip(&c, 8);
            else if (u.unit_type == DW_UT_type || u.unit_type == DW_UT_split_type)
                skip(&c, 8 + (uint64_t)u.off_size);
        } else {
            u.unit_type = 0; /* unsupported version: keep the slot, never decode */
        }
        u.die_off = (uint64_t)(c.p - info->data);
        if (c.bad || u.die_off > u.end) u.unit_type = 0;
        if (u.addr_size != 4 && u.addr_size != 8) u.unit_type = 0;
        if (!PUSH(ctx->units, ctx->nunits, ctx->capunits, u)) return 0;
        off = u.end;
    }
    return 1;
}

static long unit_of_offset(const rsd_ctx *ctx, uint64_t off) {
    size_t lo = 0, hi = ctx->nunits;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ctx->units[mid].off <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return -1;
    lo--;
    if (off >= ctx->units[lo].end) return -1;
    return (long)lo;
}

static int unit_usable(const unit_t *u) {
    return u->unit_type == DW_UT_compile || u->unit_type == DW_UT_partial;
}

static abbrev_table *unit_abbrevs(rsd_ctx *ctx, unit_t *u) {
    if (u->abbr_state == 0) {
        u->abbr = abbrev_parse(&ctx->s[RSD_ABBREV], u->abbrev_off);
        u->abbr_state = u->abbr != NULL ? 1 : -1;
    }
    return u->abbr;
}

/* Ranges of a DIE from DW_AT_ranges, appended to (*out, *n, *cap). */
static int read_ranges(rsd_ctx *ctx, const unit_t *u, const fval *v, range_t **out, size_t *n,
                       size_t *cap) {
    cur_t c;
    uint64_t base = u->base_addr;
    uint64_t maxaddr = u->addr_size == 4 ? 0xffffffffu : ~(uint64_t)0;
    size_t guard = 0;
    if (u->version <= 4) {
        const rsd_section *s = &ctx->s[RSD_RANGES];
        if (v->form == DW_FORM_rnglistx) return 0;
        if (v->u >= s->size) return 0;
        cur_init(&c, s->data, s->size, (size_t)v->u);
        while (!c.bad && guard++ < (1u << 24)) {
            uint64_t a = rd_n(&c, u->addr_size), b = rd_n(&c, u->addr_size);
            if (c.bad) return 0;
            if (a == 0 && b == 0) return 1;
            if (a == maxaddr) {
                base = b;
                continue;
            }
            if (b > a) {
                range_t r;
                r.lo = a + base;
                r.hi = b + base;
                if (!PUSH(*out, *n, *cap, r)) return 0;
            }
        }
        return 0;
    } else {
        const rsd_section *s = &ctx->s[RSD_RNGLISTS];
        uint64_t off;
        if (v->form == DW_FORM_rnglistx) {
            uint64_t rb = u->has_rnglists_base ? u->rnglists_base : 12; /* 32-bit header */
            uint64_t slot;
            if (v->u > (uint64_t)1 << 40) return 0;
            slot = rb + v->u * u->off_size;
            if (slot < rb || slot > s->size) return 0;
            cur_init(&c, s->data, s->size, (size_t)slot);
            off = rd_n(&c, u->off_size);
            if (c.bad) return 0;
            off += rb;
        } else {
            off = v->u;
        }
        if (off >= s->size) return 0;
        cur_init(&c, s->data, s->size, (size_t)off);
        while (!c.bad && guard++ < (1u << 24)) {
            uint8_t kind = rd_u8(&c);
            uint64_t a = 0, b = 0;
            int emit = 0;
            switch (kind) {
            case 0: /* end_of_list */
                return !c.bad;
            case 1: /* base_addressx */
                if (!addr_index(ctx, u, rd_uleb(&c), &base)) return 0;
                break;
            case 2: /* startx_endx */
                if (!addr_index(ctx, u, rd_uleb(&c), &a)) return 0;
                if (!addr_index(ctx, u, rd_uleb(&c), &b)) return 0;
                emit = 1;
                break;
            case 3: /* startx_length */
                if (!addr_index(ctx, u, rd_uleb(&c), &a)) return 0;
                b = a + rd_uleb(&c);
                emit = 1;
                break;
            case 4: /* offset_pair */
                a = base + rd_uleb(&c);
                b = base + rd_uleb(&c);
                emit = 1;
                break;
            case 5: /* base_address */
                base = rd_n(&c, u->addr_size);
                break;
            case 6: /* start_end */
                a = rd_n(&c, u->addr_size);
                b = rd_n(&c, u->addr_size);
                emit = 1;
                break;
            case 7: /* start_length */
                a = rd_n(&c, u->addr_size);
                b = a + rd_uleb(&c);
                emit = 1;
                break;
            default:
                return 0;
            }
            if (emit && !c.bad && b > a) {
                range_t r;
                r.lo = a;
                r.hi = b;
                if (!PUSH(*out, *n, *cap, r)) return 0;
            }
        }
        return 0;
    }
}

/* Parse the unit DIE's attributes (bases, comp_dir, stmt_list). */
static int unit_root(rsd_ctx *ctx, unit_t *u, range_t **rout, size_t *rn, size_t *rcap) {
    abbrev_table *t;
    const abbrev_t *a;
    cur_t c;
    size_t i;
    fval low, high, ranges, name;
    int have_low = 0, have_high = 0, have_ranges = 0, have_addr_base = 0;
    if (u->root_done && rout == NULL) return u->root_ok;
    u->root_done = 1;
    u->root_ok = 0;
    u->stmt_list = NO_OFFSET;
    if (!unit_usable(u)) return 0;
    t = unit_abbrevs(ctx, u);
    if (t == NULL) return 0;
    cur_init(&c, ctx->s[RSD_INFO].data, (size_t)u->end, (size_t)u->die_off);
    a = abbrev_find(t, rd_uleb(&c));
    if (c.bad || a == NULL) return 0;
    memset(&low, 0, sizeof(low));
    high = ranges = name = low;
    for (i = 0; i < a->count; i++) {
        const attr_spec *sp = &t->specs[a->first + i];
        fval v;
        if (!read_form(&c, u, sp->form, sp->implicit_const, &v)) return 0;
        switch (sp->attr) {
        case DW_AT_low_pc:
            low = v;
            have_low = 1;
            break;
        case DW_AT_high_pc:
            high = v;
            have_high = 1;
            break;
        case DW_AT_ranges:
            ranges = v;
            have_ranges = 1;
            break;
        case DW_AT_comp_dir:
            name = v;
            break;
        case DW_AT_stmt_list:
            u->stmt_list = v.u;
            break;
        case DW_AT_addr_base:
        case DW_AT_GNU_addr_base:
            u->addr_base = v.u;
            have_addr_base = 1;
            break;
        case DW_AT_str_offsets_base:
            u->str_offsets_base = v.u;
            break;
        case DW_AT_rnglists_base:
            u->rnglists_base = v.u;
            u->has_rnglists_base = 1;
            break;
        default:
            break;
        }
    }
    if (!have_addr_base && u->version >= 5) u->addr_base = 8;
    if (u->version >= 5 && u->str_offsets_base == 0) u->str_offsets_base = 8;
    u->base_addr = 0;
    if (have_low) {
        if (!addr_value(ctx, u, &low, &u->base_addr)) u->base_addr = 0;
    }
    u->comp_dir = name.form ? str_value(ctx, u, &name) : NULL;
    u->root_ok = 1;
    if (rout != NULL) {
        if (have_ranges) {
            read_ranges(ctx, u, &ranges, rout, rn, rcap);
        } else if (have_low && have_high) {
            uint64_t lo = u->base_addr, hi = 0;
            int ok = 1;
            if (form_is_const(high.form))
                hi = lo + high.u;
            else
                ok = addr_value(ctx, u, &high, &hi);
            if (ok && hi > lo) {
                range_t r;
                r.lo = lo;
                r.hi = hi;
                PUSH(*rout, *rn, *rcap, r);
            }
        }
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* line program                                                              */

static int lp_form_str(rsd_ctx *ctx, const unit_t *u, cur_t *c, uint64_t form, uint8_t off_size,
                       const char **out) {
    fval v;
    unit_t tmp = *u;
    tmp.off_size = off_size;
    if (!read_form(c, &tmp, form, 0, &v)) return 0;
    if (form == DW_FORM_string || form == DW_FORM_strp || form == DW_FORM_line_strp ||
        form_is_strx(form))
        *out = str_value(ctx, &tmp, &v);
    return 1;
}

static int parse_lines(rsd_ctx *ctx, const unit_t *u, cu_data *d) {
    const rsd_section *s = &ctx->s[RSD_LINE];
    cur_t c, prog;
    uint64_t len, hdr_len, end_off;
    uint16_t version;
    uint8_t off_size = 4, min_inst, line_base_u, line_range, opcode_base, default_is_stmt;
    int8_t line_base;
    uint8_t std_lens[256];
    unsigned i;
    if (u->stmt_list == NO_OFFSET) return 1; /* no line table: funcs only */
    if (u->stmt_list >= s->size) return 0;
    cur_init(&c, s->data, s->size, (size_t)u->stmt_list);
    len = rd_u32(&c);
    if (len == 0xffffffffu) {
        len = rd_u64(&c);
        off_size = 8;
    }
    if (c.bad || len > cur_left(&c)) return 0;
    end_off = (uint64_t)(c.p - s->data) + len;
    c.end = s->data + end_off;
    version = rd_u16(&c);
    if (version < 2 || version > 5) return 0;
    d->line_version = version;
    if (version >= 5) {
        rd_u8(&c); /* address_size */
        rd_u8(&c); /* segment selector size */
    }
    hdr_len = rd_n(&c, off_size);
    if (c.bad || hdr_len > cur_left(&c)) return 0;
    prog = c;
    prog.p = c.p + hdr_len;
    min_inst = rd_u8(&c);
    if (version >= 4) rd_u8(&c); /* max ops per instruction */
    default_is_stmt = rd_u8(&c);
    (void)default_is_stmt;
    line_base_u = rd_u8(&c);
    line_base = (int8_t)line_base_u;
    line_range = rd_u8(&c);
    opcode_base = rd_u8(&c);
    if (c.bad || line_range == 0 || opcode_base == 0) return 0;
    memset(std_lens, 0, sizeof(std_lens));
    for (i = 1; i < opcode_base; i++) std_lens[i] = rd_u8(&c);
    if (version <= 4) {
        while (!c.bad) {
            const char *dir = rd_cstr(&c);
            if (dir == NULL || *dir == 0) break;
            if (!PUSH(d->dirs, d->ndirs, d->capdirs, dir)) return 0;
        }
        while (!c.bad) {
            file_t f;
            f.name = rd_cstr(&c);
            if (f.name == NULL || *f.name == 0) break;
            f.dir = rd_uleb(&c);
            rd_uleb(&c);
            rd_uleb(&c);
            if (!PUSH(d->files, d->nfiles, d->capfiles, f)) return 0;
        }
    } else {
        int pass;
        for (pass = 0; pass < 2; pass++) {
            uint8_t nfmt = rd_u8(&c);
            uint64_t fmt[2 * 256];
            uint64_t count, k;
            unsigned j;
            for (j = 0; j < nfmt; j++) {
                fmt[2 * j] = rd_uleb(&c);
                fmt[2 * j + 1] = rd_uleb(&c);
            }
            count = rd_uleb(&c);
            if (c.bad) return 0;
            for (k = 0; k < count && !c.bad; k++) {
                const char *path = NULL;
                uint64_t dir = 0;
                for (j = 0; j < nfmt; j++) {
                    uint64_t ct = fmt[2 * j], form = fmt[2 * j + 1];
                    if (ct == DW_LNCT_path) {
                        if (!lp_form_str(ctx, u, &c, form, off_size, &path)) return 0;
                    } else {
                        fval v;
                        unit_t tmp = *u;
                        tmp.off_size = off_size;
                        if (!read_form(&c, &tmp, form, 0, &v)) return 0;
                        if (ct == DW_LNCT_directory_index) dir = v.u;
                    }
                }
                if (pass == 0) {
                    if (!PUSH(d->dirs, d->ndirs, d->capdirs, path)) return 0;
                } else {
                    file_t f;
                    f.name = path;
                    f.dir = dir;
                    if (!PUSH(d->files, d->nfiles, d->capfiles, f)) return 0;
                }
            }
        }
    }
    if (c.bad) return 0;
    /* the program */
    c = prog;
    if (c.p > c.end) return 0;
    {
        uint64_t addr = 0, file = 1, line = 1;
        int have_prev = 0, seq_ok = 1;
        row_t prev;
        size_t seq_start = d->nrows;
        memset(&prev, 0, sizeof(prev));
        while (!c.bad && c.p < c.end) {
            uint8_t op = rd_u8(&c);
            int emit = 0, end_seq = 0;
            if (op >= opcode_base) {
                unsigned adj = (unsigned)(op - opcode_base);
                addr += (uint64_t)min_inst * (adj / line_range);
                line += (int64_t)line_base + (int64_t)(adj % line_range);
                emit = 1;
            } else if (op == 0) {
                uint64_t elen = rd_uleb(&c);
                const uint8_t *next;
                uint8_t sub;
                if (c.bad || elen == 0 || elen > cur_left(&c)) return 0;
                next = c.p + elen;
                sub = rd_u8(&c);
                if (sub == 1) {
                    end_seq = 1;
                    emit = 1;
                } else if (sub == 2) {
                    addr = rd_n(&c, (unsigned)(elen - 1 > 8 ? 8 : elen - 1));
                } else if (sub == 3 && version <= 4) {
                    file_t f;
                    f.name = rd_cstr(&c);
                    f.dir = rd_uleb(&c);
                    if (f.name != NULL && !c.bad && !PUSH(d->files, d->nfiles, d->capfiles, f))
                        return 0;
                }
                if (c.bad) return 0;
                c.p = next;
            } else {
                switch (op) {
                case 1: /* copy */
                    emit = 1;
                    break;
                case 2:
                    addr += rd_uleb(&c) * min_inst;
                    break;
                case 3:
                    line += (uint64_t)rd_sleb(&c);
                    break;
                case 4:
                    file = rd_uleb(&c);
                    break;
                case 5:
                    rd_uleb(&c);
                    break;
                case 8:
                    addr += (uint64_t)min_inst * ((255u - opcode_base) / line_range);
                    break;
                case 9:
                    addr += rd_u16(&c);
                    break;
                case 6:
                case 7:
                case 10:
                case 11:
                    break;
                case 12:
                    rd_uleb(&c);
                    break;
                default:
                    for (i = 0; i < std_lens[op]; i++) rd_uleb(&c);
                    break;
                }
            }
            if (c.bad) return 0;
            if (emit) {
                /* close the previous row of this sequence */
                if (have_prev) {
                    if (addr < prev.lo) seq_ok = 0; /* addresses must not go backwards */
                    if (addr > prev.lo && seq_ok) {
                        prev.hi = addr;
                        if (!PUSH(d->rows, d->nrows, d->caprows, prev)) return 0;
                    }
                }
                if (end_seq) {
                    /* drop sequences at address 0 (discarded code) and broken ones */
                    if (!seq_ok || (d->nrows > seq_start && d->rows[seq_start].lo == 0))
                        d->nrows = seq_start;
                    seq_start = d->nrows;
                    have_prev = 0;
                    seq_ok = 1;
                    addr = 0;
                    file = 1;
                    line = 1;
                } else {
                    prev.lo = addr;
                    prev.hi = addr;
                    prev.file = (uint32_t)(file > 0xffffffffu ? 0xffffffffu : file);
                    prev.line = (uint32_t)(line > 0xffffffffu ? 0 : line);
                    have_prev = 1;
                }
            }
        }
        d->nrows = seq_start; /* an unterminated sequence is dropped */
    }
    if (d->nrows > 1) {
        row_t *tmp = malloc(d->nrows * sizeof(row_t));
        if (tmp == NULL) return 0;
        merge_rows(d->rows, tmp, d->nrows);
        free(tmp);
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* DIE tree                                                                  */

static void cu_data_free(cu_data *d) {
    if (d == NULL) return;
    free(d->funcs);
    free(d->ranges);
    free(d->tops);
    free(d->rows);
    free(d->files);
    free(d->dirs);
    free(d);
}

typedef struct {
    int32_t func; /* function DIE at this depth, or -1 */
    int32_t enclosing;
} depth_t;

static int parse_dies(rsd_ctx *ctx, unit_t *u, cu_data *d) {
    abbrev_table *t = unit_abbrevs(ctx, u);
    cur_t c;
    depth_t *stack;
    int depth = 0;
    size_t i;
    if (t == NULL) return 0;
    stack = malloc(sizeof(depth_t) * (MAX_DEPTH + 1));
    if (stack == NULL) return 0;
    stack[0].func = -1;
    stack[0].enclosing = -1;
    cur_init(&c, ctx->s[RSD_INFO].data, (size_t)u->end, (size_t)u->die_off);
    while (!c.bad && c.p < c.end) {
        uint64_t die_off = (uint64_t)(c.p - ctx->s[RSD_INFO].data);
        uint64_t code = rd_uleb(&c);
        abbrev_t *a;
        int is_func;
        if (c.bad) break;
        if (code == 0) {
            if (depth == 0) continue; /* padding */
            if (stack[depth].func >= 0)
                d->funcs[stack[depth].func].subtree_end = (uint32_t)d->nfuncs;
            depth--;
            if (depth == 0) break; /* end of the unit DIE's children */
            continue;
        }
        a = abbrev_find(t, code);
        if (a == NULL) goto fail;
        is_func = a->tag == DW_TAG_subprogram || a->tag == DW_TAG_inlined_subroutine ||
                  a->tag == DW_TAG_entry_point;
        if (!is_func) {
            int64_t fixed = abbrev_fixed(u, t, a);
            if (fixed >= 0) {
                skip(&c, (uint64_t)fixed);
                if (c.bad) goto fail;
            } else for (i = 0; i < a->count; i++) {
                const attr_spec *sp = &t->specs[a->first + i];
                fval v;
                if (!read_form(&c, u, sp->form, sp->implicit_const, &v)) goto fail;
            }
            if (a->has_children) {
                if (depth >= MAX_DEPTH) goto fail;
                depth++;
                stack[depth].func = -1;
                stack[depth].enclosing = stack[depth - 1].enclosing;
            } else if (depth == 0) {
                break; /* unit DIE without children */
            }
        } else {
            func_t f;
            fval low, high, ranges;
            int have_low = 0, have_high = 0, have_ranges = 0;
            int32_t idx;
            memset(&f, 0, sizeof(f));
            memset(&low, 0, sizeof(low));
            high = ranges = low;
            f.die_off = die_off;
            f.origin = NO_OFFSET;
            f.is_inline = a->tag == DW_TAG_inlined_subroutine;
            f.parent = stack[depth].enclosing;
            for (i = 0; i < a->count; i++) {
                const attr_spec *sp = &t->specs[a->first + i];
                fval v;
                if (!read_form(&c, u, sp->form, sp->implicit_const, &v)) goto fail;
                switch (sp->attr) {
                case DW_AT_low_pc:
                    low = v;
                    have_low = 1;
                    break;
                case DW_AT_high_pc:
                    high = v;
                    have_high = 1;
                    break;
                case DW_AT_ranges:
                    ranges = v;
                    have_ranges = 1;
                    break;
                case DW_AT_call_file:
                    f.call_file = (uint32_t)v.u;
                    break;
                case DW_AT_call_line:
                    f.call_line = (uint32_t)v.u;
                    break;
                case DW_AT_abstract_origin:
                case DW_AT_specification:
                    f.origin = ref_target(u, &v);
                    break;
                case DW_AT_linkage_name:
                case DW_AT_MIPS_linkage_name:
                    f.linkage_form = v.form;
                    f.linkage_u = v.u;
                    f.linkage_str = v.str;
                    break;
                case DW_AT_name:
                    f.name_form = v.form;
                    f.name_u = v.u;
                    f.name_str = v.str;
                    break;
                default:
                    break;
                }
            }
            f.rstart = (uint32_t)d->nranges;
            if (have_ranges) {
                if (!read_ranges(ctx, u, &ranges, &d->ranges, &d->nranges, &d->capranges))
                    d->nranges = f.rstart; /* unreadable ranges: the DIE covers nothing */
            } else if (have_low && have_high) {
                uint64_t lo = 0, hi = 0;
                int ok = addr_value(ctx, u, &low, &lo);
                if (ok) {
                    if (form_is_const(high.form))
                        hi = lo + high.u;
                    else
                        ok = addr_value(ctx, u, &high, &hi);
                }
                if (ok && hi > lo) {
                    range_t r;
                    r.lo = lo;
                    r.hi = hi;
                    if (!PUSH(d->ranges, d->nranges, d->capranges, r)) goto fail;
                }
            }
            /* drop ranges of discarded code (address 0) */
            {
                size_t k, w = f.rstart;
                for (k = f.rstart; k < d->nranges; k++)
                    if (d->ranges[k].lo != 0) d->ranges[w++] = d->ranges[k];
                d->nranges = w;
            }
            f.rcount = (uint32_t)(d->nranges - f.rstart);
            f.subtree_end = (uint32_t)d->nfuncs + 1;
            if (d->nfuncs >= 0x7fffffff) goto fail;
            idx = (int32_t)d->nfuncs;
            if (!PUSH(d->funcs, d->nfuncs, d->capfuncs, f)) goto fail;
            if (!f.is_inline) {
                uint32_t k;
                for (k = 0; k < f.rcount; k++) {
                    top_t tp;
                    tp.lo = d->ranges[f.rstart + k].lo;
                    tp.hi = d->ranges[f.rstart + k].hi;
                    tp.func = (uint32_t)idx;
                    if (!PUSH(d->tops, d->ntops, d->captops, tp)) goto fail;
                }
            }
            if (a->has_children) {
                if (depth >= MAX_DEPTH) goto fail;
                depth++;
                stack[depth].func = idx;
                stack[depth].enclosing = idx;
            } else if (depth == 0) {
                break;
            }
        }
    }
    /* functions still open at a truncated end */
    while (depth > 0) {
        if (stack[depth].func >= 0) d->funcs[stack[depth].func].subtree_end = (uint32_t)d->nfuncs;
        depth--;
    }
    free(stack);
    if (d->ntops > 1) qsort(d->tops, d->ntops, sizeof(top_t), cmp_top);
    return 1;
fail:
    free(stack);
    return 0;
}

static cu_data *unit_decode(rsd_ctx *ctx, unit_t *u) {
    cu_data *d;
    if (u->state == 1) return u->data;
    if (u->state == -1) return NULL;
    u->state = -1;
    if (!unit_root(ctx, u, NULL, NULL, NULL)) return NULL;
    d = calloc(1, sizeof(*d));
    if (d == NULL) return NULL;
    if (!parse_lines(ctx, u, d)) {
        /* keep function names even with a broken line table */
        d->nrows = 0;
        d->nfiles = 0;
        d->ndirs = 0;
    }
    if (!parse_dies(ctx, u, d)) {
        cu_data_free(d);
        return NULL;
    }
    u->data = d;
    u->state = 1;
    ctx->decoded++;
    return d;
}

/* ------------------------------------------------------------------------ */
/* address -> unit                                                           */

static void parse_aranges(rsd_ctx *ctx) {
    const rsd_section *s = &ctx->s[RSD_ARANGES];
    uint64_t off = 0;
    while (s->data != NULL && off + 16 <= s->size) {
        cur_t c;
        uint64_t len, set_end, info_off;
        uint8_t off_size = 4, asz, segsz;
        uint16_t version;
        long ui;
        cur_init(&c, s->data, s->size, (size_t)off);
        len = rd_u32(&c);
        if (len == 0xffffffffu) {
            len = rd_u64(&c);
            off_size = 8;
        }
        if (c.bad || len > cur_left(&c) || len == 0) break;
        set_end = (uint64_t)(c.p - s->data) + len;
        c.end = s->data + set_end;
        version = rd_u16(&c);
        info_off = rd_n(&c, off_size);
        asz = rd_u8(&c);
        segsz = rd_u8(&c);
        off = set_end;
        if (c.bad || version != 2 || (asz != 4 && asz != 8) || segsz != 0) continue;
        ui = unit_of_offset(ctx, info_off);
        if (ui < 0 || ctx->units[ui].off != info_off) continue;
        {
            uint64_t hdr = (uint64_t)(c.p - (s->data + (set_end - len))) +
                           (off_size == 8 ? 12 : 4);
            uint64_t tuple = 2u * asz;
            uint64_t pad = (tuple - hdr % tuple) % tuple;
            skip(&c, pad);
        }
        while (!c.bad) {
            uint64_t a = rd_n(&c, asz), l = rd_n(&c, asz);
            arange_t r;
            if (c.bad || (a == 0 && l == 0)) break;
            if (a == 0 || l == 0 || a + l < a) continue;
            r.lo = a;
            r.hi = a + l;
            r.unit = (uint32_t)ui;
            if (!PUSH(ctx->aranges, ctx->naranges, ctx->caparanges, r)) return;
        }
    }
    if (ctx->naranges > 1) qsort(ctx->aranges, ctx->naranges, sizeof(arange_t), cmp_arange);
}

static void build_cuidx(rsd_ctx *ctx) {
    size_t i;
    range_t *rs = NULL;
    size_t nr = 0, cap = 0;
    ctx->cuidx_state = 1;
    for (i = 0; i < ctx->nunits; i++) {
        size_t k;
        nr = 0;
        if (!unit_root(ctx, &ctx->units[i], &rs, &nr, &cap)) continue;
        for (k = 0; k < nr; k++) {
            arange_t r;
            if (rs[k].lo == 0) continue;
            r.lo = rs[k].lo;
            r.hi = rs[k].hi;
            r.unit = (uint32_t)i;
            if (!PUSH(ctx->cuidx, ctx->ncuidx, ctx->capcuidx, r)) break;
        }
    }
    free(rs);
    if (ctx->ncuidx > 1) qsort(ctx->cuidx, ctx->ncuidx, sizeof(arange_t), cmp_arange);
}

static long find_in(const arange_t *arr, size_t n, uint64_t addr) {
    size_t lo = 0, hi = n, k;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (arr[mid].lo <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (k = 0; k < 64 && lo > 0; k++, lo--)
        if (addr < arr[lo - 1].hi) return (long)arr[lo - 1].unit;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* names                                                                     */

/* Read linkage name / name / origin of the DIE at absolute offset `off`. */
static int die_names(rsd_ctx *ctx, uint64_t off, const char **linkage, const char **name,
                     uint64_t *origin) {
    long ui = unit_of_offset(ctx, off);
    unit_t *u;
    abbrev_table *t;
    const abbrev_t *a;
    cur_t c;
    size_t i;
    *linkage = *name = NULL;
    *origin = NO_OFFSET;
    if (ui < 0) return 0;
    u = &ctx->units[ui];
    if (!unit_usable(u) || off < u->die_off) return 0;
    if (!unit_root(ctx, u, NULL, NULL, NULL)) return 0;
    t = unit_abbrevs(ctx, u);
    if (t == NULL) return 0;
    cur_init(&c, ctx->s[RSD_INFO].data, (size_t)u->end, (size_t)off);
    a = abbrev_find(t, rd_uleb(&c));
    if (c.bad || a == NULL) return 0;
    for (i = 0; i < a->count; i++) {
        const attr_spec *sp = &t->specs[a->first + i];
        fval v;
        if (!read_form(&c, u, sp->form, sp->implicit_const, &v)) return 0;
        switch (sp->attr) {
        case DW_AT_linkage_name:
        case DW_AT_MIPS_linkage_name:
            *linkage = str_value(ctx, u, &v);
            break;
        case DW_AT_name:
            *name = str_value(ctx, u, &v);
            break;
        case DW_AT_abstract_origin:
        case DW_AT_specification:
            *origin = ref_target(u, &v);
            break;
        default:
            break;
        }
    }
    return 1;
}

static const char *func_name(rsd_ctx *ctx, const unit_t *u, func_t *f) {
    const char *first_name = NULL;
    uint64_t origin;
    int hops;
    if (f->name_done) return f->resolved;
    f->name_done = 1;
    if (f->linkage_form) {
        fval v;
        v.form = f->linkage_form;
        v.u = f->linkage_u;
        v.s = 0;
        v.str = f->linkage_str;
        first_name = str_value(ctx, u, &v);
        if (first_name != NULL) return f->resolved = first_name;
    }
    if (f->name_form) {
        fval v;
        v.form = f->name_form;
        v.u = f->name_u;
        v.s = 0;
        v.str = f->name_str;
        first_name = str_value(ctx, u, &v);
    }
    origin = f->origin;
    for (hops = 0; hops < MAX_ORIGIN_HOPS && origin != NO_OFFSET; hops++) {
        const char *linkage, *name;
        uint64_t next;
        if (!die_names(ctx, origin, &linkage, &name, &next)) break;
        if (linkage != NULL) return f->resolved = linkage;
        if (first_name == NULL) first_name = name;
        if (next == origin) break;
        origin = next;
    }
    return f->resolved = first_name;
}

/* ------------------------------------------------------------------------ */
/* public API                                                                */

rsd_ctx *rsd_open(const rsd_section sections[RSD_NSECT]) {
    rsd_ctx *ctx = calloc(1, sizeof(*ctx));
    int i;
    if (ctx == NULL) return NULL;
    for (i = 0; i < RSD_NSECT; i++) {
        ctx->s[i] = sections[i];
        if (ctx->s[i].data == NULL) ctx->s[i].size = 0;
    }
    if (ctx->s[RSD_INFO].data == NULL || !parse_units(ctx)) {
        rsd_close(ctx);
        return NULL;
    }
    parse_aranges(ctx);
    return ctx;
}

void rsd_close(rsd_ctx *ctx) {
    size_t i;
    if (ctx == NULL) return;
    for (i = 0; i < ctx->nunits; i++) {
        abbrev_free(ctx->units[i].abbr);
        cu_data_free(ctx->units[i].data);
    }
    free(ctx->units);
    free(ctx->aranges);
    free(ctx->cuidx);
    free(ctx);
}

size_t rsd_decoded_units(const rsd_ctx *ctx) { return ctx->decoded; }
size_t rsd_unit_count(const rsd_ctx *ctx) { return ctx->nunits; }

static int func_contains(const cu_data *d, const func_t *f, uint64_t addr) {
    uint32_t k;
    for (k = 0; k < f->rcount; k++) {
        const range_t *r = &d->ranges[f->rstart + k];
        if (r->lo <= addr && addr < r->hi) return 1;
    }
    return 0;
}

static void set_file(const unit_t *u, const cu_data *d, uint64_t idx, rsd_frame *fr) {
    uint64_t fi, di;
    fr->comp_dir = u->comp_dir;
    fr->dir = NULL;
    fr->file = NULL;
    if (d->line_version >= 5) {
        fi = idx;
    } else {
        if (idx == 0) return;
        fi = idx - 1;
    }
    if (fi >= d->nfiles || d->files[fi].name == NULL) return;
    fr->file = d->files[fi].name;
    di = d->files[fi].dir;
    if (d->line_version >= 5) {
        if (di < d->ndirs) fr->dir = d->dirs[di];
    } else if (di > 0 && di - 1 < d->ndirs) {
        fr->dir = d->dirs[di - 1];
    }
}

int rsd_lookup(rsd_ctx *ctx, uint64_t addr, rsd_frame *out, int max) {
    long ui = -1;
    unit_t *u;
    cu_data *d;
    const row_t *row = NULL;
    long top = -1;
    int32_t chain[256];
    int n = 0, k;
    if (ctx == NULL || max <= 0) return 0;
    if (ctx->naranges) ui = find_in(ctx->aranges, ctx->naranges, addr);
    if (ui < 0) {
        if (!ctx->cuidx_state) build_cuidx(ctx);
        ui = find_in(ctx->cuidx, ctx->ncuidx, addr);
    }
    if (ui < 0) return 0;
    u = &ctx->units[ui];
    d = unit_decode(ctx, u);
    if (d == NULL) return 0;
    /* line row */
    if (d->nrows) {
        size_t lo = 0, hi = d->nrows, j;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (d->rows[mid].lo <= addr)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (j = 0; j < 16 && lo > 0; j++, lo--) {
            if (addr < d->rows[lo - 1].hi) {
                row = &d->rows[lo - 1];
                break;
            }
        }
    }
    /* innermost function chain */
    if (d->ntops) {
        size_t lo = 0, hi = d->ntops, j;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (d->tops[mid].lo <= addr)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (j = 0; j < 64 && lo > 0; j++, lo--) {
            if (addr < d->tops[lo - 1].hi) {
                top = (long)d->tops[lo - 1].func;
                break;
            }
        }
    }
    if (top >= 0) {
        uint32_t cur = (uint32_t)top, j = cur + 1;
        uint32_t end = d->funcs[cur].subtree_end;
        chain[n++] = (int32_t)cur;
        if (end > d->nfuncs) end = (uint32_t)d->nfuncs;
        while (j < end) {
            const func_t *f = &d->funcs[j];
            uint32_t se = f->subtree_end;
            if (se <= j || se > end) se = j + 1;
            if (f->parent == (int32_t)cur && f->is_inline && func_contains(d, f, addr)) {
                if (n >= (int)(sizeof(chain) / sizeof(chain[0]))) break;
                chain[n++] = (int32_t)j;
                cur = j;
                end = se;
                j++;
            } else if (f->parent == (int32_t)cur) {
                j = se; /* skip the subtree of a sibling that does not hold addr */
            } else {
                j++;
            }
        }
    }
    if (n == 0) {
        if (row == NULL) return 0;
        out[0].name = NULL;
        set_file(u, d, row->file, &out[0]);
        out[0].line = row->line;
        return 1;
    }
    /* chain[0] = outermost ... chain[n-1] = innermost; emit innermost first */
    for (k = 0; k < n && k < max; k++) {
        func_t *f = &d->funcs[chain[n - 1 - k]];
        rsd_frame *fr = &out[k];
        fr->name = func_name(ctx, u, f);
        if (k == 0) {
            if (row != NULL) {
                set_file(u, d, row->file, fr);
                fr->line = row->line;
            } else {
                fr->comp_dir = fr->dir = fr->file = NULL;
                fr->line = 0;
            }
        } else {
            const func_t *inner = &d->funcs[chain[n - k]];
            set_file(u, d, inner->call_file, fr);
            fr->line = inner->call_line;
        }
    }
    return k;
}
