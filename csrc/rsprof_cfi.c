/* Parser of .eh_frame / .debug_frame into a sorted table of unwind rows
 * (see rsprof_cfi.h). */
#include "rsprof_cfi.h"

#include <stdlib.h>
#include <string.h>

#include "rsprof_shm.h"

/* The reader copies these rows, with runtime addresses, into the unwind table
 * file the shim maps (struct rsprof_unwind_row of rsprof_shm.h): one layout. */
_Static_assert(sizeof(struct rsprof_cfi_row) == sizeof(struct rsprof_unwind_row), "row size");
_Static_assert(__builtin_offsetof(struct rsprof_cfi_row, start) ==
                   __builtin_offsetof(struct rsprof_unwind_row, start), "row start");
_Static_assert(__builtin_offsetof(struct rsprof_cfi_row, cfa_off) ==
                   __builtin_offsetof(struct rsprof_unwind_row, cfa_off), "row cfa_off");
_Static_assert(__builtin_offsetof(struct rsprof_cfi_row, bp_off) ==
                   __builtin_offsetof(struct rsprof_unwind_row, bp_off), "row bp_off");
_Static_assert(__builtin_offsetof(struct rsprof_cfi_row, ra_off) ==
                   __builtin_offsetof(struct rsprof_unwind_row, ra_off), "row ra_off");
_Static_assert(__builtin_offsetof(struct rsprof_cfi_row, kind) ==
                   __builtin_offsetof(struct rsprof_unwind_row, kind), "row kind");
_Static_assert(RSPROF_CFI_NONE == RSPROF_UNWIND_NONE && RSPROF_CFI_SP == RSPROF_UNWIND_SP &&
                   RSPROF_CFI_BP == RSPROF_UNWIND_BP && RSPROF_CFI_PLT11 == RSPROF_UNWIND_PLT11 &&
                   RSPROF_CFI_PLT10 == RSPROF_UNWIND_PLT10 &&
                   RSPROF_CFI_OUTERMOST == RSPROF_UNWIND_OUTERMOST &&
                   RSPROF_CFI_UNSUPPORTED == RSPROF_UNWIND_UNSUPPORTED,
               "row kinds");
_Static_assert(RSPROF_CFI_SAME == RSPROF_UNWIND_BP_SAME, "bp unchanged");

/* ---- registers by role -------------------------------------------------- */

struct cfi_arch {
    uint64_t sp_reg; /* the stack pointer: the CFA base of most rows */
    uint64_t fp_reg; /* the frame register: the other CFA base, and a tracked rule */
};

static const struct cfi_arch ARCH_X86_64 = {RSPROF_CFI_X86_64_SP, RSPROF_CFI_X86_64_FP};

/* ---- bounded reads ------------------------------------------------------- */

struct cur {
    const uint8_t *p;
    size_t pos, end; /* reads stay below end; ok drops to 0 at the first bad one */
    int ok;
};

static uint8_t rd_u8(struct cur *c) {
    if (!c->ok || c->pos >= c->end) {
        c->ok = 0;
        return 0;
    }
    return c->p[c->pos++];
}

static uint64_t rd_le(struct cur *c, unsigned n) {
    uint64_t v = 0;
    unsigned i;
    if (!c->ok || c->pos > c->end || c->end - c->pos < n) {
        c->ok = 0;
        return 0;
    }
    for (i = 0; i < n; i++)
        v |= (uint64_t)c->p[c->pos + i] << (8 * i);
    c->pos += n;
    return v;
}

static uint64_t rd_uleb(struct cur *c) {
    uint64_t v = 0;
    unsigned shift = 0;
    for (;;) {
        uint8_t b = rd_u8(c);
        if (!c->ok)
            return 0;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if (!(b & 0x80))
            return v;
        if (shift > 70) { /* longer than any 64-bit value */
            c->ok = 0;
            return 0;
        }
    }
}

