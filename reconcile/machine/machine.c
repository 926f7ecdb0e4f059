/* The reconcile machine: entries, verdicts, tallies, back-fills (machine.h). */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

const char *const MC_TALLY_NAMES[MC_N_TALLY] = {
    "produced", "delivered", "lost", "late", "recovered", "unexpected", "duplicated", "retried",
    "attempts", "dead_lettered", "consume_errors", "latency_count"};
const char *const MC_CLASS_NAMES[6] = {"pending", "delivered", "lost", "recovered", "unexpected", "none"};

int mc_fail(Machine *M, int kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(M->err, sizeof M->err, fmt, ap);
    va_end(ap);
    M->err_kind = kind;
    return -1;
}

const char *mc_error(const Machine *M) { return M->err; }

/* The start of every call: no reason yet. */
static void begin(Machine *M) {
    M->err_kind = MC_OK;
    M->err[0] = 0;
}

/* The end of every call: a failure without a reason is memory that ran out
 * (every other failure names itself). */
static int result(Machine *M, int rc) {
    if (rc == 0) return MC_OK;
    if (!M->err_kind) {
        M->err_kind = MC_ENOMEM;
        snprintf(M->err, sizeof M->err, "out of memory");
    }
    return M->err_kind;
}

/* Open addressing with linear probing, for the two tables of ids (entries,
 * compact entries): arrays of pointers to structs whose first member is their
 * 64-bit hash; NULL is an empty place. */
static inline uint64_t hash_of(const void *item) { return *(const uint64_t *)item; }

static int ptable_grow(void ***table, uint32_t *mask) {
    if (*mask >= UINT32_MAX / 2) return -1;
    uint32_t new_mask = *mask * 2 + 1;
    void **t = calloc((size_t)new_mask + 1, sizeof(void *));
    if (!t) return -1;
    for (uint64_t i = 0; i <= *mask; i++) {
        if (!(*table)[i]) continue;
        uint32_t j = (uint32_t)hash_of((*table)[i]) & new_mask;
        while (t[j]) j = (j + 1) & new_mask;
        t[j] = (*table)[i];
    }
    free(*table);
    *table = t;
    *mask = new_mask;
    return 0;
}

/* Backward-shift deletion keeps the probing chains intact. */
static void ptable_remove_at(void **table, uint32_t mask, uint32_t j) {
    table[j] = NULL;
    uint32_t k = (j + 1) & mask;
    while (table[k]) {
        uint32_t home = (uint32_t)hash_of(table[k]) & mask;
        int move = (j <= k) ? (home <= j || home > k) : (home <= j && home > k);
        if (move) {
            table[j] = table[k];
            table[k] = NULL;
            j = k;
        }
        k = (k + 1) & mask;
    }
}

/* ------------------------------------------------------------ dictionaries */

int dict_init(Dict *d) {
    memset(d, 0, sizeof *d);
    d->mask = 63;
    d->table = calloc(d->mask + 1, sizeof(uint32_t));
    return d->table ? 0 : -1;
}

void dict_free(Dict *d) {
    for (uint32_t i = 0; i < d->n; i++) free(d->names[i]);
    free(d->names);
    free(d->lens);
    free(d->table);
    memset(d, 0, sizeof *d);
}

static int dict_grow_table(Dict *d) {
    if (d->mask >= UINT32_MAX / 2) return -1;
    uint32_t mask = d->mask * 2 + 1;
    uint32_t *t = calloc((size_t)mask + 1, sizeof(uint32_t));
    if (!t) return -1;
    for (uint32_t i = 0; i < d->n; i++) {
        uint64_t h = hash_bytes((const uint8_t *)d->names[i], d->lens[i], 0x64696374);
        uint32_t j = (uint32_t)h & mask;
        while (t[j]) j = (j + 1) & mask;
        t[j] = i + 1;
    }
    free(d->table);
    d->table = t;
    d->mask = mask;
    return 0;
}

int64_t dict_get(Dict *d, const uint8_t *s, uint32_t n, int add) {
    uint64_t h = hash_bytes(s, n, 0x64696374);
    uint32_t j = (uint32_t)h & d->mask;
    while (d->table[j]) {
        uint32_t i = d->table[j] - 1;
        if (d->lens[i] == n && memcmp(d->names[i], s, n) == 0) return i;
        j = (j + 1) & d->mask;
    }
    if (!add) return -2;
    if (d->n >= MC_MAX_NAMES) return -1;
    if (d->n == d->cap) {
        uint32_t cap = d->cap ? d->cap * 2 : 16;
        char **names = realloc(d->names, (size_t)cap * sizeof(char *));
        if (!names) return -1;
        d->names = names;
        uint32_t *lens = realloc(d->lens, (size_t)cap * sizeof(uint32_t));
        if (!lens) return -1;
        d->lens = lens;
        d->cap = cap;
    }
    char *copy = malloc((size_t)n + 1);
    if (!copy) return -1;
    memcpy(copy, s, n);
    copy[n] = 0;
    uint32_t i = d->n++;
    d->names[i] = copy;
    d->lens[i] = n;
    d->table[j] = i + 1;
    if ((uint64_t)d->n * 2 > d->mask && dict_grow_table(d)) return -1;
    return i;
}

/* ----------------------------------------------------------------- heaps */

int heap_push(Heap *h, double due, uint32_t idx, uint32_t gen) {
    if (grow(&h->items, &h->cap, h->n, sizeof(Timer), 1024)) return -1;
    size_t i = h->n++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h->items[p].due <= due) break;
        h->items[i] = h->items[p];
        i = p;
    }
    h->items[i].due = due;
    h->items[i].idx = idx;
    h->items[i].gen = gen;
    return 0;
}

Timer heap_pop(Heap *h) {
    Timer top = h->items[0];
    Timer last = h->items[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        double md = last.due;
        if (l < h->n && h->items[l].due < md) { m = l; md = h->items[l].due; }
        if (r < h->n && h->items[r].due < md) m = r;
        if (m == i) break;
        h->items[i] = h->items[m];
        i = m;
    }
    if (h->n) h->items[i] = last;
    return top;
}

/* ------------------------------------------------------------ pair tallies */

int mc_bins_add(McBins *m, int32_t key, int64_t v) {
    if (!m->keys) {
        int32_t *keys = malloc(64 * sizeof(int32_t));
        int64_t *vals = calloc(64, sizeof(int64_t));
        if (!keys || !vals) { free(keys); free(vals); return -1; }
        for (uint32_t i = 0; i < 64; i++) keys[i] = INT32_MIN;
        m->keys = keys;
        m->vals = vals;
        m->mask = 63;
        m->n = 0;
    }
    if ((m->n + 1) * 2 > m->mask) { /* bins are bounded by the sketch's range: a few thousand */
        uint32_t mask = m->mask * 2 + 1;
        int32_t *keys = malloc(((size_t)mask + 1) * sizeof(int32_t));
        int64_t *vals = calloc((size_t)mask + 1, sizeof(int64_t));
        if (!keys || !vals) { free(keys); free(vals); return -1; }
        for (uint32_t i = 0; i <= mask; i++) keys[i] = INT32_MIN;
        for (uint32_t i = 0; i <= m->mask; i++) {
            if (m->keys[i] == INT32_MIN) continue;
            uint32_t k = (uint32_t)hash_u64((uint64_t)(int64_t)m->keys[i], 7) & mask;
            while (keys[k] != INT32_MIN) k = (k + 1) & mask;
            keys[k] = m->keys[i];
            vals[k] = m->vals[i];
        }
        free(m->keys);
        free(m->vals);
        m->keys = keys;
        m->vals = vals;
        m->mask = mask;
    }
    uint32_t j = (uint32_t)hash_u64((uint64_t)(int64_t)key, 7) & m->mask;
    while (m->keys[j] != INT32_MIN && m->keys[j] != key) j = (j + 1) & m->mask;
    if (m->keys[j] == INT32_MIN) {
        m->keys[j] = key;
        m->vals[j] = 0;
        m->n++;
    }
    m->vals[j] = (int64_t)((uint64_t)m->vals[j] + (uint64_t)v);
    return 0;
}