static int64_t rd_sleb(struct cur *c) {
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b;
    do {
        b = rd_u8(c);
        if (!c->ok)
            return 0;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
        if ((b & 0x80) && shift > 70) {
            c->ok = 0;
            return 0;
        }
    } while (b & 0x80);
    if (shift < 64 && (b & 0x40))
        v |= ~(uint64_t)0 << shift;
    return (int64_t)v;
}

static void skip(struct cur *c, uint64_t n) {
    if (!c->ok || c->pos > c->end || n > c->end - c->pos) {
        c->ok = 0;
        return;
    }
    c->pos += (size_t)n;
}

/* DW_EH_PE_* pointer encodings. */
#define PE_OMIT 0xff
#define PE_ABSPTR 0x00
#define PE_ULEB128 0x01
#define PE_UDATA2 0x02
#define PE_UDATA4 0x03
#define PE_UDATA8 0x04
#define PE_SLEB128 0x09
#define PE_SDATA2 0x0a
#define PE_SDATA4 0x0b
#define PE_SDATA8 0x0c
#define PE_PCREL 0x10
#define PE_INDIRECT 0x80

/* An encoded pointer. base: the vaddr of byte 0 of the section (for pcrel).
 * apply = 0 reads only the value's format (an FDE's address range). Anything
 * but absptr/pcrel (datarel, textrel, funcrel, aligned) is refused. */
static uint64_t rd_enc(struct cur *c, uint8_t enc, uint64_t base, int apply) {
    size_t at = c->pos;
    uint64_t v;
    if (enc == PE_OMIT) {
        c->ok = 0;
        return 0;
    }
    switch (enc & 0x0f) {
    case PE_ABSPTR: v = rd_le(c, 8); break;
    case PE_ULEB128: v = rd_uleb(c); break;
    case PE_UDATA2: v = rd_le(c, 2); break;
    case PE_UDATA4: v = rd_le(c, 4); break;
    case PE_UDATA8: v = rd_le(c, 8); break;
    case PE_SLEB128: v = (uint64_t)rd_sleb(c); break;
    case PE_SDATA2: v = (uint64_t)(int64_t)(int16_t)rd_le(c, 2); break;
    case PE_SDATA4: v = (uint64_t)(int64_t)(int32_t)rd_le(c, 4); break;
    case PE_SDATA8: v = rd_le(c, 8); break;
    default: c->ok = 0; return 0;
    }
    if (!apply)
        return v;
    switch (enc & 0x70) {
    case 0: break;
    case PE_PCREL: v += base + at; break;
    default: c->ok = 0; return 0;
    }
    if ((enc & PE_INDIRECT) && apply != 2) /* indirect only for the (skipped) personality */
        c->ok = 0;
    return v;
}

/* ---- entries ------------------------------------------------------------- */

struct sec {
    const uint8_t *p;
    size_t len;
    uint64_t vaddr;
    int eh; /* .eh_frame (else .debug_frame) */
};

/* The common header of a CIE or FDE at off: its id field's value and position,
 * and the end of the entry. Returns 1 ok, 0 terminator/end, -1 bad (stop). */
static int entry_header(const struct sec *s, size_t off, uint64_t *id, size_t *id_pos,
                        size_t *body, size_t *end, int *is_cie) {
    struct cur c = {s->p, off, s->len, 1};
    uint64_t length = rd_le(&c, 4);
    int dwarf64 = 0;
    if (!c.ok)
        return 0;
    if (length == 0)
        return 0;
    if (length == 0xffffffffu) {
        length = rd_le(&c, 8);
        dwarf64 = 1;
        if (!c.ok)
            return -1;
    }
    if (length > s->len - c.pos)
        return -1;
    *end = c.pos + (size_t)length;
    c.end = *end;
    *id_pos = c.pos;
    if (s->eh) {
        *id = rd_le(&c, 4);
        *is_cie = *id == 0;
    } else if (dwarf64) {
        *id = rd_le(&c, 8);
        *is_cie = *id == UINT64_MAX;
    } else {
        *id = rd_le(&c, 4);
        *is_cie = *id == 0xffffffffu;
    }
    if (!c.ok)
        return -1;
    *body = c.pos;
    return 1;
}

struct cie {
    size_t off; /* of the entry, +1 (0: an empty cache slot) */
    uint64_t code_align;
    int64_t data_align;
    uint64_t ra_reg;
    uint8_t fde_enc;   /* .eh_frame pointer encoding of FDE addresses */
    uint8_t addr_size; /* .debug_frame */
    uint8_t seg_size;
    uint8_t has_z; /* FDEs carry augmentation data */
    size_t insn, insn_end;
};

static int parse_cie(const struct sec *s, size_t off, struct cie *out) {
    uint64_t id;
    size_t id_pos, body, end;
    int is_cie, r;
    uint8_t version;
    const uint8_t *aug;
    size_t aug_len;
    struct cur c;
    memset(out, 0, sizeof *out);
    r = entry_header(s, off, &id, &id_pos, &body, &end, &is_cie);
    if (r != 1 || !is_cie)
        return -1;
    c = (struct cur){s->p, body, end, 1};
    version = rd_u8(&c);
    if (!(version == 1 || version == 3 || (!s->eh && version == 4)))
        return -1;
    aug = s->p + c.pos;
    aug_len = 0;
    while (c.ok && rd_u8(&c) != 0)
        aug_len++;
    if (!c.ok)
        return -1;
    if (aug_len >= 2 && aug[0] == 'e' && aug[1] == 'h')
        skip(&c, 8); /* the old GCC eh_ptr */
    out->addr_size = 8;
    if (version == 4) {
        out->addr_size = rd_u8(&c);
        out->seg_size = rd_u8(&c);
        if (out->addr_size != 4 && out->addr_size != 8)
            return -1;
    }
    out->code_align = rd_uleb(&c);
    out->data_align = rd_sleb(&c);
    out->ra_reg = version == 1 ? rd_u8(&c) : rd_uleb(&c);
    out->fde_enc = PE_ABSPTR;
    if (!c.ok)
        return -1;
    if (aug_len && aug[0] == 'z') {
        uint64_t n = rd_uleb(&c);
        size_t data_end;
        size_t i;
        if (!c.ok || n > c.end - c.pos)
            return -1;
        data_end = c.pos + (size_t)n;
        out->has_z = 1;
        for (i = 1; i < aug_len && c.ok; i++) {
            uint8_t ch = aug[i];
            if (ch == 'R') {
                out->fde_enc = rd_u8(&c);
            } else if (ch == 'P') {
                uint8_t penc = rd_u8(&c);
                if (c.ok && (penc & 0x70) != 0 && (penc & 0x70) != PE_PCREL) {
                    /* datarel/textrel/aligned personality: its size is its format's */
                    rd_enc(&c, (uint8_t)(penc & 0x0f), 0, 0);
                } else if (c.ok) {
                    rd_enc(&c, penc, s->vaddr, 2);
                }
            } else if (ch == 'L') {
                rd_u8(&c);
            } else if (ch == 'S' || ch == 'B' || ch == 'G') {
                /* signal frame, aarch64 BTI / MTE: no data */
            } else {
                break; /* unknown: the 'z' length still lets us skip the data */
            }
        }
        if (!c.ok || c.pos > data_end)
            return -1;
        c.pos = data_end;
    } else if (aug_len && !(aug_len == 2 && aug[0] == 'e' && aug[1] == 'h')) {
        return -1; /* an augmentation we cannot skip */
    }
    out->insn = c.pos;
    out->insn_end = end;
    out->off = off + 1;
    return 0;
}

/* ---- the rule machine ---------------------------------------------------- */

enum { R_UNSET, R_UNDEF, R_SAME, R_OFFSET, R_OTHER };
enum { C_UNSET, C_REG, C_PLT11, C_PLT10, C_OTHER };

struct rule {
    uint8_t kind;
    int64_t off;
};

struct state {
    uint8_t cfa_kind;
    uint64_t cfa_reg;
    int64_t cfa_off;
    struct rule fp, ra;
};

#define STATE_STACK 16

/* rows of one decode, before sorting and merging */
struct rowbuf {
    struct rsprof_cfi_row *r;
    size_t n, cap;
};