void mc_bins_free(McBins *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static Pair *pair_of(Machine *M, uint32_t sid, uint32_t gid) {
    uint64_t h = hash_u64(((uint64_t)sid << 32) | gid, 0x70616972);
    uint32_t j = (uint32_t)h & M->pair_mask;
    while (M->pair_table[j]) {
        Pair *p = &M->pairs[M->pair_table[j] - 1];
        if (p->sid == sid && p->gid == gid) return p;
        j = (j + 1) & M->pair_mask;
    }
    if (M->npairs == M->pairs_cap) {
        if (M->pairs_cap >= UINT32_MAX / 4) return NULL;
        uint32_t cap = M->pairs_cap ? M->pairs_cap * 2 : 16;
        Pair *ps = realloc(M->pairs, (size_t)cap * sizeof(Pair));
        if (!ps) return NULL;
        M->pairs = ps;
        M->pairs_cap = cap;
    }
    Pair *p = &M->pairs[M->npairs];
    memset(p, 0, sizeof *p);
    p->sid = sid;
    p->gid = gid;
    p->hist = calloc((size_t)M->nbounds + 1, sizeof(int64_t));
    if (!p->hist) return NULL;
    M->pair_table[j] = ++M->npairs;
    if ((uint64_t)M->npairs * 2 > M->pair_mask) {
        uint32_t mask = M->pair_mask * 2 + 1;
        uint32_t *t = calloc((size_t)mask + 1, sizeof(uint32_t));
        if (!t) return NULL;
        for (uint32_t i = 0; i < M->npairs; i++) {
            uint64_t hh = hash_u64(((uint64_t)M->pairs[i].sid << 32) | M->pairs[i].gid, 0x70616972);
            uint32_t k = (uint32_t)hh & mask;
            while (t[k]) k = (k + 1) & mask;
            t[k] = i + 1;
        }
        free(M->pair_table);
        M->pair_table = t;
        M->pair_mask = mask;
    }
    return p;
}

/* The DDSketch bin of a latency: relative accuracy 1% (gamma = 1.01/0.99).
 * 0 for zero, negative bins mirror positive ones with an offset. */
static int32_t sketch_bin(Machine *M, double x) {
    if (x == 0.0) return 0;
    double a = fabs(x);
    if (a < 1e-9) a = 1e-9;
    if (a > 1e300) a = 1e300; /* a bin of int32: ts are bounded, a latency is too */
    int32_t i = (int32_t)ceil(log(a) / M->sketch_gamma_log) + MC_SKETCH_OFFSET;
    return x > 0 ? i : -i;
}

static int observe_latency(Machine *M, Pair *p, double latency) {
    p->latency_sum += latency;
    uint32_t b = 0;
    while (b < M->nbounds && latency > M->bounds[b]) b++;
    p->hist[b]++;
    return mc_bins_add(&p->bins, sketch_bin(M, latency), 1);
}

/* What a judged slot counts for (docs/definitions.md). An unjudged slot counts nothing. */
static void counts_of(const Entry *e, const Slot *s, int64_t out[MC_N_TALLY]) {
    memset(out, 0, sizeof(int64_t) * MC_N_TALLY);
    if (s->cls == CLS_PENDING) return;
    int acked = (s->flags & SL_ACKED) != 0, pany = (s->flags & SL_PANY) != 0;
    uint32_t max_attempt = s->max_attempt > e->p_max_attempt ? s->max_attempt : e->p_max_attempt;
    out[MC_TALLY_PRODUCED] = acked;
    out[MC_TALLY_DELIVERED] = s->cls == CLS_DELIVERED;
    out[MC_TALLY_LOST] = s->cls == CLS_LOST;
    out[MC_TALLY_LATE] = (s->flags & SL_LATE) != 0;
    out[MC_TALLY_RECOVERED] = s->cls == CLS_RECOVERED;
    out[MC_TALLY_UNEXPECTED] = s->cls == CLS_UNEXPECTED;
    out[MC_TALLY_DUPLICATED] = (pany && s->ok > 1) ? (int64_t)(s->ok - 1) : 0;
    out[MC_TALLY_RETRIED] = pany && max_attempt > 1;
    out[MC_TALLY_ATTEMPTS] = pany ? (int64_t)s->n : 0;
    out[MC_TALLY_DEAD_LETTERED] = acked && (s->flags & SL_DL);
    out[MC_TALLY_LATENCY_COUNT] = (s->flags & SL_LATENCY) != 0;
}

/* Whether a verdict is in the reconciliation report (lost, late, duplicated,
 * unexpected, dead-lettered, recovered, indeterminate): written to the store
 * as soon as it is given or changes. */
static int is_reported(const Slot *s) {
    if (s->cls == CLS_PENDING) return 0;
    if (s->cls != CLS_DELIVERED) return 1;
    return (s->flags & (SL_LATE | SL_DL)) || ((s->flags & SL_PANY) && s->ok > 1);
}

/* Whether a verdict is kept in the store once its id is forgotten: every one
 * but the plain delivery (in time, once, never dead-lettered, never retried),
 * so that an id found again there is known whole: a group without a row was
 * delivered plainly. */
static int is_kept(const Entry *e, const Slot *s) {
    uint32_t max_attempt = s->max_attempt > e->p_max_attempt ? s->max_attempt : e->p_max_attempt;
    return is_reported(s) || (s->cls != CLS_PENDING && max_attempt > 1);
}

static int any_kept(const Entry *e) {
    const Slot *ss = (const Slot *)(e + 1);
    for (uint16_t k = 0; k < e->nslots; k++)
        if (is_kept(e, &ss[k])) return 1;
    return 0;
}

/* Adds after - before to the pair's tallies. */
static int add_delta(Machine *M, uint32_t sid, uint32_t gid, const int64_t before[MC_N_TALLY],
                     const int64_t after[MC_N_TALLY]) {
    int any = 0;
    for (int k = 0; k < MC_N_TALLY; k++) any |= before[k] != after[k];
    if (!any) return 0;
    Pair *p = pair_of(M, sid, gid);
    if (!p) return -1;
    for (int k = 0; k < MC_N_TALLY; k++) p->counts[k] += after[k] - before[k];
    p->dirty = 1;
    return 0;
}

/* Counts a record's error class (applied once: a resend never gets here). */
static int count_error(Machine *M, const Rec *r, uint32_t sid, uint32_t gid) {
    if (!r->error) return 0;
    Pair *p = pair_of(M, sid, r->kind == K_PRODUCE ? PRODUCE_GID : gid);
    if (!p) return -1;
    p->errors[r->error - 1]++;
    p->errors_dirty = 1;
    return 0;
}

/* ------------------------------------------------------------- the id table */

static int table_grow(Machine *M) { return ptable_grow(&M->table, &M->mask); }

uint32_t table_find(Machine *M, uint32_t sid, const uint8_t *id, uint32_t n, uint64_t h, int *found) {
    uint32_t j = (uint32_t)h & M->mask;
    while (M->table[j]) {
        Entry *e = M->table[j];
        if (e->hash == h && e->sid == sid && e->idlen == n && memcmp(id_of(e), id, n) == 0) {
            *found = 1;
            return j;
        }
        j = (j + 1) & M->mask;
    }
    *found = 0;
    return j;
}

static void table_remove_at(Machine *M, uint32_t j) { ptable_remove_at(M->table, M->mask, j); }

Entry *entry_alloc(uint16_t slot_cap, uint16_t fp_cap, uint16_t idlen) {
    Entry *e = malloc(entry_size(slot_cap, fp_cap, idlen));
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->slot_cap = slot_cap;
    e->fp_cap = fp_cap;
    e->idlen = idlen;
    return e;
}

void entry_free(Entry *e) {
    if (e && (e->flags & E_FPSET)) free(fpset_of(e));
    free(e);
}

/* Puts a new entry into the pool and the table at position j; the machine
 * owns it from here, failed or not. */
int64_t entry_insert(Machine *M, Entry *e, uint32_t j) {
    uint32_t idx;
    if (M->nfree) {
        idx = M->free_idx[--M->nfree];
    } else {
        if (M->pool_n == M->pool_cap) {
            if (M->pool_cap >= MC_MAX_IDS) {
                entry_free(e);
                return mc_fail(M, MC_ESTATE, "the limit of %u ids in memory is reached", MC_MAX_IDS);
            }
            uint32_t cap = M->pool_cap ? M->pool_cap * 2 : 4096;
            Entry **pool = realloc(M->pool, (size_t)cap * sizeof(Entry *));
            if (!pool) { entry_free(e); return -1; }
            M->pool = pool;
            uint32_t *fi = realloc(M->free_idx, (size_t)cap * sizeof(uint32_t));
            if (!fi) { entry_free(e); return -1; }
            M->free_idx = fi;
            M->pool_cap = cap;
        }
        idx = M->pool_n++;
        M->pool[idx] = NULL;
    }
    e->gen = ++M->gen_counter;
    e->idx = idx;
    M->pool[idx] = e;
    M->table[j] = e;
    M->live++;
    M->entry_bytes += entry_size(e->slot_cap, e->fp_cap, e->idlen);
    if ((uint64_t)M->live * 10 > ((uint64_t)M->mask + 1) * 7 && table_grow(M)) return -1;
    return idx;
}

/* Grows an entry's arrays; the pool keeps pointing at it. The fingerprints
 * copied are at most the new room (a move to a set empties the inline ones). */
static Entry *entry_resize(Machine *M, uint32_t idx, uint16_t slot_cap, uint16_t fp_cap) {
    Entry *old = M->pool[idx];
    if (slot_cap < old->nslots || fp_cap < old->nfp) return NULL;
    Entry *e = entry_alloc(slot_cap, fp_cap, old->idlen);
    if (!e) return NULL;
    memcpy(e, old, sizeof(Entry));
    e->slot_cap = slot_cap;
    e->fp_cap = fp_cap;
    memcpy(slots_of(e), slots_of(old), old->nslots * sizeof(Slot));
    if (old->flags & E_FPSET) memcpy(fps_of(e), fps_of(old), sizeof(FpSet *));
    else memcpy(fps_of(e), fps_of(old), (size_t)old->nfp * 8);
    memcpy(id_of(e), id_of(old), old->idlen);
    M->entry_bytes += entry_size(slot_cap, fp_cap, old->idlen);
    M->entry_bytes -= entry_size(old->slot_cap, old->fp_cap, old->idlen);
    int found;
    uint32_t j = table_find(M, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) M->table[j] = e;
    free(old); /* not entry_free: the set moved to e */
    M->pool[idx] = e;
    return e;
}

/* --------------------------------------------------------- fingerprints */

static size_t fpset_bytes(const FpSet *s) { return sizeof(FpSet) + (size_t)(s->mask + 1) * 8; }

static int fpset_has(const FpSet *s, uint64_t fp) {
    if (!fp) return s->has_zero;
    uint64_t j = mix64(fp) & s->mask;
    while (s->keys[j]) {
        if (s->keys[j] == fp) return 1;
        j = (j + 1) & s->mask;
    }
    return 0;
}

/* Adds a fingerprint (not in the set); the set may move. */
static int fpset_add(Machine *M, FpSet **sp, uint64_t fp) {
    FpSet *s = *sp;
    if (!fp) {
        s->has_zero = 1;
        s->n++;
        return 0;
    }
    if ((s->n + 1) * 2 > s->mask) {
        if (s->mask >= (SIZE_MAX / 8) / 4) return -1;
        uint64_t mask = s->mask * 2 + 1;
        FpSet *t = calloc(1, sizeof(FpSet) + (size_t)(mask + 1) * 8);
        if (!t) return -1;
        t->mask = mask;
        t->n = s->n;
        t->has_zero = s->has_zero;
        for (uint64_t i = 0; i <= s->mask; i++) {
            if (!s->keys[i]) continue;
            uint64_t j = mix64(s->keys[i]) & mask;
            while (t->keys[j]) j = (j + 1) & mask;
            t->keys[j] = s->keys[i];
        }
        M->fpset_bytes += fpset_bytes(t);
        M->fpset_bytes -= fpset_bytes(s);
        free(s);
        *sp = s = t;
    }
    uint64_t j = mix64(fp) & s->mask;
    while (s->keys[j]) j = (j + 1) & s->mask;
    s->keys[j] = fp;
    s->n++;
    return 0;
}

static int fp_has(Entry *e, uint64_t fp) {
    if (e->flags & E_FPSET) return fpset_has(fpset_of(e), fp);
    const uint64_t *fps = fps_of(e);
    for (uint16_t k = 0; k < e->nfp; k++)
        if (fps[k] == fp) return 1;
    return 0;
}

uint64_t fp_count(Entry *e) { return (e->flags & E_FPSET) ? fpset_of(e)->n : e->nfp; }

int fp_each(Entry *e, int (*cb)(void *ctx, uint64_t fp), void *ctx) {
    if (!(e->flags & E_FPSET)) {
        for (uint16_t k = 0; k < e->nfp; k++)
            if (cb(ctx, fps_of(e)[k])) return -1;
        return 0;
    }
    FpSet *s = fpset_of(e);
    if (s->has_zero && cb(ctx, 0)) return -1;
    for (uint64_t i = 0; i <= s->mask; i++)
        if (s->keys[i] && cb(ctx, s->keys[i])) return -1;
    return 0;
}

/* Records a new fingerprint of an entry (may move the entry): inline while
 * few, then in a set of its own. */
int fp_add(Machine *M, uint32_t idx, uint64_t fp) {
    Entry *e = M->pool[idx];
    if (e->flags & E_FPSET) {
        FpSet *s = fpset_of(e);
        if (fpset_add(M, &s, fp)) return -1;
        memcpy(fps_of(e), &s, sizeof s);
        return 0;
    }
    if (e->nfp < e->fp_cap) {
        fps_of(e)[e->nfp++] = fp;
        return 0;
    }
    if (e->fp_cap < MC_FP_INLINE) {
        uint16_t cap = e->fp_cap ? (uint16_t)(e->fp_cap * 2) : 2;
        if (cap > MC_FP_INLINE) cap = MC_FP_INLINE;
        e = entry_resize(M, idx, e->slot_cap, cap);
        if (!e) return -1;
        fps_of(e)[e->nfp++] = fp;
        return 0;
    }
    /* many records of one id: a set, O(1) a record, no bound on their number */
    FpSet *s = calloc(1, sizeof(FpSet) + 128 * 8);
    if (!s) return -1;
    s->mask = 127;
    M->fpset_bytes += fpset_bytes(s);
    for (uint16_t k = 0; k < e->nfp; k++)
        if (!fpset_has(s, fps_of(e)[k]) && fpset_add(M, &s, fps_of(e)[k])) { free(s); return -1; }
    if (fpset_add(M, &s, fp)) { free(s); return -1; }
    e->nfp = 0; /* the inline fingerprints are in the set: none to copy */
    e = entry_resize(M, idx, e->slot_cap, 1);
    if (!e) { free(s); return -1; }
    memcpy(fps_of(e), &s, sizeof s);
    e->flags |= E_FPSET;
    return 0;
}

/* ------------------------------------------------------------ known (persisted) ids */

int known_add(Machine *M, uint64_t h) {
    if (!h) h = 1;
    uint32_t j = (uint32_t)mix64(h) & M->known_mask;
    while (M->known[j]) {
        if (M->known[j] == h) return 0;
        j = (j + 1) & M->known_mask;
    }
    if (M->known_n >= MC_MAX_KNOWN)
        return mc_fail(M, MC_ESTATE, "the limit of %u discrepant ids is reached", MC_MAX_KNOWN);
    M->known[j] = h;
    M->known_n++;
    if ((uint64_t)M->known_n * 2 > M->known_mask) {
        uint32_t mask = M->known_mask * 2 + 1;
        uint64_t *t = calloc((size_t)mask + 1, 8);
        if (!t) return -1;
        for (uint64_t i = 0; i <= M->known_mask; i++) {
            if (!M->known[i]) continue;
            uint32_t k = (uint32_t)mix64(M->known[i]) & mask;
            while (t[k]) k = (k + 1) & mask;
            t[k] = M->known[i];
        }
        free(M->known);
        M->known = t;
        M->known_mask = mask;
    }
    return 0;
}

static int known_has(Machine *M, uint64_t h) {
    if (!h) h = 1;
    uint32_t j = (uint32_t)mix64(h) & M->known_mask;
    while (M->known[j]) {
        if (M->known[j] == h) return 1;
        j = (j + 1) & M->known_mask;
    }
    return 0;
}

/* ------------------------------------------------------------- verdict rows */

static int mark_dirty(Machine *M, uint32_t idx) {
    Entry *e = M->pool[idx];
    if (e->flags & E_DIRTY) return 0;
    e->flags |= E_DIRTY;
    if (grow(&M->dirty, &M->dirty_cap, M->ndirty, 8, 256)) return -1;
    M->dirty[M->ndirty++] = ((uint64_t)idx << 32) | e->gen;
    return 0;
}

/* Queues the row of one judged slot for the drain (its id copied). */
static int verdict_row(Machine *M, Entry *e, const Slot *s) {
    if (grow(&M->vrows, &M->vrows_cap, M->nvrows, sizeof(VRow), 256)) return -1;
    while (M->arena_cap - M->arena_n < e->idlen) {
        size_t cap = M->arena_cap ? M->arena_cap * 2 : 4096;
        char *a = realloc(M->arena, cap);
        if (!a) return -1;
        M->arena = a;
        M->arena_cap = cap;
    }
    VRow *row = &M->vrows[M->nvrows++];
    McVerdict *v = &row->v;
    double D = deadline_of(M, e->sid);
    double base = (s->flags & SL_PANY) ? e->t0 : s->first_ts;
    v->sid = e->sid;
    v->gid = s->gid;
    v->id = NULL;
    v->idlen = e->idlen;
    v->cls = s->cls;
    v->acked = (s->flags & SL_ACKED) != 0;
    v->pany = (s->flags & SL_PANY) != 0;
    v->late = (s->flags & SL_LATE) != 0;
    v->dl = (s->flags & SL_DL) != 0;
    v->has_t0 = (s->flags & SL_PANY) && isfinite(e->t0);
    v->t0 = e->t0;
    v->deadline = base + D;
    v->has_latency = (s->flags & SL_LATENCY) && !isnan(s->latency);
    v->latency = s->latency;
    v->n = s->n;
    v->ok = s->ok;
    v->max_attempt = s->max_attempt > e->p_max_attempt ? s->max_attempt : e->p_max_attempt;
    row->id_off = M->arena_n;
    memcpy(M->arena + M->arena_n, id_of(e), e->idlen);
    M->arena_n += e->idlen;
    return 0;
}

/* Queues the rows of an entry whose verdicts the store keeps; marks it known. */
static int emit_verdicts(Machine *M, Entry *e) {
    e->flags &= ~E_DIRTY;
    if (!(e->flags & E_PERSISTED) && !any_kept(e)) return 0;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++) {
        if (ss[k].cls == CLS_PENDING) continue;
        if (verdict_row(M, e, &ss[k])) return -1;
    }
    e->flags |= E_PERSISTED;
    return known_add(M, e->hash);
}

/* ---------------------------------------------------------------- judging */

static int is_plain(Machine *M, Entry *e);
static int compact(Machine *M, uint32_t idx);
static int stream_expects(StreamInfo *si, uint32_t gid);

static Slot *find_slot(Entry *e, uint32_t gid) {
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++)
        if (ss[k].gid == gid) return &ss[k];
    return NULL;
}

/* Adds an empty slot for a group; may move the entry. */
static Slot *add_slot(Machine *M, uint32_t idx, uint32_t gid) {
    Entry *e = M->pool[idx];
    if (e->nslots == e->slot_cap) {
        if (e->slot_cap >= MC_MAX_GROUPS_PER_STREAM) { /* expect_group refused more */
            mc_fail(M, MC_ESTATE, "an id with %u groups, the limit of groups per stream", MC_MAX_GROUPS_PER_STREAM);
            return NULL;
        }
        uint32_t cap = e->slot_cap ? (uint32_t)e->slot_cap * 2 : 1;
        if (cap > MC_MAX_GROUPS_PER_STREAM) cap = MC_MAX_GROUPS_PER_STREAM;
        e = entry_resize(M, idx, (uint16_t)cap, e->fp_cap);
        if (!e) return NULL;
    }
    Slot *s = &slots_of(e)[e->nslots++];
    memset(s, 0, sizeof *s);
    s->gid = (uint16_t)gid;
    s->first_ts = INFINITY;
    s->first_ok = INFINITY;
    return s;
}

/* The first verdict of a slot, from what its entry holds now. */
static int judge_slot(Machine *M, uint32_t idx, Slot *s) {
    Entry *e = M->pool[idx];
    int pany = (e->flags & E_PANY) != 0, acked = (e->flags & E_ACKED) != 0;
    if (pany) e->flags |= E_T0_FROZEN;
    double D = deadline_of(M, e->sid);
    s->flags &= SL_DL;
    if (acked) s->flags |= SL_ACKED;
    if (pany) s->flags |= SL_PANY;
    if (!pany) {
        s->cls = CLS_UNEXPECTED;
    } else if (acked) {
        int in_time = s->first_ok <= e->t0 + D;
        s->cls = in_time ? CLS_DELIVERED : CLS_LOST;
        if (!in_time && s->ok > 0) s->flags |= SL_LATE;
    } else {
        s->cls = s->ok > 0 ? CLS_RECOVERED : CLS_NONE;
    }
    int64_t zero[MC_N_TALLY] = {0}, after[MC_N_TALLY];
    if (acked && s->ok > 0) {
        s->flags |= SL_LATENCY;
        s->latency = s->first_ok - e->t0;
    }
    counts_of(e, s, after);
    if (add_delta(M, e->sid, s->gid, zero, after)) return -1;
    if (s->flags & SL_LATENCY) {
        Pair *p = pair_of(M, e->sid, s->gid);
        if (!p || observe_latency(M, p, s->latency)) return -1;
    }
    M->judged++;
    if (is_reported(s) || (e->flags & E_PERSISTED)) return mark_dirty(M, idx);
    return 0;
}

/* A judged slot after more records: only what the rules let move. */
static int advance_slot(Machine *M, uint32_t idx, Slot *s, const int64_t before[MC_N_TALLY]) {
    Entry *e = M->pool[idx];
    if (s->cls == CLS_NONE && s->ok > 0) s->cls = CLS_RECOVERED;
    if (s->cls == CLS_LOST && s->ok > 0) s->flags |= SL_LATE;
    int new_latency = 0;
    if (!(s->flags & SL_LATENCY) && (s->flags & SL_ACKED) && s->ok > 0) {
        s->flags |= SL_LATENCY;
        s->latency = s->first_ok - e->t0;
        new_latency = 1;
    }
    int64_t after[MC_N_TALLY];
    counts_of(e, s, after);
    if (add_delta(M, e->sid, s->gid, before, after)) return -1;
    if (new_latency) {
        Pair *p = pair_of(M, e->sid, s->gid);
        if (!p || observe_latency(M, p, s->latency)) return -1;
    }
    int changed = 0;
    for (int k = 0; k < MC_N_TALLY; k++) changed |= before[k] != after[k];
    if (changed && (is_reported(s) || (e->flags & E_PERSISTED))) return mark_dirty(M, idx);
    return 0;
}

/* Whether a produced id still owes an expected group its verdict. */
static int owes_verdict(Machine *M, Entry *e) {
    StreamInfo *si = &M->sinfo[e->sid];
    for (uint32_t g = 0; g < si->n; g++) {
        Slot *s = find_slot(e, si->gids[g]);
        if (!s || s->cls == CLS_PENDING) return 1;
    }
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++)
        if (ss[k].cls == CLS_PENDING) return 1;
    return 0;
}

/* When an entry next needs attention: the deadline + settle of its next
 * verdict, or, with every verdict given, when it is forgotten (`remember`
 * later, so that late records still find it). */
static double entry_due(Machine *M, Entry *e) {
    /* an id loaded back from the store leaves with the tick that needed it */
    if ((e->flags & E_LOADED) && !owes_verdict(M, e)) return -INFINITY;
    double D = deadline_of(M, e->sid) + M->settle;
    if (e->flags & E_PANY) return e->t0 + D + (owes_verdict(M, e) ? 0 : M->remember);
    double last = -INFINITY, pending = INFINITY;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++) {
        double d = ss[k].first_ts + D;
        if (d > last) last = d;
        if (ss[k].cls == CLS_PENDING && d < pending) pending = d;
    }
    return isfinite(pending) ? pending : last + M->remember;
}

/* The receipt watermark an entry waits for: settle past the first receipt of
 * the id before a verdict, and `remember` more before it is forgotten (a shim
 * resending a batch of old records must still find them). */
static double receipt_due(Machine *M, Entry *e) {
    if (e->flags & E_LOADED) return -INFINITY;
    int pending = (e->flags & E_PANY) ? owes_verdict(M, e) : 0;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots && !pending; k++) pending = ss[k].cls == CLS_PENDING;
    return e->r0 + M->settle + (pending ? 0 : M->remember);
}

int schedule(Machine *M, uint32_t idx) {
    Entry *e = M->pool[idx];
    return heap_push(&M->due_heap, entry_due(M, e), idx, e->gen);
}

/* Forgets an entry. One whose verdicts the store must keep waits in the
 * graveyard until drain() has written them. */
static int evict(Machine *M, uint32_t idx) {
    Entry *e = M->pool[idx];
    int found;
    uint32_t j = table_find(M, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) table_remove_at(M, j);
    M->entry_bytes -= entry_size(e->slot_cap, e->fp_cap, e->idlen);
    if (e->flags & E_FPSET) { /* the fingerprints go now: the drain needs none */
        FpSet *s = fpset_of(e);
        M->fpset_bytes -= fpset_bytes(s);
        free(s);
        e->flags &= ~E_FPSET;
        e->nfp = 0;
    }
    M->pool[idx] = NULL;
    M->free_idx[M->nfree++] = idx;
    M->live--;
    M->evicted++;
    if ((e->flags & E_DIRTY) || (!(e->flags & E_PERSISTED) && any_kept(e))) {
        if (grow(&M->graveyard, &M->graveyard_cap, M->ngraveyard, sizeof(Entry *), 256)) {
            free(e);
            return -1;
        }
        M->graveyard[M->ngraveyard++] = e;
    } else {
        free(e);
    }
    return 0;
}

/* Judges whatever of an entry is due at `now`; forgets it when nothing is left
 * and both clocks passed its `remember`. */
static int judge_due(Machine *M, uint32_t idx, double now, double watermark) {
    Entry *e = M->pool[idx];
    double D = deadline_of(M, e->sid) + M->settle;
    if (e->flags & E_PANY) {
        if (e->t0 + D <= now) {
            StreamInfo *si = &M->sinfo[e->sid];
            for (uint32_t g = 0; g < si->n; g++) {
                Slot *s = find_slot(M->pool[idx], si->gids[g]);
                if (!s) s = add_slot(M, idx, si->gids[g]);
                if (!s) return -1;
                if (s->cls == CLS_PENDING && judge_slot(M, idx, s)) return -1;
            }
            Slot *ss = slots_of(M->pool[idx]); /* loaded ids may hold groups judged long ago */
            for (uint16_t k = 0; k < M->pool[idx]->nslots; k++)
                if (ss[k].cls == CLS_PENDING && judge_slot(M, idx, &ss[k])) return -1;
        }
    } else {
        e = M->pool[idx];
        Slot *ss = slots_of(e);
        for (uint16_t k = 0; k < e->nslots; k++) {
            if (ss[k].cls == CLS_PENDING && ss[k].first_ts + D <= now && judge_slot(M, idx, &ss[k])) return -1;
        }
    }
    e = M->pool[idx];
    if (is_plain(M, e)) return compact(M, idx);
    if (entry_due(M, e) > now) return schedule(M, idx);
    double rd = receipt_due(M, e);
    if (rd > watermark) return heap_push(&M->receipt_heap, rd, idx, e->gen);
    return evict(M, idx);
}

/* Early verdicts: a group with an in-time ok delivery of an acknowledged id. */
static int judge_early(Machine *M, uint32_t idx) {
    Entry *e = M->pool[idx];
    if (!(e->flags & E_ACKED)) return 0;
    double limit = e->t0 + deadline_of(M, e->sid);
    int judged = 0;
    for (uint16_t k = 0; k < M->pool[idx]->nslots; k++) {
        Slot *s = &slots_of(M->pool[idx])[k];
        if (s->cls == CLS_PENDING && s->first_ok <= limit) {
            if (judge_slot(M, idx, s)) return -1;
            judged = 1;
        }
    }
    return judged && is_plain(M, M->pool[idx]) ? compact(M, idx) : 0;
}

/* The early verdicts of the ids touched since the last call: given after each
 * body (request), never after a batch of them, so that the latency observed and
 * the t0 frozen depend on the order of the requests alone, not on how an
 * engine batched them (one machine's tick, a worker's message). */