static int push_row(struct rowbuf *b, const struct rsprof_cfi_row *row) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        struct rsprof_cfi_row *r = realloc(b->r, cap * sizeof *r);
        if (!r)
            return -1;
        b->r = r;
        b->cap = cap;
    }
    b->r[b->n++] = *row;
    return 0;
}

static int same_rule(const struct rsprof_cfi_row *a, const struct rsprof_cfi_row *b) {
    return a->kind == b->kind && a->cfa_off == b->cfa_off && a->bp_off == b->bp_off &&
           a->ra_off == b->ra_off;
}

static void to_row(const struct state *st, const struct cfi_arch *arch,
                   struct rsprof_cfi_row *row) {
    uint8_t kind = RSPROF_CFI_UNSUPPORTED;
    int64_t cfa_off = 0;
    row->cfa_off = 0;
    row->bp_off = RSPROF_CFI_SAME;
    row->ra_off = 0;
    if (st->ra.kind == R_UNDEF) {
        row->kind = RSPROF_CFI_OUTERMOST;
        return;
    }
    if (st->cfa_kind == C_REG && st->cfa_reg == arch->sp_reg) {
        kind = RSPROF_CFI_SP;
        cfa_off = st->cfa_off;
    } else if (st->cfa_kind == C_REG && st->cfa_reg == arch->fp_reg) {
        kind = RSPROF_CFI_BP;
        cfa_off = st->cfa_off;
    } else if (st->cfa_kind == C_PLT11 || st->cfa_kind == C_PLT10) {
        kind = st->cfa_kind == C_PLT11 ? RSPROF_CFI_PLT11 : RSPROF_CFI_PLT10;
        cfa_off = 8;
    }
    if (cfa_off < INT32_MIN || cfa_off > INT32_MAX)
        kind = RSPROF_CFI_UNSUPPORTED;
    if (st->ra.kind != R_OFFSET || st->ra.off < INT8_MIN || st->ra.off > INT8_MAX)
        kind = RSPROF_CFI_UNSUPPORTED;
    if (st->fp.kind == R_OFFSET) {
        if (st->fp.off <= INT16_MIN || st->fp.off > INT16_MAX)
            kind = RSPROF_CFI_UNSUPPORTED;
    } else if (st->fp.kind == R_OTHER) {
        kind = RSPROF_CFI_UNSUPPORTED;
    }
    row->kind = kind;
    if (kind == RSPROF_CFI_UNSUPPORTED)
        return;
    row->cfa_off = (int32_t)cfa_off;
    row->ra_off = (int8_t)st->ra.off;
    if (st->fp.kind == R_OFFSET)
        row->bp_off = (int16_t)st->fp.off;
}

/* binutils' .plt CFA: DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and;
 * DW_OP_lit11 (or lit10); DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus */
static const uint8_t PLT_EXPR[11] = {0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a,
                                     0x3b, 0x2a, 0x33, 0x24, 0x22};

static uint8_t cfa_expr_kind(const uint8_t *e, uint64_t n) {
    if (n != sizeof PLT_EXPR || memcmp(e, PLT_EXPR, 6) != 0 || memcmp(e + 7, PLT_EXPR + 7, 4))
        return C_OTHER;
    if (e[6] == 0x3b)
        return C_PLT11;
    if (e[6] == 0x3a)
        return C_PLT10;
    return C_OTHER;
}

struct run {
    const struct sec *s;
    const struct cie *cie;
    const struct cfi_arch *arch;
    struct state st;
    struct state init; /* after the CIE's instructions: what restore goes back to */
    struct state stack[STATE_STACK];
    unsigned depth;
    uint64_t loc, end;
    struct rowbuf *out; /* NULL while running the CIE's instructions */
    size_t first_row;
    int oom;
};

static struct rule *tracked(struct run *r, struct state *st, uint64_t reg) {
    if (reg == r->cie->ra_reg)
        return &st->ra;
    if (reg == r->arch->fp_reg)
        return &st->fp;
    return NULL;
}