static int judge_touched(Machine *M) {
    for (size_t t = 0; t < M->ntouched; t++) {
        uint32_t idx = M->touched[t];
        if (M->pool[idx] && judge_early(M, idx)) return -1;
    }
    M->ntouched = 0;
    return 0;
}

/* ------------------------------------------------------------ compact entries */

static int ctable_grow(Machine *M) { return ptable_grow(&M->ctable, &M->cmask); }

/* The position of an id's compact entry, or -1. */
static int64_t compact_find(Machine *M, uint32_t sid, const uint8_t *id, uint32_t n, uint64_t h) {
    if (!M->clive) return -1;
    uint32_t j = (uint32_t)h & M->cmask;
    uint64_t h2 = 0;
    int have_h2 = 0;
    while (M->ctable[j]) {
        Compact *c = M->ctable[j];
        if (c->hash == h && c->sid == sid) {
            if (!have_h2) { h2 = key_hash2(sid, id, n); have_h2 = 1; }
            if (c->hash2 == h2) return j;
        }
        j = (j + 1) & M->cmask;
    }
    return -1;
}

int compact_exists(Machine *M, uint64_t h, uint64_t h2, uint32_t sid) {
    if (!M->clive) return 0;
    uint32_t j = (uint32_t)h & M->cmask;
    while (M->ctable[j]) {
        Compact *c = M->ctable[j];
        if (c->hash == h && c->sid == sid && c->hash2 == h2) return 1;
        j = (j + 1) & M->cmask;
    }
    return 0;
}

static void compact_remove_at(Machine *M, uint32_t j) {
    ptable_remove_at(M->ctable, M->cmask, j);
    M->clive--;
}

int compact_insert(Machine *M, Compact *c) {
    StreamInfo *si = &M->sinfo[c->sid];
    if (si->fifo_head > 1024 && si->fifo_head * 2 > si->fifo_n) { /* reuse the front's room */
        memmove(si->fifo, si->fifo + si->fifo_head, (si->fifo_n - si->fifo_head) * sizeof(Compact *));
        si->fifo_n -= si->fifo_head;
        si->fifo_head = 0;
    }
    /* room first: a compact entry is in the table and the FIFO, or in neither */
    if (grow(&si->fifo, &si->fifo_cap, si->fifo_n, sizeof(Compact *), 256)) return -1;
    uint32_t j = (uint32_t)c->hash & M->cmask;
    while (M->ctable[j]) j = (j + 1) & M->cmask;
    M->ctable[j] = c;
    M->clive++;
    M->compact_bytes += compact_size(c->nfp, c->ngroups);
    si->fifo[si->fifo_n++] = c;
    if ((uint64_t)M->clive * 10 > ((uint64_t)M->cmask + 1) * 7 && ctable_grow(M)) return -1;
    return 0;
}

/* Whether an entry is a plain delivery for every expected group of its stream. */
static int is_plain(Machine *M, Entry *e) {
    if ((e->flags & (E_PANY | E_ACKED)) != (E_PANY | E_ACKED)) return 0;
    if (e->flags & (E_PERSISTED | E_DIRTY | E_LOADED | E_FPSET) || e->p_max_attempt > 1) return 0;
    StreamInfo *si = &M->sinfo[e->sid];
    if (!si->n || si->n > 255 || e->nslots != si->n) return 0;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++) {
        Slot *sl = &ss[k];
        if (sl->cls != CLS_DELIVERED || sl->ok != 1 || sl->max_attempt > 1 || (sl->flags & (SL_LATE | SL_DL)))
            return 0;
    }
    return 1;
}

/* Turns a plain delivery into its compact form: the entry leaves memory. */
static int compact(Machine *M, uint32_t idx) {
    Entry *e = M->pool[idx];
    StreamInfo *si = &M->sinfo[e->sid];
    Compact *c = malloc(compact_size(e->nfp, (uint8_t)si->n));
    if (!c) return -1;
    c->hash = e->hash;
    c->hash2 = key_hash2(e->sid, (const uint8_t *)id_of(e), e->idlen);
    c->t0 = e->t0;
    c->r0 = e->r0;
    c->sid = e->sid;
    c->nfp = e->nfp;
    c->ngroups = (uint8_t)si->n;
    c->dead = 0;
    memcpy(cfps(c), fps_of(e), (size_t)e->nfp * 8);
    for (uint8_t g = 0; g < c->ngroups; g++) { /* is_plain: every group has its slot */
        Slot *s = find_slot(e, si->gids[g]);
        cok_at(c)[g] = s ? s->first_ok : NAN;
    }
    int found;
    uint32_t j = table_find(M, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) table_remove_at(M, j);
    M->entry_bytes -= entry_size(e->slot_cap, e->fp_cap, e->idlen);
    free(e);
    M->pool[idx] = NULL;
    M->free_idx[M->nfree++] = idx;
    M->live--;
    M->compacted++;
    if (compact_insert(M, c)) { free(c); return -1; }
    return 0;
}

/* An entry again, for a compact id that a record (not a resend) names: its
 * first `ngroups` groups had the plain delivery; groups expected since owe
 * their verdicts. Returns the pool index, or -1. */
static int64_t reinflate(Machine *M, uint32_t cj, const Str *mid) {
    Compact *c = M->ctable[cj];
    StreamInfo *si = &M->sinfo[c->sid];
    Entry *e = entry_alloc((uint16_t)si->n, (uint16_t)(c->nfp + 2), (uint16_t)mid->n);
    if (!e) return -1;
    e->hash = c->hash;
    e->sid = c->sid;
    e->t0 = c->t0;
    e->r0 = c->r0;
    e->flags = E_PANY | E_ACKED | E_T0_FROZEN;
    /* is_plain: produced, never retried. A produce counts its attempt as at least
     * 1 (apply, bf_add): so does the entry again, and a group expected since gets
     * the verdict row an id still in memory would give it. */
    e->p_max_attempt = 1;
    memcpy(id_of(e), mid->s, mid->n);
    memcpy(fps_of(e), cfps(c), (size_t)c->nfp * 8);
    e->nfp = c->nfp;
    for (uint8_t g = 0; g < c->ngroups && g < si->n; g++) {
        Slot *sl = &slots_of(e)[e->nslots++];
        memset(sl, 0, sizeof *sl);
        sl->gid = (uint16_t)si->gids[g];
        sl->cls = CLS_DELIVERED;
        sl->n = sl->ok = sl->max_attempt = 1;
        double ok = cok_at(c)[g]; /* NaN from a checkpoint written before it was kept */
        sl->first_ts = sl->first_ok = isnan(ok) ? c->t0 : ok;
        sl->flags = SL_ACKED | SL_PANY | SL_LATENCY;
        sl->latency = ok - c->t0; /* observed at the verdict already: for the verdict row */
    }
    M->compact_bytes -= compact_size(c->nfp, c->ngroups);
    compact_remove_at(M, cj);
    c->dead = 1; /* freed when the stream's FIFO reaches it */
    int found;
    uint32_t j = table_find(M, e->sid, mid->s, mid->n, e->hash, &found);
    int64_t idx = entry_insert(M, e, j);
    if (idx < 0 || schedule(M, (uint32_t)idx)) return -1;
    return idx;
}

/* Forgets the compact entries whose time has come, front first, stream by stream. */
static void expire_compacts(Machine *M, double now, double watermark) {
    for (uint32_t sid = 0; sid < M->streams.n; sid++) {
        StreamInfo *si = &M->sinfo[sid];
        double wait = si->deadline + M->settle + M->remember;
        while (si->fifo_head < si->fifo_n) {
            Compact *c = si->fifo[si->fifo_head];
            if (!c->dead) {
                if (c->t0 + wait > now || c->r0 + M->settle + M->remember > watermark) break;
                /* found by pointer: the id itself is gone */
                uint32_t k = (uint32_t)c->hash & M->cmask;
                while (M->ctable[k] && M->ctable[k] != c) k = (k + 1) & M->cmask;
                if (M->ctable[k] == c) compact_remove_at(M, k);
                M->compact_bytes -= compact_size(c->nfp, c->ngroups);
                M->evicted++;
            }
            free(c);
            si->fifo[si->fifo_head++] = NULL;
        }
        if (si->fifo_head == si->fifo_n) si->fifo_head = si->fifo_n = 0;
    }
}

/* ---------------------------------------------------------------- applying */

static int stream_expects(StreamInfo *si, uint32_t gid) {
    for (uint32_t g = 0; g < si->n; g++)
        if (si->gids[g] == gid) return 1;
    return 0;
}

int64_t stream_index(Machine *M, const Str *s) {
    int64_t sid = dict_get(&M->streams, s->s, s->n, 1);
    if (sid < 0) return -1;
    if ((uint32_t)sid >= M->sinfo_cap) {
        uint64_t cap = M->sinfo_cap ? M->sinfo_cap * 2ull : 16;
        while (cap <= (uint64_t)sid) cap *= 2;
        if (cap > UINT32_MAX) return -1;
        StreamInfo *si = realloc(M->sinfo, (size_t)cap * sizeof(StreamInfo));
        if (!si) return -1;
        for (uint32_t i = M->sinfo_cap; i < cap; i++) {
            memset(&si[i], 0, sizeof si[i]);
            si[i].deadline = M->default_deadline;
        }
        M->sinfo = si;
        M->sinfo_cap = (uint32_t)cap;
    }
    return sid;
}

/* 1: added, 0: expected already, -1: failed (the reason set for a limit). */
int expect_group(Machine *M, uint32_t sid, uint32_t gid) {
    StreamInfo *si = &M->sinfo[sid];
    if (stream_expects(si, gid)) return 0;
    if (gid > MC_MAX_GROUPS)
        return mc_fail(M, MC_ESTATE, "more than %u consumer groups in all", MC_MAX_GROUPS);
    if (si->n >= MC_MAX_GROUPS_PER_STREAM)
        return mc_fail(M, MC_ESTATE, "stream '%.*s' has %u consumer groups, the limit of groups per stream",
                       (int)M->streams.lens[sid], M->streams.names[sid], MC_MAX_GROUPS_PER_STREAM);
    if (grow(&si->gids, &si->cap, si->n, sizeof(uint32_t), 4)) return -1;
    si->gids[si->n++] = gid;
    return 1;
}

static int touch(Machine *M, uint32_t idx) {
    if (grow(&M->touched, &M->touched_cap, M->ntouched, sizeof(uint32_t), 4096)) return -1;
    M->touched[M->ntouched++] = idx;
    return 0;
}

/* Where a record's id is: its stream, key hash and table position. */
typedef struct {
    int64_t sid;
    uint64_t h;
    uint32_t j;
    int found;
} Place;

static int place_of(Machine *M, const Rec *r, Place *at) {
    at->sid = r->sid >= 0 ? r->sid : stream_index(M, &r->text[F_STREAM]);
    if (at->sid < 0) return -1;
    const Str *mid = &r->text[F_MESSAGE_ID];
    at->h = key_hash((uint32_t)at->sid, mid->s, mid->n);
    at->j = table_find(M, (uint32_t)at->sid, mid->s, mid->n, at->h, &at->found);
    return 0;
}

/* What makes two records of one id the same: the record id when set, else
 * every field (hex ids compared without case, as the contract says). The
 * fields are laid out in one buffer, each with its length, and hashed once.
 * Text fields are at most MC_MAX_TEXT_BYTES (the body reader refuses more). */
static uint64_t fingerprint(const Rec *r) {
    const Str *rid = &r->text[F_RECORD_ID];
    if (!rid->nil) return hash_bytes(rid->s, rid->n, 0x7265636F72646964ULL);
    static const int fields[] = {F_KIND, F_GROUP, F_OUTCOME, F_PRODUCER, F_TRACE_ID, F_SPAN_ID};
    uint8_t buf[sizeof fields / sizeof fields[0] * (4 + MC_MAX_TEXT_BYTES) + 33];
    size_t n = 0;
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        const Str *s = &r->text[fields[k]];
        uint32_t len = s->nil ? 0xFFFFFFFFu : s->n;
        if (!s->nil && len > MC_MAX_TEXT_BYTES) len = MC_MAX_TEXT_BYTES;
        memcpy(buf + n, &len, 4);
        n += 4;
        if (s->nil) continue;
        int hex = fields[k] == F_TRACE_ID || fields[k] == F_SPAN_ID;
        for (uint32_t i = 0; i < len; i++) {
            uint8_t ch = s->s[i];
            buf[n++] = (hex && ch >= 'A' && ch <= 'F') ? (uint8_t)(ch + 32) : ch;
        }
    }
    double ts = r->ts == 0.0 ? 0.0 : r->ts; /* -0.0 and 0.0 are one value */
    uint64_t tail[3] = {0, (uint64_t)r->attempt, r->has_seq ? (uint64_t)r->seq : 0};
    memcpy(&tail[0], &ts, 8);
    memcpy(buf + n, tail, sizeof tail);
    n += sizeof tail;
    buf[n++] = (uint8_t)r->has_seq;
    /* the error class only when set: a record without one hashes as before it existed
     * (checkpoints hold fingerprints) */
    if (r->error) buf[n++] = r->error;
    return hash_bytes(buf, n, 0x6669656C64730000ULL);
}

/* Folds one record into its entry (found at `at`). */
static int apply_record(Machine *M, const Rec *r, double received_at, const Place *at) {
    int64_t sid = at->sid;
    const Str *mid = &r->text[F_MESSAGE_ID];
    uint64_t h = at->h;
    int found = at->found;
    uint32_t j = at->j;
    int64_t idx;
    int64_t cj = found ? -1 : compact_find(M, (uint32_t)sid, mid->s, mid->n, h);
    if (cj >= 0) {
        /* a plain delivery in compact form: a resend changes nothing */
        uint64_t fp = fingerprint(r);
        Compact *c = M->ctable[cj];
        for (uint16_t k = 0; k < c->nfp; k++) {
            if (cfps(c)[k] == fp) {
                M->records++;
                M->repeats++;
                return 0;
            }
        }
        idx = reinflate(M, (uint32_t)cj, mid);
        if (idx < 0) return -1;
        found = 1;
    } else if (found) {
        idx = ((Entry *)M->table[j])->idx;
    } else {
        /* room for the usual: a slot per expected group, a produce and a consume each */
        uint16_t groups = (uint16_t)(M->sinfo[sid].n < 8 ? M->sinfo[sid].n : 8);
        Entry *e = entry_alloc(groups, (uint16_t)(1 + (groups ? groups : 1)), (uint16_t)mid->n);
        if (!e) return -1;
        e->hash = h;
        e->sid = (uint32_t)sid;
        e->t0 = INFINITY;
        e->r0 = received_at;
        memcpy(id_of(e), mid->s, mid->n);
        idx = entry_insert(M, e, j);
        if (idx < 0) return -1;
    }
    Entry *e = M->pool[idx];
    M->records++;
    uint64_t fp = fingerprint(r);
    if (fp_has(e, fp)) {
        M->repeats++;
        return 0;
    }
    if (fp_add(M, (uint32_t)idx, fp)) return -1;
    e = M->pool[idx];
    double old_due = found ? entry_due(M, e) : INFINITY;
    uint32_t attempt = r->attempt < 1 ? 1 : (r->attempt > 0xFFFFFFFFLL ? 0xFFFFFFFFu : (uint32_t)r->attempt);
    if (r->kind == K_PRODUCE) {
        /* after a verdict, a produce only adds its attempt (retried); t0 is frozen */
        uint32_t old_p = e->p_max_attempt, new_p = attempt > old_p ? attempt : old_p;
        Slot *ss = slots_of(e);
        for (uint16_t k = 0; k < e->nslots; k++) {
            if (ss[k].cls == CLS_PENDING) continue;
            int64_t before[MC_N_TALLY];
            e->p_max_attempt = old_p;
            counts_of(e, &ss[k], before);
            e->p_max_attempt = new_p;
            if (advance_slot(M, (uint32_t)idx, &ss[k], before)) return -1;
        }
        e->p_max_attempt = new_p;
        if (count_error(M, r, (uint32_t)sid, 0)) return -1;
        e->flags |= E_PANY;
        if (r->outcome == O_OK) e->flags |= E_ACKED;
        if (!(e->flags & E_T0_FROZEN) && r->ts < e->t0) e->t0 = r->ts;
    } else {
        const Str *g = &r->text[F_GROUP];
        int64_t gid = r->gid >= 0 ? r->gid : dict_get(&M->groups, g->s, g->n, 1);
        if (gid < 0) return -1;
        if (!r->expected && expect_group(M, (uint32_t)sid, (uint32_t)gid) < 0) return -1;
        Slot *s = find_slot(e, (uint32_t)gid);
        if (!s) {
            s = add_slot(M, (uint32_t)idx, (uint32_t)gid);
            if (!s) return -1;
            e = M->pool[idx];
        }
        if (count_error(M, r, (uint32_t)sid, (uint32_t)gid)) return -1;
        int64_t before[MC_N_TALLY];
        counts_of(e, s, before);
        s->n++;
        if (attempt > s->max_attempt) s->max_attempt = attempt;
        if (r->ts < s->first_ts) s->first_ts = r->ts;
        if (r->outcome == O_OK) {
            s->ok++;
            if (r->ts < s->first_ok) s->first_ok = r->ts;
        } else if (r->outcome == O_DEAD_LETTER) {
            s->flags |= SL_DL;
        } else {
            Pair *p = pair_of(M, (uint32_t)sid, (uint32_t)gid);
            if (!p) return -1;
            p->counts[MC_TALLY_CONSUME_ERRORS]++;
            p->dirty = 1;
        }
        if (s->cls != CLS_PENDING && advance_slot(M, (uint32_t)idx, s, before)) return -1;
    }
    if (entry_due(M, M->pool[idx]) < old_due && schedule(M, (uint32_t)idx)) return -1;
    return touch(M, (uint32_t)idx);
}

/* Copies a record's text, for a record that waits past its body. */
static int defer(Machine *M, const Rec *r, double received_at) {
    if (grow(&M->deferred, &M->deferred_cap, M->ndeferred, sizeof(Deferred), 256)) return -1;
    size_t bytes = 0;
    for (int f = 0; f < N_FIELDS; f++)
        if (!r->text[f].nil) bytes += r->text[f].n;
    Deferred *d = &M->deferred[M->ndeferred];
    d->r = *r;
    d->at = received_at;
    d->text = malloc(bytes ? bytes : 1);
    if (!d->text) return -1;
    size_t at = 0;
    for (int f = 0; f < N_FIELDS; f++) {
        if (r->text[f].nil) continue;
        memcpy(d->text + at, r->text[f].s, r->text[f].n);
        d->r.text[f].s = d->text + at;
        at += r->text[f].n;
    }
    M->ndeferred++;
    return 0;
}

/* ---------------------------------------------------------------- bodies */

static int same(const Str *a, const Str *b) { return a->n == b->n && memcmp(a->s, b->s, a->n) == 0; }

/* Whether a consume's (stream, group) fits the limits of groups, counting the
 * new pairs of the bodies checked so far (M->newg): 0, or -1 with the reason. */
static int group_fits(Machine *M, const Str *stream, const Str *group, const char *what, uint32_t index) {
    int64_t sid = dict_get(&M->streams, stream->s, stream->n, 0);
    int64_t gid = dict_get(&M->groups, group->s, group->n, 0);
    if (sid >= 0 && gid >= 0 && (uint32_t)sid < M->sinfo_cap && stream_expects(&M->sinfo[sid], (uint32_t)gid))
        return 0;
    size_t on_stream = 0, new_names = 0;
    int name_seen = 0;
    for (size_t k = 0; k < M->nnewg; k++) {
        NewGroup *ng = &M->newg[k];
        int s_same = same(&ng->stream, stream), g_same = same(&ng->group, group);
        if (s_same && g_same) return 0;
        on_stream += s_same;
        if (g_same) name_seen = 1;
        else if (dict_get(&M->groups, ng->group.s, ng->group.n, 0) < 0) new_names++;
    }
    uint64_t expected = sid >= 0 && (uint32_t)sid < M->sinfo_cap ? M->sinfo[sid].n : 0;
    if (expected + on_stream >= MC_MAX_GROUPS_PER_STREAM)
        return mc_fail(M, MC_EBODY,
                       "log body: %s %u: a new consumer group of stream '%.*s', which has the limit of %u groups",
                       what, index, (int)(stream->n > 64 ? 64 : stream->n), stream->s, MC_MAX_GROUPS_PER_STREAM);
    if (gid < 0 && !name_seen && (uint64_t)M->groups.n + new_names + 1 > (uint64_t)MC_MAX_GROUPS + 1)
        return mc_fail(M, MC_EBODY, "log body: %s %u: more than %u consumer groups in all", what, index, MC_MAX_GROUPS);
    if (grow(&M->newg, &M->newg_cap, M->nnewg, sizeof(NewGroup), 16)) return -1;
    M->newg[M->nnewg++] = (NewGroup){*stream, *group};
    return 0;
}

/* Reads a body whole, records into M->scratch, checking everything that would
 * stop it half-way: 0, or -1 (MC_EBODY with the reason, or out of memory). */
static int read_body(Machine *M, const uint8_t *buf, size_t len, Body *b) {
    char err[LB_ERR];
    if (lb_open(b, buf, len, err)) return mc_fail(M, MC_EBODY, "%s", err);
    if (b->groups.p) { /* version 4: new groups as its consumes' would be, before them */
        Cursor g = b->groups;
        uint32_t n;
        Str stream, group;
        if (lb_groups_open(&g, &n, err)) return mc_fail(M, MC_EBODY, "%s", err);
        for (uint32_t i = 0; i < n; i++) {
            if (lb_group(&g, &stream, &group, i, err)) return mc_fail(M, MC_EBODY, "%s", err);
            if (group_fits(M, &stream, &group, "group", i)) return -1;
        }
    }
    if (b->count > M->scratch_cap) {
        size_t cap = M->scratch_cap ? M->scratch_cap : 256;
        while (cap < b->count) cap *= 2;
        Rec *s = realloc(M->scratch, cap * sizeof(Rec));
        if (!s) return -1;
        M->scratch = s;
        M->scratch_cap = cap;
    }
    Cursor c = b->records;
    /* A body's records name a few (stream, group) pairs: each is checked once,
     * the last few checked remembered (compared, not hashed). */
    enum { SEEN = 8 };
    const Rec *seen[SEEN];
    uint32_t nseen = 0;
    for (uint32_t i = 0; i < b->count; i++) {
        Rec *r = &M->scratch[i];
        if (lb_record(&c, r, i, err)) return mc_fail(M, MC_EBODY, "%s", err);
        /* the names looked up once, here, for apply too (indices never change) */
        int64_t sid = dict_get(&M->streams, r->text[F_STREAM].s, r->text[F_STREAM].n, 0);
        r->sid = sid >= 0 && (uint32_t)sid < M->sinfo_cap ? (int32_t)sid : -1;
        if (r->kind != K_CONSUME) continue;
        int64_t gid = dict_get(&M->groups, r->text[F_GROUP].s, r->text[F_GROUP].n, 0);
        r->gid = gid >= 0 ? (int32_t)gid : -1;
        r->expected = r->sid >= 0 && r->gid >= 0 && stream_expects(&M->sinfo[r->sid], (uint32_t)r->gid);
        if (r->expected) continue;
        uint32_t k = 0, n = nseen < SEEN ? nseen : SEEN;
        while (k < n && !(same(&seen[k]->text[F_GROUP], &r->text[F_GROUP]) &&
                          same(&seen[k]->text[F_STREAM], &r->text[F_STREAM])))
            k++;
        if (k < n) continue;
        if (group_fits(M, &r->text[F_STREAM], &r->text[F_GROUP], "record", i)) return -1;
        seen[nseen++ % SEEN] = r;
    }
    if (b->marks.p) {
        Cursor m = b->marks;
        uint32_t n;
        Mark mk;
        if (lb_marks_open(&m, &n, err)) return mc_fail(M, MC_EBODY, "%s", err);
        for (uint32_t i = 0; i < n; i++)
            if (lb_mark(&m, &mk, i, err)) return mc_fail(M, MC_EBODY, "%s", err);
    }
    if (b->runs.p) {
        Cursor c = b->runs;
        uint32_t n;
        Run run;
        int64_t seq;
        if (lb_runs_open(&c, &n, err)) return mc_fail(M, MC_EBODY, "%s", err);
        for (uint32_t i = 0; i < n; i++) {
            if (lb_run(&c, &run, i, err)) return mc_fail(M, MC_EBODY, "%s", err);
            for (uint32_t k = 0; k < run.count; k++)
                if (lb_run_seq(&c, &seq, i, k, err)) return mc_fail(M, MC_EBODY, "%s", err);
        }
    }
    return 0;
}