static void set_rule(struct run *r, uint64_t reg, uint8_t kind, int64_t off) {
    struct rule *q = tracked(r, &r->st, reg);
    if (q) {
        q->kind = kind;
        q->off = off;
    }
}

/* DW_CFA_restore: the rule the CIE's instructions left. */
static void restore_rule(struct run *r, uint64_t reg) {
    struct rule *q = tracked(r, &r->st, reg);
    if (q)
        *q = *tracked(r, &r->init, reg);
}

/* The current state holds from loc; emit it, unless equal to the last one. */
static void emit(struct run *r) {
    struct rsprof_cfi_row row;
    if (!r->out || r->loc >= r->end)
        return;
    to_row(&r->st, r->arch, &row);
    row.start = r->loc;
    if (r->out->n > r->first_row && same_rule(&r->out->r[r->out->n - 1], &row))
        return;
    if (push_row(r->out, &row))
        r->oom = 1;
}

/* Move to new_loc; 0 ok, -1 bad (backwards or overflow). */
static int advance_to(struct run *r, uint64_t new_loc) {
    if (!r->out)
        return 0; /* locations in a CIE's instructions mean nothing */
    if (new_loc < r->loc)
        return -1;
    if (new_loc > r->loc) {
        emit(r);
        r->loc = new_loc;
    }
    return 0;
}

static int advance(struct run *r, uint64_t delta) {
    uint64_t d = delta * r->cie->code_align;
    if (r->cie->code_align && d / r->cie->code_align != delta)
        return -1;
    if (r->loc + d < r->loc)
        return -1;
    return advance_to(r, r->loc + d);
}