int mc_check(Machine *M, const uint8_t *body, size_t len) {
    begin(M);
    size_t before = M->nnewg; /* the new groups of earlier bodies checked together stay */
    Body b;
    int rc = read_body(M, body, len, &b);
    if (rc) M->nnewg = before;
    return result(M, rc);
}

/* The new groups counted by mc_check calls, forgotten (a new batch of bodies). */
void mc_check_reset(Machine *M) { M->nnewg = 0; }

/* The (stream, group) pairs new in the bodies checked since mc_check_reset, in
 * the order met (each once); they point into those bodies. */
size_t mc_checked_groups(const Machine *M, McName *stream, McName *group, size_t i) {
    if (i < M->nnewg) {
        *stream = (McName){(const char *)M->newg[i].stream.s, M->newg[i].stream.n};
        *group = (McName){(const char *)M->newg[i].group.s, M->newg[i].group.n};
    }
    return M->nnewg;
}

/* The records, runs and marks of a body read_body accepted, applied. */
static int apply_read(Machine *M, const Body *b, double received_at) {
    int rc = 0;
    /* Nothing can fail from here on but memory and the limits of the state. */
    if (b->groups.p) { /* version 4: expected, as a consume of each would make it */
        Cursor g = b->groups;
        uint32_t n;
        Str stream, group;
        char err[LB_ERR];
        rc = lb_groups_open(&g, &n, err);
        for (uint32_t i = 0; i < n && !rc; i++) {
            rc = lb_group(&g, &stream, &group, i, err);
            int64_t sid = rc ? -1 : stream_index(M, &stream);
            int64_t gid = sid < 0 ? -1 : dict_get(&M->groups, group.s, group.n, 1);
            if (gid < 0 || expect_group(M, (uint32_t)sid, (uint32_t)gid) < 0) rc = -1;
        }
    }
    for (uint32_t i = 0; i < b->count && !rc; i++) {
        Rec *r = &M->scratch[i];
        Place at;
        if (place_of(M, r, &at)) { rc = -1; break; }
        /* the seq is checked whatever becomes of the record (a resend, deferred) */
        if (b->record_seqs && seq_record(M, r, (uint32_t)at.sid, received_at)) { rc = -1; break; }
        /* an id not in memory whose verdict is in the store waits to be loaded */
        if (!at.found && M->known_n && known_has(M, at.h)) rc = defer(M, r, received_at);
        else rc = apply_record(M, r, received_at, &at);
    }
    /* a slice's runs (version 3): the sequence state alone, before the marks, as
     * a whole body's records come before its marks */
    if (!rc && b->runs.p) {
        Cursor runs = b->runs;
        rc = seq_runs(M, &runs, received_at);
    }
    if (!rc && b->marks.p) {
        Cursor m = b->marks;
        rc = seq_marks(M, &m, received_at);
    }
    return rc;
}

int mc_apply(Machine *M, const uint8_t *body, size_t len, double received_at, uint32_t *records) {
    begin(M);
    M->nnewg = 0;
    Body b;
    int rc = read_body(M, body, len, &b);
    M->nnewg = 0;
    if (rc) return result(M, rc);
    rc = apply_read(M, &b, received_at);
    if (!rc) *records = b.count;
    if (!rc && !M->ndeferred) rc = judge_touched(M);
    return result(M, rc);
}

static int advance(Machine *M, double now, double watermark);

int mc_feed(Machine *M, const uint8_t *body, size_t len, double received_at, double now, uint32_t *records,
            int *state) {
    begin(M);
    M->nnewg = 0;
    *state = MC_FEED_JUDGED;
    Body b;
    int rc = read_body(M, body, len, &b);
    if (rc) {
        M->nnewg = 0;
        return result(M, rc);
    }
    if (M->nnewg) { /* left for mc_checked_groups until the next call */
        *state = MC_FEED_NEW_GROUPS;
        return MC_OK;
    }
    rc = apply_read(M, &b, received_at);
    if (rc) return result(M, rc);
    *records = b.count;
    if (M->ndeferred) {
        *state = MC_FEED_DEFERRED;
        return MC_OK;
    }
    return result(M, advance(M, now, now));
}

int mc_deferred_count(const Machine *M, size_t *n) {
    *n = M->ndeferred;
    return MC_OK;
}

int mc_deferred_key(const Machine *M, size_t i, McName *stream, McName *id) {
    const Rec *r = &M->deferred[i].r;
    *stream = (McName){(const char *)r->text[F_STREAM].s, r->text[F_STREAM].n};
    *id = (McName){(const char *)r->text[F_MESSAGE_ID].s, r->text[F_MESSAGE_ID].n};
    return MC_OK;
}

int mc_apply_deferred(Machine *M, size_t *applied) {
    begin(M);
    size_t n = M->ndeferred;
    int rc = 0;
    size_t i = 0;
    for (; i < n && !rc; i++) {
        Place at; /* looked up again: install() or an earlier record made the entry */
        rc = place_of(M, &M->deferred[i].r, &at) || apply_record(M, &M->deferred[i].r, M->deferred[i].at, &at);
    }
    for (size_t k = 0; k < n; k++) free(M->deferred[k].text);
    M->ndeferred = 0;
    *applied = n;
    if (!rc) rc = judge_touched(M);
    return result(M, rc);
}

/* ---------------------------------------------------------------- install */

size_t mc_install_begin(Machine *M) { return M->ntouched; }

int mc_install_row(Machine *M, const McInstallRow *row) {
    begin(M);
    if (row->cls < CLS_DELIVERED || row->cls > CLS_NONE) {
        mc_fail(M, MC_ESTATE, "unknown class %d", row->cls);
        return result(M, -1);
    }
    if (row->id.n > MC_MAX_TEXT_BYTES) {
        mc_fail(M, MC_ESTATE, "a stored id of %u bytes, past the limit of %u", row->id.n, MC_MAX_TEXT_BYTES);
        return result(M, -1);
    }
    /* rows come from the store: what a checkpoint would refuse, install refuses too */
    if (row->ok > row->n || !isfinite(row->deadline) || (row->has_t0 && !isfinite(row->t0))) {
        mc_fail(M, MC_ESTATE, "a stored verdict of id '%.*s' that cannot be (ok %llu of %llu, deadline %g)",
                (int)(row->id.n > 64 ? 64 : row->id.n), row->id.s, (unsigned long long)row->ok,
                (unsigned long long)row->n, row->deadline);
        return result(M, -1);
    }
    Str st = {(const uint8_t *)row->stream.s, row->stream.n, 0};
    int64_t sid = stream_index(M, &st);
    int64_t gid = dict_get(&M->groups, (const uint8_t *)row->group.s, row->group.n, 1);
    if (sid < 0 || gid < 0) return result(M, -1);
    if (gid > MC_MAX_GROUPS) {
        mc_fail(M, MC_ESTATE, "more than %u consumer groups in all", MC_MAX_GROUPS);
        return result(M, -1);
    }
    const uint8_t *mid = (const uint8_t *)row->id.s;
    uint32_t mn = row->id.n;
    uint64_t h = key_hash((uint32_t)sid, mid, mn);
    int found;
    uint32_t j = table_find(M, (uint32_t)sid, mid, mn, h, &found);
    int64_t idx;
    if (found) {
        idx = ((Entry *)M->table[j])->idx;
    } else {
        Entry *e = entry_alloc(0, 2, (uint16_t)mn);
        if (!e) return result(M, -1);
        e->hash = h;
        e->sid = (uint32_t)sid;
        e->t0 = INFINITY;
        e->r0 = -INFINITY;
        e->flags = E_PERSISTED | E_LOADED;
        memcpy(id_of(e), mid, mn);
        idx = entry_insert(M, e, j);
        if (idx < 0 || schedule(M, (uint32_t)idx)) return result(M, -1);
    }
    Entry *e = M->pool[idx];
    if (find_slot(e, (uint32_t)gid)) return MC_OK;
    Slot *s = add_slot(M, (uint32_t)idx, (uint32_t)gid);
    if (!s) return result(M, -1);
    e = M->pool[idx];
    if (row->pany) e->flags |= E_PANY;
    if (row->acked) e->flags |= E_ACKED;
    if (row->has_t0) {
        e->t0 = row->t0;
        e->flags |= E_T0_FROZEN; /* a verdict used it */
        s->first_ts = e->t0;
    } else {
        s->first_ts = row->deadline - deadline_of(M, (uint32_t)sid);
    }
    s->cls = (uint8_t)row->cls;
    s->n = row->n;
    s->ok = row->ok;
    s->max_attempt = row->max_attempt;
    s->flags = (row->acked ? SL_ACKED : 0) | (row->pany ? SL_PANY : 0) | (row->late ? SL_LATE : 0) |
               (row->dl ? SL_DL : 0);
    if (row->has_latency || (row->acked && row->ok > 0)) { /* an acknowledged delivery had its latency */
        s->flags |= SL_LATENCY;
        s->latency = row->has_latency ? row->latency : NAN;
    }
    return result(M, touch(M, (uint32_t)idx));
}

int mc_install_finish(Machine *M, size_t mark) {
    begin(M);
    /* An expected group without a row had the plain delivery (see is_kept). */
    for (size_t t = mark; t < M->ntouched; t++) {
        uint32_t idx = M->touched[t];
        Entry *e = M->pool[idx];
        if (!e || !(e->flags & E_ACKED)) continue;
        StreamInfo *si = &M->sinfo[e->sid];
        for (uint32_t g = 0; g < si->n; g++) {
            if (find_slot(M->pool[idx], si->gids[g])) continue;
            Slot *s = add_slot(M, idx, si->gids[g]);
            if (!s) return result(M, -1);
            s->cls = CLS_DELIVERED;
            s->n = s->ok = s->max_attempt = 1;
            s->first_ts = s->first_ok = M->pool[idx]->t0;
            s->flags = SL_ACKED | SL_PANY | SL_LATENCY;
            s->latency = NAN; /* observed then, not known now; never observed again */
        }
    }
    return MC_OK;
}

/* ---------------------------------------------------------------- advance */

static int advance(Machine *M, double now, double watermark) {
    if (judge_touched(M)) return -1;
    Heap *rh = &M->receipt_heap;
    /* ids waiting on the receipt watermark go back to the due heap */
    while (rh->n && rh->items[0].due <= watermark) {
        Timer t = heap_pop(rh);
        Entry *e = M->pool[t.idx];
        if (!e || e->gen != t.gen) continue;
        if (schedule(M, t.idx)) return -1;
    }
    Heap *h = &M->due_heap;
    while (h->n && h->items[0].due <= now) {
        Timer t = heap_pop(h);
        Entry *e = M->pool[t.idx];
        if (!e || e->gen != t.gen) continue;
        double due = entry_due(M, e);
        if (t.due > due) continue; /* stale: an earlier timer was set since */
        if (due > now) {
            if (schedule(M, t.idx)) return -1;
            continue;
        }
        double rd = receipt_due(M, e);
        if (rd > watermark) {
            if (heap_push(rh, rd, t.idx, e->gen)) return -1;
            continue;
        }
        if (judge_due(M, t.idx, now, watermark)) return -1;
    }
    expire_compacts(M, now, watermark);
    return seq_advance(M, watermark);
}

int mc_advance(Machine *M, double now, double watermark) {
    begin(M);
    return result(M, advance(M, now, watermark));
}

/* ---------------------------------------------------------------- drain */

int mc_drain(Machine *M, const McSink *sink) {
    begin(M);
    for (size_t i = 0; i < M->ndirty; i++) {
        uint32_t idx = (uint32_t)(M->dirty[i] >> 32), gen = (uint32_t)M->dirty[i];
        Entry *e = idx < M->pool_n ? M->pool[idx] : NULL;
        if (!e || e->gen != gen || !(e->flags & E_DIRTY)) continue;
        if (emit_verdicts(M, e)) return result(M, -1);
    }
    M->ndirty = 0;
    for (size_t i = 0; i < M->ngraveyard; i++) {
        if (emit_verdicts(M, M->graveyard[i])) return result(M, -1);
        entry_free(M->graveyard[i]);
        M->graveyard[i] = NULL;
    }
    M->ngraveyard = 0;
    int failed = 0;
    for (size_t i = 0; i < M->nvrows && !failed; i++) {
        M->vrows[i].v.id = M->arena + M->vrows[i].id_off;
        failed = sink->verdict(sink->ctx, &M->vrows[i].v);
    }
    M->nvrows = 0;
    M->arena_n = 0;
    for (uint32_t i = 0; i < M->npairs && !failed; i++) {
        Pair *p = &M->pairs[i];
        if (p->errors_dirty) {
            int produce = p->gid == PRODUCE_GID;
            failed = sink->errors(sink->ctx, p->sid, !produce, produce ? 0 : p->gid, p->errors);
            memset(p->errors, 0, sizeof p->errors);
            p->errors_dirty = 0;
            if (failed) break;
        }
        if (!p->dirty) continue;
        McPairOut out = {p->sid, p->gid, p->counts, p->latency_sum, p->hist, M->nbounds + 1,
                         p->bins.keys, p->bins.vals, p->bins.keys ? p->bins.mask + 1 : 0};
        failed = sink->pair(sink->ctx, &out);
        memset(p->counts, 0, sizeof p->counts);
        memset(p->hist, 0, ((size_t)M->nbounds + 1) * sizeof(int64_t));
        p->latency_sum = 0;
        mc_bins_free(&p->bins);
        p->dirty = 0;
    }
    if (!failed) failed = seq_drain(M, sink);
    if (failed) return mc_fail(M, MC_ECALLBACK, "an output callback failed"), MC_ECALLBACK;
    return MC_OK;
}

/* ---------------------------------------------------------------- in flight */

int mc_in_flight(Machine *M, int (*cb)(void *ctx, uint32_t sid, uint32_t gid, int64_t n, double oldest), void *ctx) {
    begin(M);
    /* counted per pair in a small table keyed by (sid, gid) */
    uint32_t mask = 63, np = 0;
    uint64_t *keys = calloc(mask + 1, sizeof(uint64_t)); /* (sid << 32 | gid) + 1, 0 empty */
    int64_t *counts = calloc(mask + 1, sizeof(int64_t));
    double *oldest = malloc((mask + 1) * sizeof(double)); /* the least t0, per pair */
    int rc = -1;
    if (!keys || !counts || !oldest) goto done;
    for (uint32_t idx = 0; idx < M->pool_n; idx++) {
        Entry *e = M->pool[idx];
        if (!e || !(e->flags & E_ACKED)) continue;
        StreamInfo *si = &M->sinfo[e->sid];
        for (uint32_t g = 0; g < si->n; g++) {
            Slot *s = find_slot(e, si->gids[g]);
            if (s && s->cls != CLS_PENDING) continue; /* judged: no longer in flight */
            uint64_t key = (((uint64_t)e->sid << 32) | si->gids[g]) + 1;
            uint32_t j = (uint32_t)mix64(key) & mask;
            while (keys[j] && keys[j] != key) j = (j + 1) & mask;
            if (!keys[j]) {
                keys[j] = key;
                oldest[j] = e->t0;
                np++;
            }
            counts[j]++;
            if (e->t0 < oldest[j]) oldest[j] = e->t0;
            if ((uint64_t)np * 2 > mask) {
                uint32_t m2 = mask * 2 + 1;
                uint64_t *k2 = calloc((size_t)m2 + 1, sizeof(uint64_t));
                int64_t *c2 = calloc((size_t)m2 + 1, sizeof(int64_t));
                double *o2 = malloc(((size_t)m2 + 1) * sizeof(double));
                if (!k2 || !c2 || !o2) { free(k2); free(c2); free(o2); goto done; }
                for (uint32_t i = 0; i <= mask; i++) {
                    if (!keys[i]) continue;
                    uint32_t k = (uint32_t)mix64(keys[i]) & m2;
                    while (k2[k]) k = (k + 1) & m2;
                    k2[k] = keys[i];
                    c2[k] = counts[i];
                    o2[k] = oldest[i];
                }
                free(keys);
                free(counts);
                free(oldest);
                keys = k2;
                counts = c2;
                oldest = o2;
                mask = m2;
            }
        }
    }
    rc = 0;
    for (uint32_t i = 0; i <= mask && !rc; i++) {
        if (!keys[i]) continue;
        uint64_t key = keys[i] - 1;
        if (cb(ctx, (uint32_t)(key >> 32), (uint32_t)key, counts[i], oldest[i])) {
            free(keys);
            free(counts);
            free(oldest);
            return mc_fail(M, MC_ECALLBACK, "an output callback failed"), MC_ECALLBACK;
        }
    }
done:
    free(keys);
    free(counts);
    free(oldest);
    return result(M, rc);
}

void mc_stats(const Machine *M, McStats *o) {
    memset(o, 0, sizeof *o);
    size_t table = (size_t)(M->mask + 1) * sizeof(uint32_t);
    size_t pool = (size_t)M->pool_cap * (sizeof(Entry *) + sizeof(uint32_t));
    size_t heaps = (M->due_heap.cap + M->receipt_heap.cap) * sizeof(Timer);
    size_t ctable = (size_t)(M->cmask + 1) * sizeof(Compact *), fifos = 0;
    for (uint32_t sid = 0; sid < M->streams.n; sid++) fifos += M->sinfo[sid].fifo_cap * sizeof(Compact *);
    o->records = M->records;
    o->repeats = M->repeats;
    o->judged = M->judged;
    o->evicted = M->evicted;
    o->in_memory = M->live;
    o->entry_bytes = M->entry_bytes + M->fpset_bytes;
    o->index_bytes = table + pool + heaps;
    o->known = M->known_n;
    o->compact = M->clive;
    o->compact_bytes = M->compact_bytes;
    o->compact_index_bytes = ctable + fifos;
    o->compacted = M->compacted;
    o->records_missing = M->missing;
    o->sequences = M->nseqs;
    o->open_holes = M->open_holes;
    o->sequence_bytes = M->seqs_cap * sizeof(SeqKey) + (size_t)(M->seq_mask + 1) * sizeof(uint32_t) +
                        M->hole_heap.cap * sizeof(Timer) + M->hole_slots * sizeof(Hole);
}

/* ------------------------------------------------------------ configuration */

int mc_configure(Machine *M, double deadline, double settle, double remember) {
    begin(M);
    M->remember = remember;
    for (uint32_t sid = 0; sid < M->streams.n; sid++)
        if (M->sinfo[sid].deadline == M->default_deadline) M->sinfo[sid].deadline = deadline;
    M->default_deadline = deadline;
    M->settle = settle;
    return MC_OK;
}

int mc_set_deadline(Machine *M, McName stream, double seconds) {
    begin(M);
    Str st = {(const uint8_t *)stream.s, stream.n, 0};
    int64_t sid = stream_index(M, &st);
    if (sid < 0) return result(M, -1);
    M->sinfo[sid].deadline = seconds;
    return MC_OK;
}

McName mc_stream_name(const Machine *M, uint32_t sid) { return (McName){M->streams.names[sid], M->streams.lens[sid]}; }
McName mc_group_name(const Machine *M, uint32_t gid) { return (McName){M->groups.names[gid], M->groups.lens[gid]}; }
uint32_t mc_nstreams(const Machine *M) { return M->streams.n; }
uint32_t mc_ngroups_of(const Machine *M, uint32_t sid) { return (uint32_t)M->sinfo[sid].n; }
uint32_t mc_group_of(const Machine *M, uint32_t sid, uint32_t k) { return M->sinfo[sid].gids[k]; }

/* ---------------------------------------------------------------- groups */

int mc_expect(Machine *M, McName stream, const McName *groups, uint32_t ngroups, uint32_t *added) {
    begin(M);
    *added = 0;
    Str st = {(const uint8_t *)stream.s, stream.n, 0};
    int64_t sid = stream_index(M, &st);
    if (sid < 0) return result(M, -1);
    uint32_t first = (uint32_t)M->sinfo[sid].n;
    for (uint32_t k = 0; k < ngroups; k++) {
        int64_t gid = dict_get(&M->groups, (const uint8_t *)groups[k].s, groups[k].n, 1);
        if (gid < 0) return result(M, -1);
        int got = expect_group(M, (uint32_t)sid, (uint32_t)gid);
        if (got < 0) return result(M, -1);
        *added += (uint32_t)got;
    }
    if (!*added) return MC_OK;
    /* one walk of the ids in memory for every group added */
    StreamInfo *si = &M->sinfo[sid];
    for (uint32_t idx = 0; idx < M->pool_n; idx++) {
        Entry *e = M->pool[idx];
        if (!e || e->sid != (uint32_t)sid || !(e->flags & E_PANY)) continue;
        int any = 0;
        for (uint32_t g = first; g < si->n; g++) {
            if (find_slot(M->pool[idx], si->gids[g])) continue;
            if (!add_slot(M, idx, si->gids[g])) return result(M, -1);
            any = 1;
        }
        if (any && schedule(M, idx)) return result(M, -1);
    }
    return MC_OK;
}

int mc_new_groups(Machine *M, const uint8_t *body, size_t len,
                  int (*cb)(void *ctx, McName stream, McName group), void *ctx) {
    begin(M);
    Body b;
    char err[LB_ERR];
    if (lb_open(&b, body, len, err)) return result(M, mc_fail(M, MC_EBODY, "%s", err));
    if (b.groups.p) { /* version 4: its groups first, as apply expects them first */
        Cursor g = b.groups;
        uint32_t n;
        Str stream, group;
        if (lb_groups_open(&g, &n, err)) return result(M, mc_fail(M, MC_EBODY, "%s", err));
        for (uint32_t i = 0; i < n; i++) {
            if (lb_group(&g, &stream, &group, i, err)) return result(M, mc_fail(M, MC_EBODY, "%s", err));
            int64_t sid = dict_get(&M->streams, stream.s, stream.n, 0);
            int64_t gid = dict_get(&M->groups, group.s, group.n, 0);
            if (sid >= 0 && gid >= 0 && (uint32_t)sid < M->sinfo_cap && stream_expects(&M->sinfo[sid], (uint32_t)gid))
                continue;
            McName s = {(const char *)stream.s, stream.n}, gn = {(const char *)group.s, group.n};
            if (cb(ctx, s, gn)) return mc_fail(M, MC_ECALLBACK, "an output callback failed"), MC_ECALLBACK;
        }
    }
    Cursor c = b.records;
    for (uint32_t i = 0; i < b.count; i++) {
        Rec r;
        if (lb_record(&c, &r, i, err)) return result(M, mc_fail(M, MC_EBODY, "%s", err));
        if (r.kind != K_CONSUME) continue;
        int64_t sid = dict_get(&M->streams, r.text[F_STREAM].s, r.text[F_STREAM].n, 0);
        int64_t gid = dict_get(&M->groups, r.text[F_GROUP].s, r.text[F_GROUP].n, 0);
        if (sid >= 0 && gid >= 0 && (uint32_t)sid < M->sinfo_cap && stream_expects(&M->sinfo[sid], (uint32_t)gid))
            continue;
        McName s = {(const char *)r.text[F_STREAM].s, r.text[F_STREAM].n};
        McName g = {(const char *)r.text[F_GROUP].s, r.text[F_GROUP].n};
        if (cb(ctx, s, g)) return mc_fail(M, MC_ECALLBACK, "an output callback failed"), MC_ECALLBACK;
    }
    return MC_OK;
}

/* ------------------------------------------------------------ backfill */
/* A group seen for the first time is owed every id produced on its stream
 * before it appeared. Ids still in memory get a slot (expect()); for the ones
 * already gone, the log is scanned: backfill_scan(body, stream) for every
 * body applied so far, then backfill_finish(stream, group) counts their
 * verdicts (lost if acknowledged: their deadline passed long ago). One pass
 * over the log may scan for several streams (backfill_scan of each body for
 * each), each then finished on its own. */

static void bf_reset(Machine *M) {
    for (uint32_t i = 0; i < M->bf_n; i++) free(M->bf_entries[i]);
    free(M->bf_entries);
    free(M->bf_table);
    free(M->bf_seen);
    M->bf_seen = NULL;
    M->bf_seen_mask = M->bf_seen_n = 0;
    M->bf_entries = NULL;
    M->bf_table = NULL;
    M->bf_n = M->bf_cap = 0;
    M->bf_mask = 0;
}

/* 1 when the scan met this record of this id before (a resend), else 0 and
 * it is noted; -1 when memory ran out. */