/* Execute instructions in [from, to); 0 ok, -1 bad entry. */
static int execute(struct run *r, size_t from, size_t to) {
    struct cur c = {r->s->p, from, to, 1};
    const struct cie *cie = r->cie;
    while (c.ok && c.pos < c.end && !r->oom) {
        uint8_t op = rd_u8(&c);
        uint8_t hi = op & 0xc0, lo = op & 0x3f;
        uint64_t reg, u;
        int64_t sv;
        if (hi == 0x40) { /* advance_loc */
            if (advance(r, lo))
                return -1;
            continue;
        }
        if (hi == 0x80) { /* offset */
            u = rd_uleb(&c);
            set_rule(r, lo, R_OFFSET, (int64_t)u * cie->data_align);
            continue;
        }
        if (hi == 0xc0) { /* restore */
            restore_rule(r, lo);
            continue;
        }
        switch (op) {
        case 0x00: /* nop */
            break;
        case 0x01: /* set_loc */
            if (r->s->eh)
                u = rd_enc(&c, cie->fde_enc, r->s->vaddr, 1);
            else
                u = rd_le(&c, cie->addr_size);
            if (c.ok && advance_to(r, u))
                return -1;
            break;
        case 0x02: /* advance_loc1 */
            u = rd_le(&c, 1);
            if (c.ok && advance(r, u))
                return -1;
            break;
        case 0x03: /* advance_loc2 */
            u = rd_le(&c, 2);
            if (c.ok && advance(r, u))
                return -1;
            break;
        case 0x04: /* advance_loc4 */
            u = rd_le(&c, 4);
            if (c.ok && advance(r, u))
                return -1;
            break;
        case 0x05: /* offset_extended */
            reg = rd_uleb(&c);
            u = rd_uleb(&c);
            set_rule(r, reg, R_OFFSET, (int64_t)u * cie->data_align);
            break;
        case 0x06: /* restore_extended */
            reg = rd_uleb(&c);
            if (c.ok)
                restore_rule(r, reg);
            break;
        case 0x07: /* undefined */
            reg = rd_uleb(&c);
            set_rule(r, reg, R_UNDEF, 0);
            break;
        case 0x08: /* same_value */
            reg = rd_uleb(&c);
            set_rule(r, reg, R_SAME, 0);
            break;
        case 0x09: /* register */
            reg = rd_uleb(&c);
            rd_uleb(&c);
            set_rule(r, reg, R_OTHER, 0);
            break;
        case 0x0a: /* remember_state */
            if (r->depth == STATE_STACK)
                return -1;
            r->stack[r->depth++] = r->st;
            break;
        case 0x0b: /* restore_state (the CFA rule too, as GCC's epilogues expect) */
            if (r->depth == 0)
                return -1;
            r->st = r->stack[--r->depth];
            break;
        case 0x0c: /* def_cfa */
            reg = rd_uleb(&c);
            u = rd_uleb(&c);
            r->st.cfa_kind = C_REG;
            r->st.cfa_reg = reg;
            r->st.cfa_off = (int64_t)u;
            break;
        case 0x0d: /* def_cfa_register */
            reg = rd_uleb(&c);
            if (r->st.cfa_kind != C_REG)
                r->st.cfa_off = 0;
            r->st.cfa_kind = C_REG;
            r->st.cfa_reg = reg;
            break;
        case 0x0e: /* def_cfa_offset */
            u = rd_uleb(&c);
            if (r->st.cfa_kind == C_REG)
                r->st.cfa_off = (int64_t)u;
            else
                r->st.cfa_kind = C_OTHER;
            break;
        case 0x0f: /* def_cfa_expression */
            u = rd_uleb(&c);
            if (!c.ok || u > c.end - c.pos)
                return -1;
            r->st.cfa_kind = cfa_expr_kind(c.p + c.pos, u);
            c.pos += (size_t)u;
            break;
        case 0x10: /* expression */
        case 0x16: /* val_expression */
            reg = rd_uleb(&c);
            u = rd_uleb(&c);
            skip(&c, u);
            set_rule(r, reg, R_OTHER, 0);
            break;
        case 0x11: /* offset_extended_sf */
            reg = rd_uleb(&c);
            sv = rd_sleb(&c);
            set_rule(r, reg, R_OFFSET, sv * cie->data_align);
            break;
        case 0x12: /* def_cfa_sf */
            reg = rd_uleb(&c);
            sv = rd_sleb(&c);
            r->st.cfa_kind = C_REG;
            r->st.cfa_reg = reg;
            r->st.cfa_off = sv * cie->data_align;
            break;
        case 0x13: /* def_cfa_offset_sf */
            sv = rd_sleb(&c);
            if (r->st.cfa_kind == C_REG)
                r->st.cfa_off = sv * cie->data_align;
            else
                r->st.cfa_kind = C_OTHER;
            break;
        case 0x14: /* val_offset */
            reg = rd_uleb(&c);
            rd_uleb(&c);
            set_rule(r, reg, R_OTHER, 0);
            break;
        case 0x15: /* val_offset_sf */
            reg = rd_uleb(&c);
            rd_sleb(&c);
            set_rule(r, reg, R_OTHER, 0);
            break;
        case 0x2d: /* GNU_window_save / AARCH64_negate_ra_state: no operands */
            break;
        case 0x2e: /* GNU_args_size */
            rd_uleb(&c);
            break;
        case 0x2f: /* GNU_negative_offset_extended */
            reg = rd_uleb(&c);
            u = rd_uleb(&c);
            set_rule(r, reg, R_OFFSET, -((int64_t)u * cie->data_align));
            break;
        default:
            return -1; /* unknown: its operands' length is unknown too */
        }
    }
    return c.ok ? 0 : -1;
}

/* ---- FDEs and the final table ------------------------------------------- */

struct fde {
    uint64_t start, end;
    uint64_t prio; /* section order: lower wins where FDEs overlap */
    size_t row0, nrows, cursor;
};

struct fdebuf {
    struct fde *f;
    size_t n, cap;
};

#define CIE_CACHE 64

struct builder {
    struct rowbuf rows;
    struct fdebuf fdes;
    struct cie cache[CIE_CACHE];
    uint64_t prio;
    size_t fde_count, bad;
    int oom;
};

static const struct cie *get_cie(struct builder *b, const struct sec *s, size_t off) {
    struct cie *slot = &b->cache[(off >> 2) % CIE_CACHE];
    if (slot->off == off + 1)
        return slot;
    if (parse_cie(s, off, slot)) {
        slot->off = 0;
        return NULL;
    }
    return slot;
}