static int bf_seen_before(Machine *M, uint64_t id_hash, const Rec *r) {
    uint64_t key = mix64(id_hash ^ fingerprint(r));
    if (!key) key = 1;
    if (!M->bf_seen || M->bf_seen_n * 2 >= M->bf_seen_mask) {
        size_t mask = M->bf_seen ? M->bf_seen_mask * 2 + 1 : 4095;
        uint64_t *t = calloc(mask + 1, sizeof(uint64_t));
        if (!t) return -1;
        for (size_t i = 0; M->bf_seen && i <= M->bf_seen_mask; i++) {
            if (!M->bf_seen[i]) continue;
            size_t k = (size_t)M->bf_seen[i] & mask;
            while (t[k]) k = (k + 1) & mask;
            t[k] = M->bf_seen[i];
        }
        free(M->bf_seen);
        M->bf_seen = t;
        M->bf_seen_mask = mask;
    }
    size_t k = (size_t)key & M->bf_seen_mask;
    while (M->bf_seen[k]) {
        if (M->bf_seen[k] == key) return 1;
        k = (k + 1) & M->bf_seen_mask;
    }
    M->bf_seen[k] = key;
    M->bf_seen_n++;
    return 0;
}

static int bf_add(Machine *M, uint32_t sid, const Rec *r) {
    if (!M->bf_table) {
        M->bf_mask = 4095;
        M->bf_table = calloc(M->bf_mask + 1, sizeof(uint32_t));
        if (!M->bf_table) return -1;
    }
    const Str *mid = &r->text[F_MESSAGE_ID];
    uint64_t h = key_hash(sid, mid->s, mid->n);
    int found;
    table_find(M, sid, mid->s, mid->n, h, &found);
    if (found) return 0; /* in memory: expect() took care of it */
    int64_t cj = compact_find(M, sid, mid->s, mid->n, h);
    if (cj >= 0) return reinflate(M, (uint32_t)cj, mid) < 0 ? -1 : 0; /* it owes the group now */
    int seen = bf_seen_before(M, h, r);
    if (seen) return seen < 0 ? -1 : 0; /* a resend of a record met already: it changes nothing */
    uint32_t j = (uint32_t)h & M->bf_mask;
    Entry *e = NULL;
    while (M->bf_table[j]) {
        Entry *x = M->bf_entries[M->bf_table[j] - 1];
        if (x && x->hash == h && x->idlen == mid->n && memcmp(id_of(x), mid->s, mid->n) == 0) { e = x; break; }
        j = (j + 1) & M->bf_mask;
    }
    if (!e) {
        if (M->bf_n >= MC_MAX_IDS)
            return mc_fail(M, MC_ESTATE, "a back-fill of more than %u ids", MC_MAX_IDS);
        e = entry_alloc(0, 0, (uint16_t)mid->n);
        if (!e) return -1;
        e->hash = h;
        e->sid = sid;
        e->t0 = INFINITY;
        memcpy(id_of(e), mid->s, mid->n);
        if (M->bf_n == M->bf_cap) {
            uint32_t cap = M->bf_cap ? M->bf_cap * 2 : 1024;
            Entry **es = realloc(M->bf_entries, (size_t)cap * sizeof(Entry *));
            if (!es) { free(e); return -1; }
            M->bf_entries = es;
            M->bf_cap = cap;
        }
        M->bf_entries[M->bf_n++] = e;
        M->bf_table[j] = M->bf_n;
        if ((uint64_t)M->bf_n * 2 > M->bf_mask) {
            uint32_t mask = M->bf_mask * 2 + 1;
            uint32_t *t = calloc((size_t)mask + 1, sizeof(uint32_t));
            if (!t) return -1;
            for (uint32_t i = 0; i < M->bf_n; i++) {
                if (!M->bf_entries[i]) continue; /* finished: its stream's back-fill is over */
                uint32_t k = (uint32_t)M->bf_entries[i]->hash & mask;
                while (t[k]) k = (k + 1) & mask;
                t[k] = i + 1;
            }
            free(M->bf_table);
            M->bf_table = t;
            M->bf_mask = mask;
        }
    }
    e->flags |= E_PANY;
    if (r->outcome == O_OK) e->flags |= E_ACKED;
    if (r->ts < e->t0) e->t0 = r->ts;
    uint32_t attempt = r->attempt < 1 ? 1 : (uint32_t)(r->attempt > 0xFFFFFFFFLL ? 0xFFFFFFFFu : r->attempt);
    if (attempt > e->p_max_attempt) e->p_max_attempt = attempt;
    return 0;
}

int mc_backfill_scan(Machine *M, const uint8_t *body, size_t len, McName stream, uint32_t *produced) {
    begin(M);
    *produced = 0;
    int64_t sid = dict_get(&M->streams, (const uint8_t *)stream.s, stream.n, 0);
    if (sid < 0) return MC_OK;
    Body b;
    char err[LB_ERR];
    if (lb_open(&b, body, len, err)) return result(M, mc_fail(M, MC_EBODY, "%s", err));
    Cursor c = b.records;
    for (uint32_t i = 0; i < b.count; i++) {
        Rec r;
        if (lb_record(&c, &r, i, err)) return result(M, mc_fail(M, MC_EBODY, "%s", err));
        if (r.kind != K_PRODUCE) continue;
        if (r.text[F_STREAM].n != stream.n || memcmp(r.text[F_STREAM].s, stream.s, stream.n) != 0) continue;
        if (bf_add(M, (uint32_t)sid, &r)) return result(M, -1);
        (*produced)++;
    }
    return MC_OK;
}

int mc_backfill_finish(Machine *M, McName stream, const McName *groups, uint32_t ngroups, uint64_t *owed) {
    begin(M);
    *owed = 0;
    int64_t sid = dict_get(&M->streams, (const uint8_t *)stream.s, stream.n, 0);
    int rc = 0;
    for (uint32_t k = 0; k < ngroups && !rc; k++) {
        int64_t gid = dict_get(&M->groups, (const uint8_t *)groups[k].s, groups[k].n, 1);
        if (gid < 0) { rc = -1; break; }
        if (gid > MC_MAX_GROUPS) { rc = mc_fail(M, MC_ESTATE, "more than %u consumer groups in all", MC_MAX_GROUPS); break; }
        for (uint32_t i = 0; sid >= 0 && i < M->bf_n && !rc; i++) {
            Entry *e = M->bf_entries[i];
            if (!e || e->sid != (uint32_t)sid) continue; /* another stream's, or finished */
            Slot s0;
            memset(&s0, 0, sizeof s0);
            s0.gid = (uint16_t)gid;
            s0.first_ts = INFINITY;
            s0.first_ok = INFINITY;
            s0.flags = SL_PANY | ((e->flags & E_ACKED) ? SL_ACKED : 0);
            s0.cls = (e->flags & E_ACKED) ? CLS_LOST : CLS_NONE;
            int64_t zero[MC_N_TALLY] = {0}, after[MC_N_TALLY];
            counts_of(e, &s0, after);
            rc = add_delta(M, e->sid, (uint32_t)gid, zero, after) || verdict_row(M, e, &s0) || known_add(M, e->hash);
            if (!rc) (*owed)++;
        }
    }
    /* This stream's ids are done; other streams scanned in the same pass wait for
     * their own finish. The state is reset once none is left (or on a failure). */
    uint32_t left = 0;
    for (uint32_t i = 0; i < M->bf_n; i++) {
        Entry *e = M->bf_entries[i];
        if (!e) continue;
        if (!rc && sid >= 0 && e->sid == (uint32_t)sid) {
            free(e);
            M->bf_entries[i] = NULL;
        } else {
            left++;
        }
    }
    if (rc || !left) bf_reset(M);
    return result(M, rc);
}

/* ---------------------------------------------------------------- life */

int machine_init(Machine *M, double deadline, double settle, double remember, const double *bounds, uint32_t nbounds) {
    memset(M, 0, sizeof *M);
    M->remember = remember;
    M->default_deadline = deadline;
    M->settle = settle;
    M->sketch_gamma_log = log(MC_SKETCH_GAMMA);
    if (nbounds > MC_MAX_BUCKETS) return mc_fail(M, MC_ESTATE, "more than %u latency buckets", MC_MAX_BUCKETS);
    M->nbounds = nbounds;
    M->bounds = malloc(((size_t)nbounds + 1) * sizeof(double));
    if (!M->bounds) return -1;
    if (nbounds) memcpy(M->bounds, bounds, nbounds * sizeof(double));
    if (dict_init(&M->streams) || dict_init(&M->groups) || dict_init(&M->producers)) return -1;
    M->seq_mask = 63;
    M->seq_table = calloc(M->seq_mask + 1, sizeof(uint32_t));
    M->mask = 1023;
    M->table = calloc(M->mask + 1, sizeof(Entry *));
    M->cmask = 1023;
    M->ctable = calloc(M->cmask + 1, sizeof(Compact *));
    M->known_mask = 1023;
    M->known = calloc(M->known_mask + 1, 8);
    M->pair_mask = 63;
    M->pair_table = calloc(M->pair_mask + 1, sizeof(uint32_t));
    if (!M->table || !M->ctable || !M->known || !M->pair_table || !M->seq_table) return -1;
    return 0;
}

void machine_clear(Machine *M) {
    for (uint32_t i = 0; i < M->pool_n; i++) entry_free(M->pool[i]);
    free(M->pool);
    free(M->free_idx);
    free(M->table);
    free(M->due_heap.items);
    free(M->receipt_heap.items);
    free(M->known);
    for (uint32_t i = 0; i < M->npairs; i++) {
        free(M->pairs[i].hist);
        mc_bins_free(&M->pairs[i].bins);
    }
    free(M->pairs);
    free(M->pair_table);
    free(M->dirty);
    free(M->touched);
    for (size_t i = 0; i < M->ngraveyard; i++) entry_free(M->graveyard[i]);
    free(M->graveyard);
    for (size_t i = 0; i < M->ndeferred; i++) free(M->deferred[i].text);
    free(M->deferred);
    free(M->vrows);
    free(M->arena);
    free(M->scratch);
    free(M->newg);
    free(M->bounds);
    for (uint32_t i = 0; i < M->sinfo_cap; i++) {
        StreamInfo *si = &M->sinfo[i];
        for (size_t k = si->fifo_head; k < si->fifo_n; k++) free(si->fifo[k]);
        free(si->fifo);
        free(si->gids);
    }
    free(M->ctable);
    free(M->sinfo);
    bf_reset(M);
    dict_free(&M->streams);
    dict_free(&M->groups);
    for (size_t i = 0; i < M->nseqs; i++) free(M->seqs[i].holes);
    free(M->seqs);
    free(M->seq_table);
    free(M->hole_heap.items);
    free(M->seq_dirty);
    dict_free(&M->producers);
    memset(M, 0, sizeof *M);
}

Machine *mc_new(double deadline, double settle, double remember, const double *bounds, uint32_t nbounds) {
    Machine *M = malloc(sizeof *M);
    if (!M) return NULL;
    if (machine_init(M, deadline, settle, remember, bounds, nbounds)) {
        machine_clear(M);
        free(M);
        return NULL;
    }
    return M;
}

void mc_free(Machine *M) {
    if (!M) return;
    machine_clear(M);
    free(M);
}

int mc_dump(Machine *M, uint8_t **out, size_t *len) {
    begin(M);
    return result(M, checkpoint_dump(M, out, len));
}

int mc_load(Machine *M, const uint8_t *buf, size_t len) {
    begin(M);
    if (M->live || M->clive || M->streams.n || M->nseqs || M->known_n) {
        mc_fail(M, MC_ESTATE, "loads() needs a fresh machine");
        return result(M, -1);
    }
    /* Loaded into a machine of its own, swapped in whole: never half-loaded. */
    Machine *T = malloc(sizeof *T);
    if (!T) return result(M, -1);
    if (machine_init(T, M->default_deadline, M->settle, M->remember, M->bounds, M->nbounds)) {
        machine_clear(T);
        free(T);
        return result(M, -1);
    }
    int rc = checkpoint_load(T, buf, len);
    if (rc) {
        M->err_kind = T->err_kind ? T->err_kind : MC_ENOMEM;
        memcpy(M->err, T->err, sizeof M->err);
        if (!T->err_kind) snprintf(M->err, sizeof M->err, "out of memory");
        machine_clear(T);
        free(T);
        return M->err_kind;
    }
    Machine old = *M;
    *M = *T;
    *T = old;
    machine_clear(T);
    free(T);
    begin(M);
    return MC_OK;
}