static int decode_fde(struct builder *b, const struct sec *s, const struct cie *cie,
                      size_t body, size_t end) {
    struct cur c = {s->p, body, end, 1};
    struct run r;
    uint64_t start, range;
    struct fde f;
    size_t row0 = b->rows.n;
    if (s->eh) {
        start = rd_enc(&c, cie->fde_enc, s->vaddr, 1);
        range = rd_enc(&c, cie->fde_enc, 0, 0);
    } else {
        skip(&c, cie->seg_size);
        start = rd_le(&c, cie->addr_size);
        range = rd_le(&c, cie->addr_size);
    }
    if (cie->has_z)
        skip(&c, rd_uleb(&c));
    if (!c.ok || start + range < start)
        return -1;
    memset(&r, 0, sizeof r);
    r.s = s;
    r.cie = cie;
    r.arch = &ARCH_X86_64;
    r.loc = start;
    r.end = start + range;
    if (execute(&r, cie->insn, cie->insn_end))
        return -1;
    r.init = r.st;
    r.depth = 0;
    r.out = &b->rows;
    r.first_row = row0;
    if (execute(&r, c.pos, end) || r.oom) {
        if (r.oom)
            b->oom = 1;
        b->rows.n = row0;
        return -1;
    }
    emit(&r);
    if (r.oom) {
        b->oom = 1;
        return -1;
    }
    b->fde_count++;
    if (range == 0 || b->rows.n == row0) {
        b->rows.n = row0;
        return 0;
    }
    if (b->fdes.n == b->fdes.cap) {
        size_t cap = b->fdes.cap ? b->fdes.cap * 2 : 256;
        struct fde *nf = realloc(b->fdes.f, cap * sizeof *nf);
        if (!nf) {
            b->oom = 1;
            return -1;
        }
        b->fdes.f = nf;
        b->fdes.cap = cap;
    }
    f.start = start;
    f.end = start + range;
    f.prio = b->prio++;
    f.row0 = row0;
    f.nrows = b->rows.n - row0;
    f.cursor = 0;
    b->fdes.f[b->fdes.n++] = f;
    return 0;
}

static void scan_section(struct builder *b, const struct sec *s) {
    size_t off = 0;
    memset(b->cache, 0, sizeof b->cache);
    while (off < s->len && !b->oom) {
        uint64_t id;
        size_t id_pos, body, end;
        int is_cie;
        int r = entry_header(s, off, &id, &id_pos, &body, &end, &is_cie);
        if (r == 0)
            break;
        if (r < 0) {
            b->bad++;
            break; /* the length is unusable: nothing after it can be found */
        }
        if (!is_cie) {
            size_t cie_off;
            const struct cie *cie = NULL;
            if (s->eh) {
                if (id <= id_pos) {
                    cie_off = id_pos - (size_t)id;
                    cie = get_cie(b, s, cie_off);
                }
            } else if (id < s->len) {
                cie = get_cie(b, s, (size_t)id);
            }
            if (!cie || decode_fde(b, s, cie, body, end))
                b->bad++;
        }
        off = end;
    }
}

static int fde_order(const void *x, const void *y) {
    const struct fde *a = x, *b = y;
    if (a->start != b->start)
        return a->start < b->start ? -1 : 1;
    return a->prio < b->prio ? -1 : a->prio > b->prio;
}

/* min-heap of FDE indices by prio */
static void heap_push(size_t *h, size_t *n, const struct fde *f, size_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (f[h[p]].prio <= f[v].prio)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static void heap_pop(size_t *h, size_t *n, const struct fde *f) {
    size_t i = 0, v = h[--(*n)];
    for (;;) {
        size_t l = 2 * i + 1, m;
        if (l >= *n)
            break;
        m = (l + 1 < *n && f[h[l + 1]].prio < f[h[l]].prio) ? l + 1 : l;
        if (f[v].prio <= f[h[m]].prio)
            break;
        h[i] = h[m];
        i = m;
    }
    if (*n)
        h[i] = v;
}

static int out_row(struct rowbuf *out, const struct rsprof_cfi_row *row, uint64_t start) {
    struct rsprof_cfi_row r = *row;
    r.start = start;
    if (out->n && same_rule(&out->r[out->n - 1], &r))
        return 0;
    return push_row(out, &r);
}

/* Rows of the whole object: each address owned by the covering FDE of lowest
 * prio, a NONE row where no FDE covers. */
static int merge(struct builder *b, struct rowbuf *out) {
    struct fde *f = b->fdes.f;
    size_t nf = b->fdes.n, i = 0, nh = 0;
    size_t *heap;
    uint64_t pos;
    static const struct rsprof_cfi_row none = {0, 0, RSPROF_CFI_SAME, 0, RSPROF_CFI_NONE};
    if (nf == 0)
        return 0;
    qsort(f, nf, sizeof *f, fde_order);
    heap = malloc(nf * sizeof *heap);
    if (!heap)
        return -1;
    pos = f[0].start;
    for (;;) {
        size_t owner;
        uint64_t next;
        const struct rsprof_cfi_row *rows;
        while (i < nf && f[i].start <= pos)
            heap_push(heap, &nh, f, i++);
        while (nh && f[heap[0]].end <= pos)
            heap_pop(heap, &nh, f);
        if (!nh) {
            if (out_row(out, &none, pos))
                goto oom;
            if (i >= nf)
                break;
            pos = f[i].start;
            continue;
        }
        owner = heap[0];
        next = f[owner].end;
        if (i < nf && f[i].start < next)
            next = f[i].start;
        rows = b->rows.r + f[owner].row0;
        while (f[owner].cursor + 1 < f[owner].nrows && rows[f[owner].cursor + 1].start <= pos)
            f[owner].cursor++;
        if (out_row(out, &rows[f[owner].cursor], pos))
            goto oom;
        while (f[owner].cursor + 1 < f[owner].nrows && rows[f[owner].cursor + 1].start < next) {
            f[owner].cursor++;
            if (out_row(out, &rows[f[owner].cursor], rows[f[owner].cursor].start))
                goto oom;
        }
        pos = next;
    }
    free(heap);
    return 0;
oom:
    free(heap);
    return -1;
}

int rsprof_cfi_build(struct rsprof_cfi_table *t, const uint8_t *eh, size_t eh_len,
                     uint64_t eh_vaddr, const uint8_t *dbg, size_t dbg_len) {
    struct builder *b = calloc(1, sizeof *b);
    struct rowbuf out = {NULL, 0, 0};
    size_t i;
    memset(t, 0, sizeof *t);
    if (!b)
        return -1;
    if (eh && eh_len) {
        struct sec s = {eh, eh_len, eh_vaddr, 1};
        scan_section(b, &s);
    }
    if (dbg && dbg_len && !b->oom) {
        struct sec s = {dbg, dbg_len, 0, 0};
        scan_section(b, &s);
    }
    if (b->oom || merge(b, &out)) {
        free(out.r);
        free(b->rows.r);
        free(b->fdes.f);
        free(b);
        return -1;
    }
    if (out.n && out.n < out.cap) {
        struct rsprof_cfi_row *r = realloc(out.r, out.n * sizeof *r);
        if (r)
            out.r = r;
    }
    t->rows = out.r;
    t->n = out.n;
    t->fdes = b->fde_count;
    t->bad_entries = b->bad;
    for (i = 0; i < out.n; i++)
        t->unsupported_rows += out.r[i].kind == RSPROF_CFI_UNSUPPORTED;
    free(b->rows.r);
    free(b->fdes.f);
    free(b);
    return 0;
}

const struct rsprof_cfi_row *rsprof_cfi_find(const struct rsprof_cfi_table *t, uint64_t vaddr) {
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->rows[mid].start <= vaddr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? &t->rows[lo - 1] : NULL;
}

void rsprof_cfi_free(struct rsprof_cfi_table *t) {
    free(t->rows);
    memset(t, 0, sizeof *t);
}
