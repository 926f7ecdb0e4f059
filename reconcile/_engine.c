/* The reconcile engine's state machine, in C for throughput.
 *
 * State is keyed by (stream, message id): one entry per id in flight, holding
 * the produce side and one slot per consumer group. Records are folded into
 * their entry as they arrive; a slot is judged `delivered` as soon as the id
 * is acknowledged and the group has an ok delivery by the deadline, every
 * other slot once the id is due (deadline + settle, and settle past the
 * first receipt of the id). Judged slots keep their running aggregates until
 * the id is evicted at its due time, so later records move the tallies by
 * exactly what they change. The rules are the ones of docs/definitions.md;
 * `counts_of` below is the one place that says what a judged slot counts for.
 *
 * Python sees an `Engine` object: feed it log bodies (msgpack arrays written
 * by msgtally.ingest.intake.logbody), advance its clocks, drain what changed
 * (tally deltas, latency histograms and sketches, verdict rows of discrepant
 * ids), and serialize its whole state for a checkpoint.
 *
 * Everything here is deterministic given the same bodies and clocks in the
 * same order: recovery replays ticks after a checkpoint and must land on the
 * same state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ hashing */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* One multiply and one shift per 8 bytes, a full mix at the end: ids are
 * short, and this runs for every record. Not meant to resist a crafted input:
 * a sender can only make its own records look alike. */
static uint64_t hash_bytes(const uint8_t *p, size_t n, uint64_t seed) {
    uint64_t h = seed ^ (0x9E3779B97F4A7C15ULL * (n + 1));
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    return mix64(h ^ v ^ ((uint64_t)n << 59));
}

static inline uint64_t hash_u64(uint64_t v, uint64_t seed) { return mix64(seed ^ mix64(v + 0x632BE59BD9B4E019ULL)); }

/* Room for one more item in a growable array (doubling from `first`). */
static int grow(void *items_ptr, size_t *cap, size_t n, size_t size, size_t first) {
    void **items = (void **)items_ptr;
    if (n < *cap) return 0;
    size_t new_cap = *cap ? *cap * 2 : first;
    void *p = realloc(*items, new_cap * size);
    if (!p) return -1;
    *items = p;
    *cap = new_cap;
    return 0;
}

/* Open addressing with linear probing, for the two tables of ids (entries,
 * compact entries): arrays of pointers to structs whose first member is their
 * 64-bit hash; NULL is an empty place. */
static inline uint64_t hash_of(const void *item) { return *(const uint64_t *)item; }

static int ptable_grow(void ***table, uint32_t *mask) {
    uint32_t new_mask = *mask * 2 + 1;
    void **t = calloc((size_t)new_mask + 1, sizeof(void *));
    if (!t) return -1;
    for (uint32_t i = 0; i <= *mask; i++) {
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

/* ------------------------------------------------------------- log bodies */
/* A log body is msgpack: [2, marks, [record, ...]] (msgtally.ingest.intake.logbody),
 * each record a map from the field names of msgtally.ingest.intake.schema to their
 * values, as msgspec encodes the validated records (fields at their default
 * are left out); marks is nil, or the sender's sequence marks, each
 * [producer, stream, kind, group, last]. Bodies of version 1, [1, [record,
 * ...]], have no marks. */

enum { F_STREAM, F_KIND, F_MESSAGE_ID, F_TS, F_GROUP, F_ATTEMPT, F_OUTCOME, F_PRODUCER, F_SEQ,
       F_TRACE_ID, F_SPAN_ID, F_RECORD_ID, N_FIELDS };
static const char *FIELD_NAMES[N_FIELDS] = {"stream", "kind", "message_id", "ts", "group", "attempt",
                                            "outcome", "producer", "seq", "trace_id", "span_id", "record_id"};

typedef struct {
    const uint8_t *s;
    uint32_t n;
    int nil;
} Str;

typedef struct {
    Str text[N_FIELDS]; /* the text fields (others unused) */
    double ts;
    int64_t attempt, seq;
    int has_seq;
} Rec;

typedef struct {
    const uint8_t *p, *end;
} Cursor;

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* The size of a container: fix form (`fix` in the high nibble), 16 or 32 bits. */
static int mp_size(Cursor *c, uint8_t fix, uint8_t code16, uint32_t *n) {
    if (c->p >= c->end) return -1;
    uint8_t b = *c->p++;
    if ((b & 0xf0) == fix) { *n = b & 0x0f; return 0; }
    int len = b == code16 ? 2 : b == code16 + 1 ? 4 : 0;
    if (!len || c->end - c->p < len) return -1;
    *n = (uint32_t)be(c->p, len);
    c->p += len;
    return 0;
}

static int mp_array(Cursor *c, uint32_t *n) { return mp_size(c, 0x90, 0xdc, n); }
static int mp_map(Cursor *c, uint32_t *n) { return mp_size(c, 0x80, 0xde, n); }

static int mp_str(Cursor *c, Str *s) {
    if (c->p >= c->end) return -1;
    uint8_t b = *c->p++;
    uint32_t n;
    s->nil = 0;
    if (b == 0xc0) { s->nil = 1; s->s = NULL; s->n = 0; return 0; }
    if ((b & 0xe0) == 0xa0) n = b & 0x1f;
    else {
        int len = b == 0xd9 ? 1 : b == 0xda ? 2 : b == 0xdb ? 4 : 0;
        if (!len || c->end - c->p < len) return -1;
        n = (uint32_t)be(c->p, len);
        c->p += len;
    }
    if ((size_t)(c->end - c->p) < n) return -1;
    s->s = c->p;
    s->n = n;
    c->p += n;
    return 0;
}

/* An integer, a float or nil (*nil set). Floats are returned in *d, ints in *i. */
static int mp_number(Cursor *c, int64_t *i, double *d, int *is_float, int *nil) {
    if (c->p >= c->end) return -1;
    uint8_t b = *c->p++;
    *nil = 0;
    *is_float = 0;
    if (b <= 0x7f) { *i = b; return 0; }
    if (b >= 0xe0) { *i = (int8_t)b; return 0; }
    if (b == 0xc0) { *nil = 1; return 0; }
    int len;
    switch (b) {
        case 0xcb: {
            if (c->end - c->p < 8) return -1;
            uint64_t v = be(c->p, 8);
            memcpy(d, &v, 8);
            c->p += 8;
            *is_float = 1;
            return 0;
        }
        case 0xca: {
            if (c->end - c->p < 4) return -1;
            uint32_t v = (uint32_t)be(c->p, 4);
            float f;
            memcpy(&f, &v, 4);
            *d = f;
            c->p += 4;
            *is_float = 1;
            return 0;
        }
        case 0xcc: case 0xd0: len = 1; break;
        case 0xcd: case 0xd1: len = 2; break;
        case 0xce: case 0xd2: len = 4; break;
        case 0xcf: case 0xd3: len = 8; break;
        default: return -1;
    }
    if (c->end - c->p < len) return -1;
    uint64_t v = be(c->p, len);
    c->p += len;
    if (b >= 0xd0) { /* signed */
        int shift = 64 - 8 * len;
        *i = (int64_t)(v << shift) >> shift;
    } else {
        *i = (int64_t)v;
    }
    return 0;
}

/* Skips one value of any type: fields a newer writer added. */
static int mp_skip(Cursor *c, int depth) {
    if (c->p >= c->end || depth > 16) return -1;
    uint8_t b = *c->p;
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) { Str s; return mp_str(c, &s); }
    if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd) {
        uint32_t n;
        if (mp_array(c, &n)) return -1;
        for (uint32_t i = 0; i < n; i++) if (mp_skip(c, depth + 1)) return -1;
        return 0;
    }
    if ((b & 0xf0) == 0x80 || b == 0xde || b == 0xdf) {
        uint32_t n;
        if (mp_map(c, &n)) return -1;
        for (uint32_t i = 0; i < 2 * n; i++) if (mp_skip(c, depth + 1)) return -1;
        return 0;
    }
    if (b == 0xc2 || b == 0xc3) { c->p++; return 0; }
    int64_t i;
    double d;
    int isf, nil;
    return mp_number(c, &i, &d, &isf, &nil);
}

static int field_of(const Str *key) {
    int f;
    switch (key->n) { /* the names differ by length, but for a few */
        case 2: f = F_TS; break;
        case 3: f = F_SEQ; break;
        case 4: f = F_KIND; break;
        case 5: f = F_GROUP; break;
        case 6: f = F_STREAM; break;
        case 7: f = key->s[0] == 'a' ? F_ATTEMPT : key->s[0] == 'o' ? F_OUTCOME : F_SPAN_ID; break;
        case 8: f = key->s[0] == 'p' ? F_PRODUCER : F_TRACE_ID; break;
        case 9: f = F_RECORD_ID; break;
        case 10: f = F_MESSAGE_ID; break;
        default: return -1;
    }
    return memcmp(FIELD_NAMES[f], key->s, key->n) == 0 ? f : -1;
}

static int read_record(Cursor *c, Rec *r) {
    uint32_t n;
    if (mp_map(c, &n)) return -1;
    for (int f = 0; f < N_FIELDS; f++) {
        r->text[f].nil = 1;
        r->text[f].s = NULL;
        r->text[f].n = 0;
    }
    r->attempt = 1;
    r->has_seq = 0;
    r->seq = 0;
    int has_ts = 0;
    for (uint32_t k = 0; k < n; k++) {
        Str key;
        if (mp_str(c, &key) || key.nil) return -1;
        int f = field_of(&key);
        if (f < 0) { if (mp_skip(c, 0)) return -1; continue; }
        if (f == F_TS || f == F_ATTEMPT || f == F_SEQ) {
            int64_t iv = 0;
            double dv = 0;
            int isf, nil;
            if (mp_number(c, &iv, &dv, &isf, &nil)) return -1;
            if (nil) continue;
            if (f == F_TS) { r->ts = isf ? dv : (double)iv; has_ts = 1; }
            else if (f == F_ATTEMPT) r->attempt = isf ? (int64_t)dv : iv;
            else { r->has_seq = 1; r->seq = isf ? (int64_t)dv : iv; }
        } else if (mp_str(c, &r->text[f])) {
            return -1;
        }
    }
    if (!has_ts || r->text[F_STREAM].nil || r->text[F_KIND].nil || r->text[F_MESSAGE_ID].nil) return -1;
    return 0;
}

/* Opens a body at its records; *count is their number. With `marks`, it is
 * set to the body's marks (an array), or marks->p to NULL when the body has
 * none: its records' seqs are not checked. */
static int open_body(Cursor *c, uint32_t *count, Cursor *marks) {
    uint32_t n;
    int64_t version;
    double d;
    int isf, nil;
    if (marks) marks->p = NULL;
    if (mp_array(c, &n) || (n != 2 && n != 3)) return -1;
    if (mp_number(c, &version, &d, &isf, &nil) || isf || nil || version != n - 1) return -1;
    if (version == 2) {
        if (c->p >= c->end) return -1;
        if (*c->p == 0xc0) {
            c->p++;
        } else {
            Cursor at = *c;
            if (mp_skip(c, 0)) return -1;
            if (marks) { marks->p = at.p; marks->end = c->p; }
        }
    }
    return mp_array(c, count);
}

enum { K_PRODUCE = 0, K_CONSUME = 1 };
enum { O_OK = 0, O_ERROR = 1, O_DEAD_LETTER = 2 };

static int kind_of(const Str *s) { return (s->n && s->s[0] == 'c') ? K_CONSUME : K_PRODUCE; }

static int outcome_of(const Str *s) {
    if (s->nil || !s->n || s->s[0] == 'o') return O_OK;
    return s->s[0] == 'e' ? O_ERROR : O_DEAD_LETTER;
}

/* What makes two records of one id the same: the record id when set, else
 * every field (hex ids compared without case, as the contract says). The
 * fields are laid out in one buffer, each with its length, and hashed once. */
static uint64_t fingerprint(const Rec *r) {
    const Str *rid = &r->text[F_RECORD_ID];
    if (!rid->nil) return hash_bytes(rid->s, rid->n, 0x7265636F72646964ULL);
    static const int fields[] = {F_KIND, F_GROUP, F_OUTCOME, F_PRODUCER, F_TRACE_ID, F_SPAN_ID};
    uint8_t buf[sizeof fields / sizeof fields[0] * (4 + 1024) + 32];
    size_t n = 0;
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        const Str *s = &r->text[fields[k]];
        uint32_t len = s->nil ? 0xFFFFFFFFu : s->n;
        if (!s->nil && len > 1024) len = 1024; /* the contract caps text at 256 characters */
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
    return hash_bytes(buf, n, 0x6669656C64730000ULL);
}

/* ------------------------------------------------------------ dictionaries */
/* Stream and group names, interned to small integers. */

typedef struct {
    char **names;
    uint32_t *lens;
    PyObject **pystr;
    uint32_t n, cap;
    uint32_t *table; /* index + 1, 0 empty */
    uint32_t mask;
} Dict;

static int dict_init(Dict *d) {
    memset(d, 0, sizeof *d);
    d->mask = 63;
    d->table = calloc(d->mask + 1, sizeof(uint32_t));
    return d->table ? 0 : -1;
}

static void dict_free(Dict *d) {
    for (uint32_t i = 0; i < d->n; i++) {
        free(d->names[i]);
        Py_XDECREF(d->pystr[i]);
    }
    free(d->names);
    free(d->lens);
    free(d->pystr);
    free(d->table);
}

static int dict_grow_table(Dict *d) {
    uint32_t mask = d->mask * 2 + 1;
    uint32_t *t = calloc(mask + 1, sizeof(uint32_t));
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

/* The index of a name, added when new; -1 on memory failure. */
static int64_t dict_get(Dict *d, const uint8_t *s, uint32_t n, int add) {
    uint64_t h = hash_bytes(s, n, 0x64696374);
    uint32_t j = (uint32_t)h & d->mask;
    while (d->table[j]) {
        uint32_t i = d->table[j] - 1;
        if (d->lens[i] == n && memcmp(d->names[i], s, n) == 0) return i;
        j = (j + 1) & d->mask;
    }
    if (!add) return -2;
    if (d->n == d->cap) {
        uint32_t cap = d->cap ? d->cap * 2 : 16;
        char **names = realloc(d->names, cap * sizeof(char *));
        if (!names) return -1;
        d->names = names;
        uint32_t *lens = realloc(d->lens, cap * sizeof(uint32_t));
        if (!lens) return -1;
        d->lens = lens;
        PyObject **py = realloc(d->pystr, cap * sizeof(PyObject *));
        if (!py) return -1;
        d->pystr = py;
        d->cap = cap;
    }
    char *copy = malloc(n + 1);
    if (!copy) return -1;
    memcpy(copy, s, n);
    copy[n] = 0;
    uint32_t i = d->n++;
    d->names[i] = copy;
    d->lens[i] = n;
    d->pystr[i] = NULL;
    d->table[j] = i + 1;
    if (d->n * 2 > d->mask) {
        if (dict_grow_table(d)) return -1;
    }
    return i;
}

static PyObject *dict_str(Dict *d, uint32_t i) {
    if (!d->pystr[i]) {
        d->pystr[i] = PyUnicode_DecodeUTF8(d->names[i], d->lens[i], "surrogatepass");
        if (!d->pystr[i]) return NULL;
    }
    Py_INCREF(d->pystr[i]);
    return d->pystr[i];
}

/* ------------------------------------------------------------------ limits */
/* The collector refuses at its door what would pass these (msgtally.ingest.intake.limits
 * holds the same numbers; a test holds them together), so the engine never
 * meets a record it cannot apply. A group's index is 16 bits: the collector's
 * --max-series bound on (stream, group) names keeps the store's groups below
 * MAX_GROUPS. The slots of an entry (one per group of its stream) number at
 * most MAX_GROUPS_PER_STREAM, which their 16-bit counts hold. */
#define MAX_GROUPS 65535
#define MAX_GROUPS_PER_STREAM 1024

/* ------------------------------------------------------------------ entries */

enum { CLS_PENDING = 0, CLS_DELIVERED, CLS_LOST, CLS_RECOVERED, CLS_UNEXPECTED, CLS_NONE };
static const char *CLS_NAMES[] = {"pending", "delivered", "lost", "recovered", "unexpected", "none"};

/* Slot flags: state frozen at the verdict, and what the records showed. */
enum { SL_LATE = 1, SL_DL = 2, SL_ACKED = 4, SL_PANY = 8, SL_LATENCY = 16 };
/* Entry flags. */
enum { E_PANY = 1, E_ACKED = 2, E_T0_FROZEN = 4, E_DIRTY = 8, E_PERSISTED = 16, E_LOADED = 32 };

typedef struct {
    uint32_t n, ok, max_attempt; /* consume records, ok ones, highest attempt (this group) */
    uint16_t gid;
    uint8_t cls, flags;
    double first_ts; /* earliest consume ts: the deadline base of an unproduced id */
    double first_ok; /* earliest ok consume ts (INFINITY if none) */
    double latency;  /* observed latency, valid with SL_LATENCY */
} Slot;

typedef struct {
    uint64_t hash;
    double t0; /* earliest produce ts (INFINITY if none), frozen at the first verdict */
    double r0; /* receipt time of the first body that named the id */
    uint32_t p_max_attempt;
    uint32_t gen;
    uint32_t sid;
    uint32_t idx; /* in the pool */
    uint16_t nslots, slot_cap, nfp, fp_cap;
    uint16_t idlen;
    uint8_t flags;
    uint8_t _pad;
    /* followed by: Slot slots[slot_cap]; uint64_t fps[fp_cap]; char id[idlen] */
} Entry;

/* A plain delivery in its compact form: an id judged `delivered` for every
 * expected group, in time and once, never retried nor dead-lettered, needs no
 * more than this until it is forgotten: its key (two hashes: the id itself is
 * dropped), t0 and first receipt (when to forget it; the deadline of a group
 * that appears later), how many of the stream's groups it was delivered to,
 * and its records' fingerprints (a resend is still recognised). A record that
 * is not a resend turns it back into an entry (reinflate). */
typedef struct {
    uint64_t hash, hash2;
    double t0, r0;
    uint32_t sid;
    uint16_t nfp;
    uint8_t ngroups, dead;
    /* followed by uint64_t fps[nfp] */
} Compact;

static inline uint64_t *cfps(Compact *c) { return (uint64_t *)(c + 1); }

static inline Slot *slots_of(Entry *e) { return (Slot *)(e + 1); }
static inline uint64_t *fps_of(Entry *e) { return (uint64_t *)(slots_of(e) + e->slot_cap); }
static inline char *id_of(Entry *e) { return (char *)(fps_of(e) + e->fp_cap); }
static inline size_t entry_size(uint16_t slot_cap, uint16_t fp_cap, uint16_t idlen) {
    return sizeof(Entry) + (size_t)slot_cap * sizeof(Slot) + (size_t)fp_cap * 8 + idlen;
}

/* ------------------------------------------------------------- tallies */

enum { T_PRODUCED, T_DELIVERED, T_LOST, T_LATE, T_RECOVERED, T_UNEXPECTED, T_DUPLICATED, T_RETRIED,
       T_ATTEMPTS, T_DEAD_LETTERED, T_CONSUME_ERRORS, T_LATENCY_COUNT, N_TALLY };
static const char *TALLY_NAMES[N_TALLY] = {
    "produced", "delivered", "lost", "late", "recovered", "unexpected", "duplicated", "retried",
    "attempts", "dead_lettered", "consume_errors", "latency_count"};

typedef struct {
    int32_t *keys; /* sketch bin -> count, open addressing; key INT32_MIN is empty */
    int64_t *vals;
    uint32_t n, mask;
} BinMap;

typedef struct {
    uint32_t sid, gid;
    int dirty;
    int64_t counts[N_TALLY];
    double latency_sum;
    int64_t *hist; /* nbuckets + 1 (+Inf) */
    BinMap bins;
} Pair;

/* ------------------------------------------------------------- the engine */

typedef struct {
    double due;
    uint32_t idx, gen;
} Timer;

typedef struct {
    Timer *items;
    size_t n, cap;
} Heap;

typedef struct {
    uint32_t *gids;
    size_t n, cap;
    double deadline;
    /* compact entries of the stream in the order they were made: forgotten from the front */
    Compact **fifo;
    size_t fifo_head, fifo_n, fifo_cap;
} StreamInfo;

/* A run of seqs of one sequence not received yet. */
typedef struct {
    uint64_t lo, hi;
    double opened; /* receipt time of the body that showed it */
} Hole;

/* One sequence: a producer's records of one (stream, kind, group), numbered
 * from 1. Of [1, hw], it has received all but its holes. A hole below `top`
 * (the highest seq received) is shown by a record: its records were sent
 * before a later one, so they will not come (a sender sends in order); it is
 * missing once open for `settle`. A hole above `top` is announced by a mark:
 * its records may still wait in the sender's buffer, so it is missing once
 * open for the stream's deadline + settle, when the ids they belong to are
 * judged. A hole declared missing is forgotten: memory is the open holes. */
typedef struct {
    uint64_t hw;       /* every seq from 1 to hw was given to a record */
    uint64_t top;      /* the highest seq received */
    Hole *holes;       /* open, by seq; [0, nshown) below top, the rest above */
    double due;        /* when its live timer fires (INFINITY: none) */
    int64_t undrained; /* declared missing since the last drain */
    uint32_t pid, sid, nholes, nshown, hole_cap;
    uint32_t timer; /* the token of its live timer in hole_heap */
    uint16_t gid;   /* a consume's group (0 for a produce) */
    uint8_t kind, dirty;
} SeqKey;

typedef struct {
    PyObject_HEAD
    /* configuration */
    double default_deadline, settle, remember;
    double *bounds;
    uint32_t nbounds;
    double sketch_gamma_log;
    /* names */
    Dict streams, groups;
    StreamInfo *sinfo;
    uint32_t sinfo_cap;
    /* entries */
    Entry **pool;
    uint32_t *free_idx;
    uint32_t pool_n, pool_cap, nfree;
    void **table; /* the entries (ptable_*) */
    uint32_t mask, live;
    size_t entry_bytes;
    void **ctable; /* the compact entries (ptable_*) */
    uint32_t cmask, clive;
    size_t compact_bytes;
    uint64_t compacted;
    Heap due_heap, receipt_heap;
    /* ids with a persisted verdict (discrepant), by key hash */
    uint64_t *known;
    uint32_t known_mask, known_n;
    /* outputs since the last drain */
    Pair *pairs;
    uint32_t npairs, pairs_cap;
    uint32_t *pair_table, pair_mask;
    uint64_t *dirty; /* (idx << 32) | gen */
    size_t ndirty, dirty_cap;
    PyObject *verdicts; /* list of verdict rows */
    /* counters */
    uint64_t records, repeats, judged, evicted;
    /* touched entries in the current apply, for early verdicts */
    /* records of ids that have a verdict in the store and are not in memory:
     * applied once the store's rows are installed (apply_deferred) */
    Entry **graveyard; /* forgotten entries whose verdicts drain() still writes */
    size_t ngraveyard, graveyard_cap;
    Rec *deferred;
    double *deferred_at;
    size_t ndeferred, deferred_cap;
    PyObject *deferred_bodies; /* keeps the bodies the records point into alive */
    uint32_t *touched;
    size_t ntouched, touched_cap;
    /* backfill scratch */
    uint32_t *bf_table;
    uint32_t bf_mask, bf_n;
    Entry **bf_entries;
    uint32_t bf_cap;
    /* sequences (measurement loss): producer names, the sequences and their
     * table (index + 1, 0 empty), the timers of their first open holes (on
     * the receipt clock), the ones with missing records not drained yet */
    Dict producers;
    SeqKey *seqs;
    size_t nseqs, seqs_cap;
    uint32_t *seq_table, seq_mask;
    uint32_t seq_recent[16]; /* sequences of recent records, + 1, by seq_slot() */
    uint32_t seq_tokens;
    Heap hole_heap;
    uint32_t *seq_dirty;
    size_t nseq_dirty, seq_dirty_cap;
    uint64_t missing, open_holes; /* records declared missing; holes open now */
    size_t hole_slots;            /* room for holes, every sequence */
} Engine;

static inline double deadline_of(Engine *E, uint32_t sid) { return E->sinfo[sid].deadline; }

/* ----------------------------------------------------------------- heaps */

static int heap_push(Heap *h, double due, uint32_t idx, uint32_t gen) {
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

static Timer heap_pop(Heap *h) {
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

static int binmap_add(BinMap *m, int32_t key, int64_t v) {
    if (!m->keys) {
        m->mask = 63;
        m->keys = malloc((m->mask + 1) * sizeof(int32_t));
        m->vals = calloc(m->mask + 1, sizeof(int64_t));
        if (!m->keys || !m->vals) return -1;
        for (uint32_t i = 0; i <= m->mask; i++) m->keys[i] = INT32_MIN;
    }
    uint32_t j = (uint32_t)hash_u64((uint64_t)(int64_t)key, 7) & m->mask;
    while (m->keys[j] != INT32_MIN && m->keys[j] != key) j = (j + 1) & m->mask;
    if (m->keys[j] == INT32_MIN) {
        m->keys[j] = key;
        m->vals[j] = 0;
        m->n++;
    }
    m->vals[j] += v;
    if (m->n * 2 > m->mask) {
        uint32_t mask = m->mask * 2 + 1;
        int32_t *keys = malloc((mask + 1) * sizeof(int32_t));
        int64_t *vals = calloc(mask + 1, sizeof(int64_t));
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
    return 0;
}

static void binmap_clear(BinMap *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static Pair *pair_of(Engine *E, uint32_t sid, uint32_t gid) {
    uint64_t h = hash_u64(((uint64_t)sid << 32) | gid, 0x70616972);
    uint32_t j = (uint32_t)h & E->pair_mask;
    while (E->pair_table[j]) {
        Pair *p = &E->pairs[E->pair_table[j] - 1];
        if (p->sid == sid && p->gid == gid) return p;
        j = (j + 1) & E->pair_mask;
    }
    if (E->npairs == E->pairs_cap) {
        uint32_t cap = E->pairs_cap ? E->pairs_cap * 2 : 16;
        Pair *ps = realloc(E->pairs, cap * sizeof(Pair));
        if (!ps) return NULL;
        E->pairs = ps;
        E->pairs_cap = cap;
    }
    Pair *p = &E->pairs[E->npairs];
    memset(p, 0, sizeof *p);
    p->sid = sid;
    p->gid = gid;
    p->hist = calloc(E->nbounds + 1, sizeof(int64_t));
    if (!p->hist) return NULL;
    E->pair_table[j] = ++E->npairs;
    if (E->npairs * 2 > E->pair_mask) {
        uint32_t mask = E->pair_mask * 2 + 1;
        uint32_t *t = calloc(mask + 1, sizeof(uint32_t));
        if (!t) return NULL;
        for (uint32_t i = 0; i < E->npairs; i++) {
            uint64_t hh = hash_u64(((uint64_t)E->pairs[i].sid << 32) | E->pairs[i].gid, 0x70616972);
            uint32_t k = (uint32_t)hh & mask;
            while (t[k]) k = (k + 1) & mask;
            t[k] = i + 1;
        }
        free(E->pair_table);
        E->pair_table = t;
        E->pair_mask = mask;
    }
    return p;
}

/* The DDSketch bin of a latency: relative accuracy 1% (gamma = 1.01/0.99).
 * 0 for zero, negative bins mirror positive ones with an offset. */
#define SKETCH_GAMMA (1.01 / 0.99) /* relative accuracy 0.01: (g - 1) / (g + 1) */
#define SKETCH_OFFSET 100000 /* bins of |x| are offset so that 0 means zero itself */
static int32_t sketch_bin(Engine *E, double x) {
    if (x == 0.0) return 0;
    double a = fabs(x);
    if (a < 1e-9) a = 1e-9;
    int32_t i = (int32_t)ceil(log(a) / E->sketch_gamma_log) + SKETCH_OFFSET;
    return x > 0 ? i : -i;
}

static int observe_latency(Engine *E, Pair *p, double latency) {
    p->latency_sum += latency;
    uint32_t b = 0;
    while (b < E->nbounds && latency > E->bounds[b]) b++;
    p->hist[b]++;
    return binmap_add(&p->bins, sketch_bin(E, latency), 1);
}

/* What a judged slot counts for (docs/definitions.md). An unjudged slot counts nothing. */
static void counts_of(const Entry *e, const Slot *s, int64_t out[N_TALLY]) {
    memset(out, 0, sizeof(int64_t) * N_TALLY);
    if (s->cls == CLS_PENDING) return;
    int acked = (s->flags & SL_ACKED) != 0, pany = (s->flags & SL_PANY) != 0;
    uint32_t max_attempt = s->max_attempt > e->p_max_attempt ? s->max_attempt : e->p_max_attempt;
    out[T_PRODUCED] = acked;
    out[T_DELIVERED] = s->cls == CLS_DELIVERED;
    out[T_LOST] = s->cls == CLS_LOST;
    out[T_LATE] = (s->flags & SL_LATE) != 0;
    out[T_RECOVERED] = s->cls == CLS_RECOVERED;
    out[T_UNEXPECTED] = s->cls == CLS_UNEXPECTED;
    out[T_DUPLICATED] = (pany && s->ok > 1) ? s->ok - 1 : 0;
    out[T_RETRIED] = pany && max_attempt > 1;
    out[T_ATTEMPTS] = pany ? s->n : 0;
    out[T_DEAD_LETTERED] = acked && (s->flags & SL_DL);
    out[T_LATENCY_COUNT] = (s->flags & SL_LATENCY) != 0;
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
static int add_delta(Engine *E, uint32_t sid, uint32_t gid, const int64_t before[N_TALLY],
                     const int64_t after[N_TALLY]) {
    int any = 0;
    for (int k = 0; k < N_TALLY; k++) any |= before[k] != after[k];
    if (!any) return 0;
    Pair *p = pair_of(E, sid, gid);
    if (!p) return -1;
    for (int k = 0; k < N_TALLY; k++) p->counts[k] += after[k] - before[k];
    p->dirty = 1;
    return 0;
}

/* ------------------------------------------------------------- the id table */

static inline uint64_t key_hash(uint32_t sid, const uint8_t *id, uint32_t n) {
    return hash_bytes(id, n, hash_u64(sid, 0x6B6579));
}

static int table_grow(Engine *E) { return ptable_grow(&E->table, &E->mask); }

/* The table position of an id, or where it would go (*found says which). */
static uint32_t table_find(Engine *E, uint32_t sid, const uint8_t *id, uint32_t n, uint64_t h, int *found) {
    uint32_t j = (uint32_t)h & E->mask;
    while (E->table[j]) {
        Entry *e = E->table[j];
        if (e->hash == h && e->sid == sid && e->idlen == n && memcmp(id_of(e), id, n) == 0) {
            *found = 1;
            return j;
        }
        j = (j + 1) & E->mask;
    }
    *found = 0;
    return j;
}

static void table_remove_at(Engine *E, uint32_t j) { ptable_remove_at(E->table, E->mask, j); }

static Entry *entry_alloc(uint16_t slot_cap, uint16_t fp_cap, uint16_t idlen) {
    Entry *e = malloc(entry_size(slot_cap, fp_cap, idlen));
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->slot_cap = slot_cap;
    e->fp_cap = fp_cap;
    e->idlen = idlen;
    return e;
}

/* Puts a new entry into the pool and the table at position j. */
static int64_t entry_insert(Engine *E, Entry *e, uint32_t j) {
    uint32_t idx;
    if (E->nfree) {
        idx = E->free_idx[--E->nfree];
    } else {
        if (E->pool_n == E->pool_cap) {
            uint32_t cap = E->pool_cap ? E->pool_cap * 2 : 4096;
            Entry **pool = realloc(E->pool, cap * sizeof(Entry *));
            if (!pool) return -1;
            E->pool = pool;
            uint32_t *fi = realloc(E->free_idx, cap * sizeof(uint32_t));
            if (!fi) return -1;
            E->free_idx = fi;
            E->pool_cap = cap;
        }
        idx = E->pool_n++;
        E->pool[idx] = NULL;
    }
    static uint32_t gen_counter = 0;
    e->gen = ++gen_counter;
    e->idx = idx;
    E->pool[idx] = e;
    E->table[j] = e;
    E->live++;
    E->entry_bytes += entry_size(e->slot_cap, e->fp_cap, e->idlen);
    if (E->live * 10 > (E->mask + 1) * 7) {
        if (table_grow(E)) return -1;
    }
    return idx;
}

/* Grows an entry's arrays; the pool keeps pointing at it. */
static Entry *entry_resize(Engine *E, uint32_t idx, uint16_t slot_cap, uint16_t fp_cap) {
    Entry *old = E->pool[idx];
    Entry *e = entry_alloc(slot_cap, fp_cap, old->idlen);
    if (!e) return NULL;
    uint16_t keep_slot_cap = e->slot_cap, keep_fp_cap = e->fp_cap;
    memcpy(e, old, sizeof(Entry));
    e->slot_cap = keep_slot_cap;
    e->fp_cap = keep_fp_cap;
    memcpy(slots_of(e), slots_of(old), old->nslots * sizeof(Slot));
    memcpy(fps_of(e), fps_of(old), old->nfp * 8);
    memcpy(id_of(e), id_of(old), old->idlen);
    E->entry_bytes += entry_size(slot_cap, fp_cap, old->idlen) - entry_size(old->slot_cap, old->fp_cap, old->idlen);
    int found;
    uint32_t j = table_find(E, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) E->table[j] = e;
    free(old);
    E->pool[idx] = e;
    return e;
}

/* ------------------------------------------------------------ known (persisted) ids */

static int known_add(Engine *E, uint64_t h) {
    if (!h) h = 1;
    uint32_t j = (uint32_t)mix64(h) & E->known_mask;
    while (E->known[j]) {
        if (E->known[j] == h) return 0;
        j = (j + 1) & E->known_mask;
    }
    E->known[j] = h;
    E->known_n++;
    if (E->known_n * 2 > E->known_mask) {
        uint32_t mask = E->known_mask * 2 + 1;
        uint64_t *t = calloc((size_t)mask + 1, 8);
        if (!t) return -1;
        for (uint32_t i = 0; i <= E->known_mask; i++) {
            if (!E->known[i]) continue;
            uint32_t k = (uint32_t)mix64(E->known[i]) & mask;
            while (t[k]) k = (k + 1) & mask;
            t[k] = E->known[i];
        }
        free(E->known);
        E->known = t;
        E->known_mask = mask;
    }
    return 0;
}

static int known_has(Engine *E, uint64_t h) {
    if (!h) h = 1;
    uint32_t j = (uint32_t)mix64(h) & E->known_mask;
    while (E->known[j]) {
        if (E->known[j] == h) return 1;
        j = (j + 1) & E->known_mask;
    }
    return 0;
}

/* ------------------------------------------------------------- verdict rows */

static int mark_dirty(Engine *E, uint32_t idx) {
    Entry *e = E->pool[idx];
    if (e->flags & E_DIRTY) return 0;
    e->flags |= E_DIRTY;
    if (grow(&E->dirty, &E->dirty_cap, E->ndirty, 8, 256)) return -1;
    E->dirty[E->ndirty++] = ((uint64_t)idx << 32) | e->gen;
    return 0;
}

/* The row of one judged slot, as the verdicts table stores it. */
static PyObject *verdict_row(Engine *E, Entry *e, Slot *s) {
    double D = deadline_of(E, e->sid);
    double base = (s->flags & SL_PANY) ? e->t0 : s->first_ts;
    PyObject *stream = dict_str(&E->streams, e->sid);
    PyObject *group = dict_str(&E->groups, s->gid);
    if (!stream || !group) { Py_XDECREF(stream); Py_XDECREF(group); return NULL; }
    uint32_t max_attempt = s->max_attempt > e->p_max_attempt ? s->max_attempt : e->p_max_attempt;
    PyObject *t0 = (s->flags & SL_PANY) && isfinite(e->t0) ? PyFloat_FromDouble(e->t0) : (Py_INCREF(Py_None), Py_None);
    PyObject *lat = (s->flags & SL_LATENCY) && !isnan(s->latency) ? PyFloat_FromDouble(s->latency)
                                                                   : (Py_INCREF(Py_None), Py_None);
    PyObject *row = Py_BuildValue(
        "(NNNsiiiNdIIIiN)", stream, PyUnicode_DecodeUTF8(id_of(e), e->idlen, "surrogatepass"), group,
        CLS_NAMES[s->cls], (s->flags & SL_ACKED) != 0, (s->flags & SL_PANY) != 0, (s->flags & SL_LATE) != 0,
        t0, base + D, s->n, s->ok, max_attempt, (s->flags & SL_DL) != 0, lat);
    return row;
}

/* Emits the rows of an entry whose verdicts the store keeps; marks it known. */
static int emit_verdicts(Engine *E, Entry *e) {
    e->flags &= ~E_DIRTY;
    if (!(e->flags & E_PERSISTED) && !any_kept(e)) return 0;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++) {
        if (ss[k].cls == CLS_PENDING) continue;
        PyObject *row = verdict_row(E, e, &ss[k]);
        if (!row || PyList_Append(E->verdicts, row)) { Py_XDECREF(row); return -1; }
        Py_DECREF(row);
    }
    e->flags |= E_PERSISTED;
    return known_add(E, e->hash);
}

/* ---------------------------------------------------------------- judging */

static int is_plain(Engine *E, Entry *e);
static int compact(Engine *E, uint32_t idx);

static Slot *find_slot(Entry *e, uint32_t gid) {
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++)
        if (ss[k].gid == gid) return &ss[k];
    return NULL;
}

/* Adds an empty slot for a group; may move the entry. */
static Slot *add_slot(Engine *E, uint32_t idx, uint32_t gid) {
    Entry *e = E->pool[idx];
    if (e->nslots == e->slot_cap) {
        if (e->slot_cap >= MAX_GROUPS_PER_STREAM) return NULL; /* expect_group refused more */
        uint32_t cap = e->slot_cap ? (uint32_t)e->slot_cap * 2 : 1;
        if (cap > MAX_GROUPS_PER_STREAM) cap = MAX_GROUPS_PER_STREAM;
        e = entry_resize(E, idx, (uint16_t)cap, e->fp_cap);
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
static int judge_slot(Engine *E, uint32_t idx, Slot *s) {
    Entry *e = E->pool[idx];
    int pany = (e->flags & E_PANY) != 0, acked = (e->flags & E_ACKED) != 0;
    if (pany) e->flags |= E_T0_FROZEN;
    double D = deadline_of(E, e->sid);
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
    int64_t zero[N_TALLY] = {0}, after[N_TALLY];
    if (acked && s->ok > 0) {
        s->flags |= SL_LATENCY;
        s->latency = s->first_ok - e->t0;
    }
    counts_of(e, s, after);
    if (add_delta(E, e->sid, s->gid, zero, after)) return -1;
    if (s->flags & SL_LATENCY) {
        Pair *p = pair_of(E, e->sid, s->gid);
        if (!p || observe_latency(E, p, s->latency)) return -1;
    }
    E->judged++;
    if (is_reported(s) || (e->flags & E_PERSISTED)) return mark_dirty(E, idx);
    return 0;
}

/* A judged slot after more records: only what the rules let move. */
static int advance_slot(Engine *E, uint32_t idx, Slot *s, const int64_t before[N_TALLY]) {
    Entry *e = E->pool[idx];
    if (s->cls == CLS_NONE && s->ok > 0) s->cls = CLS_RECOVERED;
    if (s->cls == CLS_LOST && s->ok > 0) s->flags |= SL_LATE;
    int new_latency = 0;
    if (!(s->flags & SL_LATENCY) && (s->flags & SL_ACKED) && s->ok > 0) {
        s->flags |= SL_LATENCY;
        s->latency = s->first_ok - e->t0;
        new_latency = 1;
    }
    int64_t after[N_TALLY];
    counts_of(e, s, after);
    if (add_delta(E, e->sid, s->gid, before, after)) return -1;
    if (new_latency) {
        Pair *p = pair_of(E, e->sid, s->gid);
        if (!p || observe_latency(E, p, s->latency)) return -1;
    }
    int changed = 0;
    for (int k = 0; k < N_TALLY; k++) changed |= before[k] != after[k];
    if (changed && (is_reported(s) || (e->flags & E_PERSISTED))) return mark_dirty(E, idx);
    return 0;
}

/* The time an entry's next unjudged slot is due, or its eviction time. */
static int stream_expects(StreamInfo *si, uint32_t gid);
static Slot *find_slot(Entry *e, uint32_t gid);

/* Whether a produced id still owes an expected group its verdict. */
static int owes_verdict(Engine *E, Entry *e) {
    StreamInfo *si = &E->sinfo[e->sid];
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
static double entry_due(Engine *E, Entry *e) {
    /* an id loaded back from the store leaves with the tick that needed it */
    if ((e->flags & E_LOADED) && !owes_verdict(E, e)) return -INFINITY;
    double D = deadline_of(E, e->sid) + E->settle;
    if (e->flags & E_PANY) return e->t0 + D + (owes_verdict(E, e) ? 0 : E->remember);
    double last = -INFINITY, pending = INFINITY;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots; k++) {
        double d = ss[k].first_ts + D;
        if (d > last) last = d;
        if (ss[k].cls == CLS_PENDING && d < pending) pending = d;
    }
    return isfinite(pending) ? pending : last + E->remember;
}

/* The receipt watermark an entry waits for: settle past the first receipt of
 * the id before a verdict, and `remember` more before it is forgotten (a shim
 * resending a batch of old records must still find them). */
static double receipt_due(Engine *E, Entry *e) {
    if (e->flags & E_LOADED) return -INFINITY;
    int pending = (e->flags & E_PANY) ? owes_verdict(E, e) : 0;
    Slot *ss = slots_of(e);
    for (uint16_t k = 0; k < e->nslots && !pending; k++) pending = ss[k].cls == CLS_PENDING;
    return e->r0 + E->settle + (pending ? 0 : E->remember);
}

static int schedule(Engine *E, uint32_t idx) {
    Entry *e = E->pool[idx];
    return heap_push(&E->due_heap, entry_due(E, e), idx, e->gen);
}

/* Forgets an entry. One whose verdicts the store must keep waits in the
 * graveyard until drain() has written them. */
static int evict(Engine *E, uint32_t idx) {
    Entry *e = E->pool[idx];
    int found;
    uint32_t j = table_find(E, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) table_remove_at(E, j);
    E->entry_bytes -= entry_size(e->slot_cap, e->fp_cap, e->idlen);
    if ((e->flags & E_DIRTY) || (!(e->flags & E_PERSISTED) && any_kept(e))) {
        if (grow(&E->graveyard, &E->graveyard_cap, E->ngraveyard, sizeof(Entry *), 256)) return -1;
        E->graveyard[E->ngraveyard++] = e;
    } else {
        free(e);
    }
    E->pool[idx] = NULL;
    E->free_idx[E->nfree++] = idx;
    E->live--;
    E->evicted++;
    return 0;
}

/* Judges whatever of an entry is due at `now`; forgets it when nothing is left
 * and both clocks passed its `remember`. */
static int judge_due(Engine *E, uint32_t idx, double now, double watermark) {
    Entry *e = E->pool[idx];
    double D = deadline_of(E, e->sid) + E->settle;
    if (e->flags & E_PANY) {
        if (e->t0 + D <= now) {
            StreamInfo *si = &E->sinfo[e->sid];
            for (uint32_t g = 0; g < si->n; g++) {
                Slot *s = find_slot(E->pool[idx], si->gids[g]);
                if (!s) s = add_slot(E, idx, si->gids[g]);
                if (!s) return -1;
                if (s->cls == CLS_PENDING && judge_slot(E, idx, s)) return -1;
            }
            Slot *ss = slots_of(E->pool[idx]); /* loaded ids may hold groups judged long ago */
            for (uint16_t k = 0; k < E->pool[idx]->nslots; k++)
                if (ss[k].cls == CLS_PENDING && judge_slot(E, idx, &ss[k])) return -1;
        }
    } else {
        e = E->pool[idx];
        Slot *ss = slots_of(e);
        for (uint16_t k = 0; k < e->nslots; k++) {
            if (ss[k].cls == CLS_PENDING && ss[k].first_ts + D <= now && judge_slot(E, idx, &ss[k])) return -1;
        }
    }
    e = E->pool[idx];
    if (is_plain(E, e)) return compact(E, idx);
    if (entry_due(E, e) > now) return schedule(E, idx);
    double rd = receipt_due(E, e);
    if (rd > watermark) return heap_push(&E->receipt_heap, rd, idx, e->gen);
    return evict(E, idx);
}

/* Early verdicts: a group with an in-time ok delivery of an acknowledged id. */
static int judge_early(Engine *E, uint32_t idx) {
    Entry *e = E->pool[idx];
    if (!(e->flags & E_ACKED)) return 0;
    double limit = e->t0 + deadline_of(E, e->sid);
    int judged = 0;
    for (uint16_t k = 0; k < E->pool[idx]->nslots; k++) {
        Slot *s = &slots_of(E->pool[idx])[k];
        if (s->cls == CLS_PENDING && s->first_ok <= limit) {
            if (judge_slot(E, idx, s)) return -1;
            judged = 1;
        }
    }
    return judged && is_plain(E, E->pool[idx]) ? compact(E, idx) : 0;
}

/* ------------------------------------------------------------ compact entries */

static inline uint64_t key_hash2(uint32_t sid, const uint8_t *id, uint32_t n) {
    return hash_bytes(id, n, hash_u64(sid, 0x636F6D70616374ULL));
}

static int ctable_grow(Engine *E) { return ptable_grow(&E->ctable, &E->cmask); }

/* The position of an id's compact entry, or -1. */
static int64_t compact_find(Engine *E, uint32_t sid, const uint8_t *id, uint32_t n, uint64_t h) {
    if (!E->clive) return -1;
    uint32_t j = (uint32_t)h & E->cmask;
    uint64_t h2 = 0;
    int have_h2 = 0;
    while (E->ctable[j]) {
        Compact *c = E->ctable[j];
        if (c->hash == h && c->sid == sid) {
            if (!have_h2) { h2 = key_hash2(sid, id, n); have_h2 = 1; }
            if (c->hash2 == h2) return j;
        }
        j = (j + 1) & E->cmask;
    }
    return -1;
}

static void compact_remove_at(Engine *E, uint32_t j) {
    ptable_remove_at(E->ctable, E->cmask, j);
    E->clive--;
}

static int compact_insert(Engine *E, Compact *c) {
    uint32_t j = (uint32_t)c->hash & E->cmask;
    while (E->ctable[j]) j = (j + 1) & E->cmask;
    E->ctable[j] = c;
    E->clive++;
    E->compact_bytes += sizeof(Compact) + (size_t)c->nfp * 8;
    if (E->clive * 10 > (E->cmask + 1) * 7 && ctable_grow(E)) return -1;
    StreamInfo *si = &E->sinfo[c->sid];
    if (si->fifo_head > 1024 && si->fifo_head * 2 > si->fifo_n) { /* reuse the front's room */
        memmove(si->fifo, si->fifo + si->fifo_head, (si->fifo_n - si->fifo_head) * sizeof(Compact *));
        si->fifo_n -= si->fifo_head;
        si->fifo_head = 0;
    }
    if (grow(&si->fifo, &si->fifo_cap, si->fifo_n, sizeof(Compact *), 256)) return -1;
    si->fifo[si->fifo_n++] = c;
    return 0;
}

/* Whether an entry is a plain delivery for every expected group of its stream. */
static int is_plain(Engine *E, Entry *e) {
    if ((e->flags & (E_PANY | E_ACKED)) != (E_PANY | E_ACKED)) return 0;
    if (e->flags & (E_PERSISTED | E_DIRTY | E_LOADED) || e->p_max_attempt > 1) return 0;
    StreamInfo *si = &E->sinfo[e->sid];
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
static int compact(Engine *E, uint32_t idx) {
    Entry *e = E->pool[idx];
    Compact *c = malloc(sizeof(Compact) + (size_t)e->nfp * 8);
    if (!c) return -1;
    c->hash = e->hash;
    c->hash2 = key_hash2(e->sid, (const uint8_t *)id_of(e), e->idlen);
    c->t0 = e->t0;
    c->r0 = e->r0;
    c->sid = e->sid;
    c->nfp = e->nfp;
    c->ngroups = (uint8_t)E->sinfo[e->sid].n;
    c->dead = 0;
    memcpy(cfps(c), fps_of(e), (size_t)e->nfp * 8);
    int found;
    uint32_t j = table_find(E, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) table_remove_at(E, j);
    E->entry_bytes -= entry_size(e->slot_cap, e->fp_cap, e->idlen);
    free(e);
    E->pool[idx] = NULL;
    E->free_idx[E->nfree++] = idx;
    E->live--;
    E->compacted++;
    return compact_insert(E, c);
}

/* An entry again, for a compact id that a record (not a resend) names: its
 * first `ngroups` groups had the plain delivery; groups expected since owe
 * their verdicts. Returns the pool index, or -1. */
static int64_t reinflate(Engine *E, uint32_t cj, const Str *mid) {
    Compact *c = E->ctable[cj];
    StreamInfo *si = &E->sinfo[c->sid];
    Entry *e = entry_alloc((uint16_t)si->n, (uint16_t)(c->nfp + 2), (uint16_t)mid->n);
    if (!e) return -1;
    e->hash = c->hash;
    e->sid = c->sid;
    e->t0 = c->t0;
    e->r0 = c->r0;
    e->flags = E_PANY | E_ACKED | E_T0_FROZEN;
    memcpy(id_of(e), mid->s, mid->n);
    memcpy(fps_of(e), cfps(c), (size_t)c->nfp * 8);
    e->nfp = c->nfp;
    for (uint8_t g = 0; g < c->ngroups && g < si->n; g++) {
        Slot *sl = &slots_of(e)[e->nslots++];
        memset(sl, 0, sizeof *sl);
        sl->gid = (uint16_t)si->gids[g];
        sl->cls = CLS_DELIVERED;
        sl->n = sl->ok = sl->max_attempt = 1;
        sl->first_ts = sl->first_ok = c->t0;
        sl->flags = SL_ACKED | SL_PANY | SL_LATENCY;
        sl->latency = NAN; /* observed then, not kept */
    }
    E->compact_bytes -= sizeof(Compact) + (size_t)c->nfp * 8;
    compact_remove_at(E, cj);
    c->dead = 1; /* freed when the stream's FIFO reaches it */
    int found;
    uint32_t j = table_find(E, e->sid, mid->s, mid->n, e->hash, &found);
    int64_t idx = entry_insert(E, e, j);
    if (idx < 0 || schedule(E, (uint32_t)idx)) return -1;
    return idx;
}

/* Forgets the compact entries whose time has come, front first, stream by stream. */
static void expire_compacts(Engine *E, double now, double watermark) {
    for (uint32_t sid = 0; sid < E->streams.n; sid++) {
        StreamInfo *si = &E->sinfo[sid];
        double wait = si->deadline + E->settle + E->remember;
        while (si->fifo_head < si->fifo_n) {
            Compact *c = si->fifo[si->fifo_head];
            if (!c->dead) {
                if (c->t0 + wait > now || c->r0 + E->settle + E->remember > watermark) break;
                /* found by pointer: the id itself is gone */
                uint32_t k = (uint32_t)c->hash & E->cmask;
                while (E->ctable[k] && E->ctable[k] != c) k = (k + 1) & E->cmask;
                if (E->ctable[k] == c) compact_remove_at(E, k);
                E->compact_bytes -= sizeof(Compact) + (size_t)c->nfp * 8;
                E->evicted++;
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

static int64_t stream_index(Engine *E, const Str *s) {
    int64_t sid = dict_get(&E->streams, s->s, s->n, 1);
    if (sid < 0) return -1;
    if ((uint32_t)sid >= E->sinfo_cap) {
        uint32_t cap = E->sinfo_cap ? E->sinfo_cap * 2 : 16;
        while (cap <= (uint32_t)sid) cap *= 2;
        StreamInfo *si = realloc(E->sinfo, cap * sizeof(StreamInfo));
        if (!si) return -1;
        for (uint32_t i = E->sinfo_cap; i < cap; i++) {
            memset(&si[i], 0, sizeof si[i]);
            si[i].deadline = E->default_deadline;
        }
        E->sinfo = si;
        E->sinfo_cap = cap;
    }
    return sid;
}

/* 1: added, 0: expected already, -1: no memory, -2: the stream has its limit of groups. */
static int expect_group(Engine *E, uint32_t sid, uint32_t gid) {
    StreamInfo *si = &E->sinfo[sid];
    if (stream_expects(si, gid)) return 0;
    if (si->n >= MAX_GROUPS_PER_STREAM) return -2;
    if (grow(&si->gids, &si->cap, si->n, sizeof(uint32_t), 4)) return -1;
    si->gids[si->n++] = gid;
    return 1;
}

static int touch(Engine *E, uint32_t idx) {
    if (grow(&E->touched, &E->touched_cap, E->ntouched, sizeof(uint32_t), 4096)) return -1;
    E->touched[E->ntouched++] = idx;
    return 0;
}

/* Where a record's id is: its stream, key hash and table position. */
typedef struct {
    int64_t sid;
    uint64_t h;
    uint32_t j;
    int found;
} Place;

static int place_of(Engine *E, const Rec *r, Place *at) {
    at->sid = stream_index(E, &r->text[F_STREAM]);
    if (at->sid < 0) return -1;
    const Str *mid = &r->text[F_MESSAGE_ID];
    at->h = key_hash((uint32_t)at->sid, mid->s, mid->n);
    at->j = table_find(E, (uint32_t)at->sid, mid->s, mid->n, at->h, &at->found);
    return 0;
}

/* Folds one record into its entry (found at `at`). */
static int apply_record(Engine *E, const Rec *r, double received_at, const Place *at) {
    int64_t sid = at->sid;
    const Str *mid = &r->text[F_MESSAGE_ID];
    uint64_t h = at->h;
    int found = at->found;
    uint32_t j = at->j;
    int64_t idx;
    int64_t cj = found ? -1 : compact_find(E, (uint32_t)sid, mid->s, mid->n, h);
    if (cj >= 0) {
        /* a plain delivery in compact form: a resend changes nothing */
        uint64_t fp = fingerprint(r);
        Compact *c = E->ctable[cj];
        for (uint16_t k = 0; k < c->nfp; k++) {
            if (cfps(c)[k] == fp) {
                E->records++;
                E->repeats++;
                return 0;
            }
        }
        idx = reinflate(E, (uint32_t)cj, mid);
        if (idx < 0) return -1;
        found = 1;
    } else if (found) {
        idx = ((Entry *)E->table[j])->idx;
    } else {
        if (mid->n > 65535) return -1;
        /* room for the usual: a slot per expected group, a produce and a consume each */
        uint16_t groups = (uint16_t)(E->sinfo[sid].n < 8 ? E->sinfo[sid].n : 8);
        Entry *e = entry_alloc(groups, (uint16_t)(1 + (groups ? groups : 1)), (uint16_t)mid->n);
        if (!e) return -1;
        e->hash = h;
        e->sid = (uint32_t)sid;
        e->t0 = INFINITY;
        e->r0 = received_at;
        memcpy(id_of(e), mid->s, mid->n);
        idx = entry_insert(E, e, j);
        if (idx < 0) return -1;
    }
    Entry *e = E->pool[idx];
    E->records++;
    uint64_t fp = fingerprint(r);
    uint64_t *fps = fps_of(e);
    for (uint16_t k = 0; k < e->nfp; k++) {
        if (fps[k] == fp) { E->repeats++; return 0; }
    }
    if (e->nfp < e->fp_cap) {
        fps_of(e)[e->nfp++] = fp;
    } else if (e->fp_cap < 4096) { /* past that, resends of this id are not recognised */
        e = entry_resize(E, (uint32_t)idx, e->slot_cap, e->fp_cap * 2);
        if (!e) return -1;
        fps_of(e)[e->nfp++] = fp;
    }
    double old_due = found ? entry_due(E, e) : INFINITY;
    uint32_t attempt = r->attempt < 1 ? 1 : (r->attempt > 0xFFFFFFFFLL ? 0xFFFFFFFFu : (uint32_t)r->attempt);
    int outcome = outcome_of(&r->text[F_OUTCOME]);
    if (kind_of(&r->text[F_KIND]) == K_PRODUCE) {
        /* after a verdict, a produce only adds its attempt (retried); t0 is frozen */
        uint32_t old_p = e->p_max_attempt, new_p = attempt > old_p ? attempt : old_p;
        Slot *ss = slots_of(e);
        for (uint16_t k = 0; k < e->nslots; k++) {
            if (ss[k].cls == CLS_PENDING) continue;
            int64_t before[N_TALLY];
            e->p_max_attempt = old_p;
            counts_of(e, &ss[k], before);
            e->p_max_attempt = new_p;
            if (advance_slot(E, (uint32_t)idx, &ss[k], before)) return -1;
        }
        e->p_max_attempt = new_p;
        e->flags |= E_PANY;
        if (outcome == O_OK) e->flags |= E_ACKED;
        if (!(e->flags & E_T0_FROZEN) && r->ts < e->t0) e->t0 = r->ts;
    } else {
        const Str *g = &r->text[F_GROUP];
        if (g->nil) return -1;
        int64_t gid = dict_get(&E->groups, g->s, g->n, 1);
        if (gid < 0 || gid > MAX_GROUPS) return -1;
        if (expect_group(E, (uint32_t)sid, (uint32_t)gid) < 0) return -1;
        Slot *s = find_slot(e, (uint32_t)gid);
        if (!s) {
            s = add_slot(E, (uint32_t)idx, (uint32_t)gid);
            if (!s) return -1;
            e = E->pool[idx];
        }
        int64_t before[N_TALLY];
        counts_of(e, s, before);
        s->n++;
        if (attempt > s->max_attempt) s->max_attempt = attempt;
        if (r->ts < s->first_ts) s->first_ts = r->ts;
        if (outcome == O_OK) {
            s->ok++;
            if (r->ts < s->first_ok) s->first_ok = r->ts;
        } else if (outcome == O_DEAD_LETTER) {
            s->flags |= SL_DL;
        } else {
            Pair *p = pair_of(E, (uint32_t)sid, (uint32_t)gid);
            if (!p) return -1;
            p->counts[T_CONSUME_ERRORS]++;
            p->dirty = 1;
        }
        if (s->cls != CLS_PENDING && advance_slot(E, (uint32_t)idx, s, before)) return -1;
    }
    if (entry_due(E, E->pool[idx]) < old_due && schedule(E, (uint32_t)idx)) return -1;
    return touch(E, (uint32_t)idx);
}

/* ------------------------------------------------------------- sequences */
/* Measurement loss, found rather than guessed: a sender that numbers its
 * records from 1 per (producer, stream, kind, group) shows every record it
 * never delivered as a hole in its numbering, the tail too once its
 * high-water mark (the body's marks: how far it numbered) says so. A hole is
 * declared missing when it is still open, on the receipt clock, `settle`
 * after the body that showed it (a later record came: a batch reordered in
 * flight is not counted), or the stream's deadline + settle after the mark
 * that announced it (its records may wait in a live sender's buffer; a dead
 * sender's never come). The count only grows: a record that comes after its
 * hole was declared is counted in the tallies as any other, and the hole
 * stays missing. */

static inline int same_name(const Dict *d, uint32_t i, const Str *s) {
    return d->lens[i] == s->n && memcmp(d->names[i], s->s, s->n) == 0;
}

static inline uint64_t seq_hash(uint32_t pid, uint32_t sid, uint32_t gid, int kind) {
    return hash_u64(((uint64_t)pid << 32) | sid, hash_u64(((uint64_t)gid << 1) | (uint64_t)kind, 0x736571));
}

static int seq_table_grow(Engine *E) {
    uint32_t mask = E->seq_mask * 2 + 1;
    uint32_t *t = calloc((size_t)mask + 1, sizeof(uint32_t));
    if (!t) return -1;
    for (size_t i = 0; i < E->nseqs; i++) {
        SeqKey *k = &E->seqs[i];
        uint32_t j = (uint32_t)seq_hash(k->pid, k->sid, k->gid, k->kind) & mask;
        while (t[j]) j = (j + 1) & mask;
        t[j] = (uint32_t)i + 1;
    }
    free(E->seq_table);
    E->seq_table = t;
    E->seq_mask = mask;
    return 0;
}

/* The index of a sequence, added when new; -1 on memory failure. */
static int64_t seq_index(Engine *E, uint32_t pid, uint32_t sid, uint32_t gid, int kind) {
    uint32_t j = (uint32_t)seq_hash(pid, sid, gid, kind) & E->seq_mask;
    while (E->seq_table[j]) {
        SeqKey *k = &E->seqs[E->seq_table[j] - 1];
        if (k->pid == pid && k->sid == sid && k->gid == gid && k->kind == kind) return E->seq_table[j] - 1;
        j = (j + 1) & E->seq_mask;
    }
    if (E->nseqs >= UINT32_MAX - 1 || grow(&E->seqs, &E->seqs_cap, E->nseqs, sizeof(SeqKey), 64)) return -1;
    SeqKey *k = &E->seqs[E->nseqs];
    memset(k, 0, sizeof *k);
    k->pid = pid;
    k->sid = sid;
    k->gid = (uint16_t)gid;
    k->kind = (uint8_t)kind;
    k->due = INFINITY;
    E->seq_table[j] = (uint32_t)++E->nseqs;
    if (E->nseqs * 2 > E->seq_mask && seq_table_grow(E)) return -1;
    return (int64_t)E->nseqs - 1;
}

/* The sequence of (producer, stream, kind, group): -1 on memory failure,
 * -2 for one that cannot be (a consume without a usable group). */
static int64_t seq_find(Engine *E, const Str *producer, uint32_t sid, int kind, const Str *group) {
    if (kind == K_CONSUME && group->nil) return -2;
    /* A body holds the records of a few sequences: found again without hashing names. */
    uint32_t slot = (sid * 7 + (uint32_t)kind * 3 + producer->n * 5 + (producer->n ? producer->s[producer->n - 1] : 0) +
                     (kind == K_CONSUME ? group->n * 11 + (group->n ? group->s[group->n - 1] : 0) : 0)) & 15;
    if (E->seq_recent[slot]) {
        SeqKey *k = &E->seqs[E->seq_recent[slot] - 1];
        if (k->sid == sid && k->kind == kind && same_name(&E->producers, k->pid, producer) &&
            (kind == K_PRODUCE || same_name(&E->groups, k->gid, group)))
            return E->seq_recent[slot] - 1;
    }
    int64_t pid = dict_get(&E->producers, producer->s, producer->n, 1);
    int64_t gid = kind == K_CONSUME ? dict_get(&E->groups, group->s, group->n, 1) : 0;
    if (pid < 0 || gid < 0) return -1;
    if (gid > MAX_GROUPS) return -2;
    int64_t i = seq_index(E, (uint32_t)pid, sid, (uint32_t)gid, kind);
    if (i >= 0) E->seq_recent[slot] = (uint32_t)i + 1;
    return i;
}

/* When the first hole of each kind is missing; INFINITY without holes. */
static double seq_due(Engine *E, const SeqKey *k) {
    double due = INFINITY;
    if (k->nshown) due = k->holes[0].opened + E->settle;
    if (k->nholes > k->nshown) {
        double announced = k->holes[k->nshown].opened + deadline_of(E, k->sid) + E->settle;
        if (announced < due) due = announced;
    }
    return due;
}

/* A timer for the sequence's next due hole, unless one fires before it. */
static int seq_schedule(Engine *E, uint32_t ki) {
    SeqKey *k = &E->seqs[ki];
    double due = seq_due(E, k);
    if (due >= k->due) return 0;
    if (!++E->seq_tokens) ++E->seq_tokens; /* 0 means none */
    k->timer = E->seq_tokens;
    k->due = due;
    return heap_push(&E->hole_heap, due, ki, k->timer);
}

/* Room for one more hole. */
static int hole_room(Engine *E, SeqKey *k) {
    if (k->nholes < k->hole_cap) return 0;
    size_t cap = k->hole_cap;
    if (cap >= UINT32_MAX / 2 || grow(&k->holes, &cap, k->nholes, sizeof(Hole), 2)) return -1;
    E->hole_slots += cap - k->hole_cap;
    k->hole_cap = (uint32_t)cap;
    return 0;
}

/* Inserts a hole at i (its place by seq). */
static int hole_insert(Engine *E, SeqKey *k, uint32_t i, Hole h) {
    if (hole_room(E, k)) return -1;
    memmove(k->holes + i + 1, k->holes + i, (k->nholes - i) * sizeof(Hole));
    k->holes[i] = h;
    k->nholes++;
    E->open_holes++;
    return 0;
}

static void hole_remove(Engine *E, SeqKey *k, uint32_t i, uint32_t n) {
    memmove(k->holes + i, k->holes + i + n, (k->nholes - i - n) * sizeof(Hole));
    k->nholes -= n;
    E->open_holes -= n;
    if (!k->nholes) { /* memory is what is open */
        E->hole_slots -= k->hole_cap;
        free(k->holes);
        k->holes = NULL;
        k->hole_cap = 0;
    }
}

/* Takes seq out of hole i (it is in it). */
static int hole_fill(Engine *E, SeqKey *k, uint32_t i, uint64_t seq) {
    Hole *h = &k->holes[i];
    if (h->lo == h->hi) {
        if (i < k->nshown) k->nshown--;
        hole_remove(E, k, i, 1);
    } else if (seq == h->lo) {
        h->lo++;
    } else if (seq == h->hi) {
        h->hi--;
    } else { /* in two, both shown when the whole was */
        Hole above = {seq + 1, h->hi, h->opened};
        h->hi = seq - 1;
        if (hole_insert(E, k, i + 1, above)) return -1;
        if (i < k->nshown) k->nshown++;
    }
    return 0;
}

/* A record numbered `seq` of the sequence, received at `at`. */
static int seq_see(Engine *E, uint32_t ki, uint64_t seq, double at) {
    SeqKey *k = &E->seqs[ki];
    if (seq == 0) return 0; /* numbering starts at 1: 0 is never missing */
    if (seq <= k->top) { /* a record sent late: a shown hole, or a resend */
        uint32_t lo = 0, hi = k->nshown;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (k->holes[mid].hi < seq) lo = mid + 1;
            else hi = mid;
        }
        if (lo == k->nshown || k->holes[lo].lo > seq) return 0; /* received, or declared */
        return hole_fill(E, k, lo, seq);
    }
    /* Every hole below seq is shown now, from this receipt on (never before a
     * hole shown earlier: shown holes stay in the order they are due). */
    if (k->nshown && k->holes[k->nshown - 1].opened > at) at = k->holes[k->nshown - 1].opened;
    while (k->nshown < k->nholes && k->holes[k->nshown].hi < seq) k->holes[k->nshown++].opened = at;
    k->top = seq;
    if (k->nshown < k->nholes && k->holes[k->nshown].lo <= seq) { /* in an announced hole */
        Hole *h = &k->holes[k->nshown];
        if (h->lo < seq) {
            Hole below = {h->lo, seq - 1, at};
            h->lo = seq;
            if (hole_insert(E, k, k->nshown, below)) return -1;
            k->nshown++;
        }
        if (hole_fill(E, k, k->nshown, seq)) return -1;
    } else if (seq > k->hw) {
        if (seq > k->hw + 1 && hole_insert(E, k, k->nholes, (Hole){k->hw + 1, seq - 1, at})) return -1;
        if (seq > k->hw + 1) k->nshown++;
        k->hw = seq;
    }
    return seq_schedule(E, ki);
}

/* A high-water mark: every seq up to `last` was given to a record. */
static int seq_mark(Engine *E, uint32_t ki, uint64_t last, double at) {
    SeqKey *k = &E->seqs[ki];
    if (last <= k->hw) return 0;
    if (k->nholes > k->nshown && k->holes[k->nholes - 1].opened > at) at = k->holes[k->nholes - 1].opened;
    if (hole_insert(E, k, k->nholes, (Hole){k->hw + 1, last, at})) return -1;
    k->hw = last;
    return seq_schedule(E, ki);
}

/* Checks a record's seq, if its body is from a sender that numbers per sequence. */
static int seq_record(Engine *E, const Rec *r, uint32_t sid, double at) {
    if (!r->has_seq || r->text[F_PRODUCER].nil || r->seq < 0) return 0;
    int64_t ki = seq_find(E, &r->text[F_PRODUCER], sid, kind_of(&r->text[F_KIND]), &r->text[F_GROUP]);
    if (ki == -2) return 0;
    return ki < 0 ? -1 : seq_see(E, (uint32_t)ki, (uint64_t)r->seq, at);
}

/* Applies a body's marks: 0, -1 out of memory, -2 not a body. */
static int seq_marks(Engine *E, Cursor *c, double at) {
    uint32_t n;
    if (mp_array(c, &n)) return -2;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t m;
        Str producer, stream, kind, group;
        int64_t last;
        double d;
        int isf, nil;
        if (mp_array(c, &m) || m != 5 || mp_str(c, &producer) || mp_str(c, &stream) || mp_str(c, &kind) ||
            mp_str(c, &group) || mp_number(c, &last, &d, &isf, &nil))
            return -2;
        if (producer.nil || stream.nil || kind.nil || group.nil || isf || nil) return -2;
        if (last <= 0) continue;
        int64_t sid = stream_index(E, &stream);
        if (sid < 0) return -1;
        int64_t ki = seq_find(E, &producer, (uint32_t)sid, kind_of(&kind), &group);
        if (ki == -2) continue;
        if (ki < 0 || seq_mark(E, (uint32_t)ki, (uint64_t)last, at)) return -1;
    }
    return 0;
}

/* Removes, out of holes [i, i + n), the first ones due by the watermark (`wait`
 * after they opened); *gone says how many; returns how many seqs they held. */
static uint64_t holes_due(Engine *E, SeqKey *k, uint32_t i, uint32_t n, double wait, double watermark,
                          uint32_t *gone) {
    uint32_t due = 0;
    uint64_t seqs = 0;
    for (; due < n && k->holes[i + due].opened + wait <= watermark; due++) {
        uint64_t size = k->holes[i + due].hi - k->holes[i + due].lo + 1;
        seqs = size > UINT64_MAX - seqs ? UINT64_MAX : seqs + size;
    }
    if (due) hole_remove(E, k, i, due);
    *gone = due;
    return seqs;
}

/* Declares missing the holes that have been open long enough, as of the
 * receipt watermark: shown ones for `settle`, announced ones for the stream's
 * deadline + settle. */
static int seq_advance(Engine *E, double watermark) {
    Heap *h = &E->hole_heap;
    while (h->n && h->items[0].due <= watermark) {
        Timer t = heap_pop(h);
        SeqKey *k = &E->seqs[t.idx];
        if (k->timer != t.gen) continue; /* stale: the sequence has another timer */
        k->timer = 0;
        k->due = INFINITY;
        uint32_t gone;
        uint64_t n = holes_due(E, k, 0, k->nshown, E->settle, watermark, &gone);
        k->nshown -= gone;
        uint64_t m = holes_due(E, k, k->nshown, k->nholes - k->nshown, deadline_of(E, k->sid) + E->settle,
                               watermark, &gone);
        n = m > UINT64_MAX - n ? UINT64_MAX : n + m;
        if (n) {
            if (n > (uint64_t)(INT64_MAX - k->undrained)) n = (uint64_t)(INT64_MAX - k->undrained);
            k->undrained += (int64_t)n;
            E->missing = n > UINT64_MAX - E->missing ? UINT64_MAX : E->missing + n;
            if (!k->dirty) {
                if (grow(&E->seq_dirty, &E->seq_dirty_cap, E->nseq_dirty, sizeof(uint32_t), 64)) return -1;
                E->seq_dirty[E->nseq_dirty++] = t.idx;
                k->dirty = 1;
            }
        }
        if (seq_schedule(E, t.idx)) return -1;
    }
    return 0;
}

/* The missing records drained: {(stream, kind, group): n}, every producer added up. */
static PyObject *seq_drain(Engine *E) {
    PyObject *out = PyDict_New();
    for (size_t i = 0; out && i < E->nseq_dirty; i++) {
        SeqKey *k = &E->seqs[E->seq_dirty[i]];
        k->dirty = 0;
        PyObject *key = Py_BuildValue("(NsN)", dict_str(&E->streams, k->sid), k->kind == K_CONSUME ? "consume" : "produce",
                                      k->kind == K_CONSUME ? dict_str(&E->groups, k->gid) : PyUnicode_FromString(""));
        PyObject *n = key ? PyLong_FromLongLong(k->undrained) : NULL;
        PyObject *had = n ? PyDict_GetItemWithError(out, key) : NULL;
        PyObject *sum = had ? PyNumber_Add(had, n) : (n && !PyErr_Occurred() ? (Py_INCREF(n), n) : NULL);
        if (!sum || PyDict_SetItem(out, key, sum)) Py_CLEAR(out);
        Py_XDECREF(sum);
        Py_XDECREF(n);
        Py_XDECREF(key);
        k->undrained = 0;
    }
    E->nseq_dirty = 0;
    return out;
}

/* ================================================================ Python API */

static PyObject *EngineError;
static void bf_reset(Engine *E);

static void Engine_dealloc(Engine *E) {
    for (uint32_t i = 0; i < E->pool_n; i++) free(E->pool[i]);
    free(E->pool);
    free(E->free_idx);
    free(E->table);
    free(E->due_heap.items);
    free(E->receipt_heap.items);
    free(E->known);
    for (uint32_t i = 0; i < E->npairs; i++) {
        free(E->pairs[i].hist);
        binmap_clear(&E->pairs[i].bins);
    }
    free(E->pairs);
    free(E->pair_table);
    free(E->dirty);
    free(E->touched);
    for (size_t i = 0; i < E->ngraveyard; i++) free(E->graveyard[i]);
    free(E->graveyard);
    free(E->deferred);
    free(E->deferred_at);
    Py_XDECREF(E->deferred_bodies);
    free(E->bounds);
    for (uint32_t i = 0; i < E->sinfo_cap; i++) {
        StreamInfo *si = &E->sinfo[i];
        for (size_t k = si->fifo_head; k < si->fifo_n; k++) free(si->fifo[k]);
        free(si->fifo);
        free(si->gids);
    }
    free(E->ctable);
    free(E->sinfo);
    bf_reset(E);
    dict_free(&E->streams);
    dict_free(&E->groups);
    for (size_t i = 0; i < E->nseqs; i++) free(E->seqs[i].holes);
    free(E->seqs);
    free(E->seq_table);
    free(E->hole_heap.items);
    free(E->seq_dirty);
    dict_free(&E->producers);
    Py_XDECREF(E->verdicts);
    Py_TYPE(E)->tp_free((PyObject *)E);
}

static int Engine_init(Engine *E, PyObject *args, PyObject *kw) {
    static char *names[] = {"deadline", "settle", "remember", "buckets", NULL};
    double deadline, settle, remember;
    PyObject *buckets;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dddO", names, &deadline, &settle, &remember, &buckets))
        return -1;
    E->remember = remember;
    PyObject *seq = PySequence_Fast(buckets, "buckets must be a sequence of numbers");
    if (!seq) return -1;
    E->nbounds = (uint32_t)PySequence_Fast_GET_SIZE(seq);
    E->bounds = malloc((E->nbounds + 1) * sizeof(double));
    for (uint32_t i = 0; i < E->nbounds; i++) {
        E->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) { Py_DECREF(seq); return -1; }
    }
    Py_DECREF(seq);
    E->default_deadline = deadline;
    E->settle = settle;
    E->sketch_gamma_log = log(SKETCH_GAMMA);
    if (dict_init(&E->streams) || dict_init(&E->groups) || dict_init(&E->producers)) {
        PyErr_NoMemory();
        return -1;
    }
    E->seq_mask = 63;
    E->seq_table = calloc(E->seq_mask + 1, sizeof(uint32_t));
    E->mask = 1023;
    E->table = calloc(E->mask + 1, sizeof(Entry *));
    E->cmask = 1023;
    E->ctable = calloc(E->cmask + 1, sizeof(Compact *));
    E->known_mask = 1023;
    E->known = calloc(E->known_mask + 1, 8);
    E->pair_mask = 63;
    E->pair_table = calloc(E->pair_mask + 1, sizeof(uint32_t));
    E->verdicts = PyList_New(0);
    if (!E->table || !E->ctable || !E->known || !E->pair_table || !E->verdicts || !E->seq_table) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int get_body(PyObject *obj, Py_buffer *view) {
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
}

static PyObject *bad_body(void) {
    PyErr_SetString(EngineError, "not a msgtally log body (msgpack [1, [record, ...]])");
    return NULL;
}

/* set_deadline(stream, seconds) */
static PyObject *Engine_set_deadline(Engine *E, PyObject *args) {
    const char *s;
    Py_ssize_t n;
    double d;
    if (!PyArg_ParseTuple(args, "s#d", &s, &n, &d)) return NULL;
    Str st = {(const uint8_t *)s, (uint32_t)n, 0};
    int64_t sid = stream_index(E, &st);
    if (sid < 0) return PyErr_NoMemory();
    E->sinfo[sid].deadline = d;
    Py_RETURN_NONE;
}

/* configure(deadline, settle, remember): the default deadline (for streams without
 * one of their own), the settle allowance, and how long a judged id is kept. */
static PyObject *Engine_configure(Engine *E, PyObject *args) {
    double deadline, settle, remember;
    if (!PyArg_ParseTuple(args, "ddd", &deadline, &settle, &remember)) return NULL;
    E->remember = remember;
    for (uint32_t sid = 0; sid < E->streams.n; sid++)
        if (E->sinfo[sid].deadline == E->default_deadline) E->sinfo[sid].deadline = deadline;
    E->default_deadline = deadline;
    E->settle = settle;
    Py_RETURN_NONE;
}

/* expected() -> {stream: [group, ...]}: the groups each stream is owed to. */
static PyObject *Engine_expected(Engine *E, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyDict_New();
    for (uint32_t sid = 0; out && sid < E->streams.n; sid++) {
        PyObject *groups = PyList_New(0), *name = dict_str(&E->streams, sid);
        int bad = !groups || !name;
        for (uint32_t g = 0; !bad && g < E->sinfo[sid].n; g++) {
            PyObject *gname = dict_str(&E->groups, E->sinfo[sid].gids[g]);
            bad = !gname || PyList_Append(groups, gname);
            Py_XDECREF(gname);
        }
        if (bad || PyDict_SetItem(out, name, groups)) { Py_CLEAR(out); }
        Py_XDECREF(groups);
        Py_XDECREF(name);
    }
    return out;
}

/* new_groups(bodies) -> [(stream, group)] consumed in these bodies and not yet expected. */
static PyObject *Engine_new_groups(Engine *E, PyObject *bodies) {
    PyObject *seq = PySequence_Fast(bodies, "bodies must be a sequence");
    if (!seq) return NULL;
    PyObject *out = PyList_New(0);
    PyObject *seen = PySet_New(NULL);
    if (!out || !seen) goto fail;
    for (Py_ssize_t b = 0; b < PySequence_Fast_GET_SIZE(seq); b++) {
        Py_buffer view;
        if (get_body(PySequence_Fast_GET_ITEM(seq, b), &view)) goto fail;
        Cursor c = {view.buf, (const uint8_t *)view.buf + view.len};
        uint32_t n;
        if (open_body(&c, &n, NULL)) { PyBuffer_Release(&view); bad_body(); goto fail; }
        for (uint32_t i = 0; i < n; i++) {
            Rec r;
            if (read_record(&c, &r)) { PyBuffer_Release(&view); bad_body(); goto fail; }
            if (kind_of(&r.text[F_KIND]) != K_CONSUME || r.text[F_GROUP].nil) continue;
            int64_t sid = dict_get(&E->streams, r.text[F_STREAM].s, r.text[F_STREAM].n, 0);
            int64_t gid = dict_get(&E->groups, r.text[F_GROUP].s, r.text[F_GROUP].n, 0);
            if (sid >= 0 && gid >= 0 && (uint32_t)sid < E->sinfo_cap && stream_expects(&E->sinfo[sid], (uint32_t)gid)) continue;
            PyObject *pair = Py_BuildValue(
                "(NN)", PyUnicode_DecodeUTF8((const char *)r.text[F_STREAM].s, r.text[F_STREAM].n, "surrogatepass"),
                PyUnicode_DecodeUTF8((const char *)r.text[F_GROUP].s, r.text[F_GROUP].n, "surrogatepass"));
            if (!pair) { PyBuffer_Release(&view); goto fail; }
            int has = PySet_Contains(seen, pair);
            if (!has && (PySet_Add(seen, pair) || PyList_Append(out, pair))) {
                Py_DECREF(pair);
                PyBuffer_Release(&view);
                goto fail;
            }
            Py_DECREF(pair);
        }
        PyBuffer_Release(&view);
    }
    Py_DECREF(seq);
    Py_DECREF(seen);
    return out;
fail:
    Py_DECREF(seq);
    Py_XDECREF(seen);
    Py_XDECREF(out);
    return NULL;
}

/* expect(stream, group) -> bool: the group now receives the stream. Every
 * produced id of the stream still in memory owes the group a verdict, judged
 * ones included. */
static PyObject *Engine_expect(Engine *E, PyObject *args) {
    const char *s, *g;
    Py_ssize_t sn, gn;
    if (!PyArg_ParseTuple(args, "s#s#", &s, &sn, &g, &gn)) return NULL;
    Str st = {(const uint8_t *)s, (uint32_t)sn, 0};
    int64_t sid = stream_index(E, &st);
    int64_t gid = dict_get(&E->groups, (const uint8_t *)g, (uint32_t)gn, 1);
    if (sid < 0 || gid < 0) return PyErr_NoMemory();
    if (gid > MAX_GROUPS) {
        PyErr_Format(EngineError, "more than %d consumer groups in all", MAX_GROUPS);
        return NULL;
    }
    int added = expect_group(E, (uint32_t)sid, (uint32_t)gid);
    if (added == -2) {
        PyErr_Format(EngineError, "stream %R has %d consumer groups, the limit of groups per stream",
                     PyTuple_GET_ITEM(args, 0), MAX_GROUPS_PER_STREAM);
        return NULL;
    }
    if (added < 0) return PyErr_NoMemory();
    if (added) {
        for (uint32_t idx = 0; idx < E->pool_n; idx++) {
            Entry *e = E->pool[idx];
            if (!e || e->sid != (uint32_t)sid || !(e->flags & E_PANY) || find_slot(e, (uint32_t)gid)) continue;
            if (!add_slot(E, idx, (uint32_t)gid) || schedule(E, idx)) return PyErr_NoMemory();
        }
    }
    return PyBool_FromLong(added);
}

static int cls_from_name(const char *s) {
    for (int k = 1; k <= CLS_NONE; k++)
        if (strcmp(s, CLS_NAMES[k]) == 0) return k;
    return -1;
}

/* install(rows): judged ids loaded from the verdicts table, rows as verdict_row
 * writes them. They are evicted at the next advance. */
static PyObject *Engine_install(Engine *E, PyObject *rows) {
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence");
    if (!seq) return NULL;
    size_t first_touched = E->ntouched;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        const char *stream, *mid, *group, *cls;
        Py_ssize_t sn, mn, gn;
        int acked, pany, late, dl;
        unsigned int n, ok, max_attempt;
        PyObject *t0o, *lato;
        double deadline;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "s#s#s#siiiOdIIIiO", &stream, &sn, &mid, &mn,
                              &group, &gn, &cls, &acked, &pany, &late, &t0o, &deadline, &n, &ok, &max_attempt,
                              &dl, &lato)) {
            Py_DECREF(seq);
            return NULL;
        }
        int c = cls_from_name(cls);
        if (c < 0) { Py_DECREF(seq); PyErr_Format(EngineError, "unknown class %s", cls); return NULL; }
        Str st = {(const uint8_t *)stream, (uint32_t)sn, 0};
        int64_t sid = stream_index(E, &st);
        int64_t gid = dict_get(&E->groups, (const uint8_t *)group, (uint32_t)gn, 1);
        if (sid < 0 || gid < 0) { Py_DECREF(seq); return PyErr_NoMemory(); }
        uint64_t h = key_hash((uint32_t)sid, (const uint8_t *)mid, (uint32_t)mn);
        int found;
        uint32_t j = table_find(E, (uint32_t)sid, (const uint8_t *)mid, (uint32_t)mn, h, &found);
        int64_t idx;
        if (found) {
            idx = ((Entry *)E->table[j])->idx;
        } else {
            Entry *e = entry_alloc(0, 2, (uint16_t)mn);
            if (!e) { Py_DECREF(seq); return PyErr_NoMemory(); }
            e->hash = h;
            e->sid = (uint32_t)sid;
            e->t0 = INFINITY;
            e->r0 = -INFINITY;
            e->flags = E_PERSISTED | E_LOADED;
            memcpy(id_of(e), mid, mn);
            idx = entry_insert(E, e, j);
            if (idx < 0 || schedule(E, (uint32_t)idx)) { Py_DECREF(seq); return PyErr_NoMemory(); }
        }
        Entry *e = E->pool[idx];
        if (find_slot(e, (uint32_t)gid)) continue;
        Slot *s = add_slot(E, (uint32_t)idx, (uint32_t)gid);
        if (!s) { Py_DECREF(seq); return PyErr_NoMemory(); }
        e = E->pool[idx];
        if (pany) e->flags |= E_PANY;
        if (acked) e->flags |= E_ACKED;
        if (t0o != Py_None) {
            e->t0 = PyFloat_AsDouble(t0o);
            e->flags |= E_T0_FROZEN; /* a verdict used it */
            s->first_ts = e->t0;
        } else {
            s->first_ts = deadline - deadline_of(E, (uint32_t)sid);
        }
        s->cls = (uint8_t)c;
        s->n = n;
        s->ok = ok;
        s->max_attempt = max_attempt;
        s->flags = (acked ? SL_ACKED : 0) | (pany ? SL_PANY : 0) | (late ? SL_LATE : 0) | (dl ? SL_DL : 0);
        if (lato != Py_None || (acked && ok > 0)) { /* an acknowledged delivery had its latency */
            s->flags |= SL_LATENCY;
            s->latency = lato != Py_None ? PyFloat_AsDouble(lato) : NAN;
        }
        if (PyErr_Occurred() || touch(E, (uint32_t)idx)) { Py_DECREF(seq); return PyErr_Occurred() ? NULL : PyErr_NoMemory(); }
    }
    Py_DECREF(seq);
    /* An expected group without a row had the plain delivery (see is_kept). */
    for (size_t t = first_touched; t < E->ntouched; t++) {
        uint32_t idx = E->touched[t];
        Entry *e = E->pool[idx];
        if (!(e->flags & E_ACKED)) continue;
        StreamInfo *si = &E->sinfo[e->sid];
        for (uint32_t g = 0; g < si->n; g++) {
            if (find_slot(E->pool[idx], si->gids[g])) continue;
            Slot *s = add_slot(E, idx, si->gids[g]);
            if (!s) return PyErr_NoMemory();
            s->cls = CLS_DELIVERED;
            s->n = s->ok = s->max_attempt = 1;
            s->first_ts = s->first_ok = E->pool[idx]->t0;
            s->flags = SL_ACKED | SL_PANY | SL_LATENCY;
            s->latency = NAN; /* observed then, not known now; never observed again */
        }
    }
    Py_RETURN_NONE;
}


static int defer(Engine *E, const Rec *r, double received_at, PyObject *body) {
    if (E->ndeferred == E->deferred_cap) {
        size_t cap = E->deferred_cap ? E->deferred_cap * 2 : 256;
        Rec *d = realloc(E->deferred, cap * sizeof(Rec));
        if (!d) return -1;
        E->deferred = d;
        double *at = realloc(E->deferred_at, cap * sizeof(double));
        if (!at) return -1;
        E->deferred_at = at;
        E->deferred_cap = cap;
    }
    E->deferred[E->ndeferred] = *r;
    E->deferred_at[E->ndeferred++] = received_at;
    if (!E->deferred_bodies && !(E->deferred_bodies = PyList_New(0))) return -1;
    Py_ssize_t nb = PyList_GET_SIZE(E->deferred_bodies);
    if (nb && PyList_GET_ITEM(E->deferred_bodies, nb - 1) == body) return 0;
    return PyList_Append(E->deferred_bodies, body);
}

/* apply(body, received_at): folds a log body into the state. Verdicts wait for
 * advance(), so that every body of a tick is in before any of them. Records of
 * forgotten ids with a stored verdict wait for deferred_keys / install /
 * apply_deferred. The body must be immutable (bytes). */
static PyObject *Engine_apply(Engine *E, PyObject *args) {
    PyObject *body;
    double received_at;
    if (!PyArg_ParseTuple(args, "Sd", &body, &received_at)) return NULL;
    Cursor c = {(const uint8_t *)PyBytes_AS_STRING(body),
                (const uint8_t *)PyBytes_AS_STRING(body) + PyBytes_GET_SIZE(body)};
    uint32_t n;
    Cursor marks;
    if (open_body(&c, &n, &marks)) return bad_body();
    int failed = 0, bad = 0;
    /* No Python object is touched but to defer a record: the collector's
     * threads run while the engine folds a body. */
    Py_BEGIN_ALLOW_THREADS
    for (uint32_t i = 0; i < n && !failed && !bad; i++) {
        Rec r;
        Place at;
        if (read_record(&c, &r)) { bad = 1; break; }
        if (place_of(E, &r, &at)) { failed = 1; break; }
        /* the seq is checked whatever becomes of the record (a resend, deferred) */
        if (marks.p && seq_record(E, &r, (uint32_t)at.sid, received_at)) { failed = 1; break; }
        /* an id not in memory whose verdict is in the store waits to be loaded */
        if (!at.found && E->known_n && known_has(E, at.h)) {
            Py_BLOCK_THREADS
            failed = defer(E, &r, received_at, body);
            Py_UNBLOCK_THREADS
        } else {
            failed = apply_record(E, &r, received_at, &at);
        }
    }
    if (marks.p && !failed && !bad) {
        int m = seq_marks(E, &marks, received_at);
        failed = m == -1;
        bad = m == -2;
    }
    Py_END_ALLOW_THREADS
    if (bad) return bad_body();
    if (failed) return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    return PyLong_FromUnsignedLong(n);
}

/* deferred_keys() -> [(stream, message_id)]: the forgotten ids to load. */
static PyObject *Engine_deferred_keys(Engine *E, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0), *seen = PySet_New(NULL);
    for (size_t i = 0; out && seen && i < E->ndeferred; i++) {
        const Rec *r = &E->deferred[i];
        PyObject *key = Py_BuildValue("(s#s#)", r->text[F_STREAM].s, (Py_ssize_t)r->text[F_STREAM].n,
                                      r->text[F_MESSAGE_ID].s, (Py_ssize_t)r->text[F_MESSAGE_ID].n);
        int bad = !key;
        if (!bad) {
            int has = PySet_Contains(seen, key);
            bad = has < 0 || (!has && (PySet_Add(seen, key) || PyList_Append(out, key)));
        }
        Py_XDECREF(key);
        if (bad) Py_CLEAR(out);
    }
    Py_XDECREF(seen);
    return out;
}

/* apply_deferred() -> n: the waiting records, now that their ids are installed. */
static PyObject *Engine_apply_deferred(Engine *E, PyObject *Py_UNUSED(ignored)) {
    size_t n = E->ndeferred;
    for (size_t i = 0; i < n; i++) {
        Place at; /* looked up again: install() or an earlier record made the entry */
        if (place_of(E, &E->deferred[i], &at) || apply_record(E, &E->deferred[i], E->deferred_at[i], &at)) {
            return PyErr_Occurred() ? NULL : PyErr_NoMemory();
        }
    }
    E->ndeferred = 0;
    Py_CLEAR(E->deferred_bodies);
    return PyLong_FromSize_t(n);
}

/* advance(now, receipt_watermark): early verdicts for the ids applied since the
 * last advance, then judges and evicts what is due. An id is due
 * once `now` passed its deadline + settle and the receipt watermark passed its
 * first receipt + settle. */
/* The work of advance(), without Python objects: -1 when out of memory. */
static int advance(Engine *E, double now, double watermark) {
    /* early verdicts for the ids the tick touched */
    for (size_t t = 0; t < E->ntouched; t++) {
        uint32_t idx = E->touched[t];
        if (E->pool[idx] && judge_early(E, idx)) return -1;
    }
    E->ntouched = 0;
    Heap *rh = &E->receipt_heap;
    /* ids waiting on the receipt watermark go back to the due heap */
    while (rh->n && rh->items[0].due <= watermark) {
        Timer t = heap_pop(rh);
        Entry *e = E->pool[t.idx];
        if (!e || e->gen != t.gen) continue;
        if (schedule(E, t.idx)) return -1;
    }
    Heap *h = &E->due_heap;
    while (h->n && h->items[0].due <= now) {
        Timer t = heap_pop(h);
        Entry *e = E->pool[t.idx];
        if (!e || e->gen != t.gen) continue;
        double due = entry_due(E, e);
        if (t.due > due) continue; /* stale: an earlier timer was set since */
        if (due > now) {
            if (schedule(E, t.idx)) return -1;
            continue;
        }
        double rd = receipt_due(E, e);
        if (rd > watermark) {
            if (heap_push(rh, rd, t.idx, e->gen)) return -1;
            continue;
        }
        if (judge_due(E, t.idx, now, watermark)) return -1;
    }
    expire_compacts(E, now, watermark);
    return seq_advance(E, watermark);
}

static PyObject *Engine_advance(Engine *E, PyObject *args) {
    double now, watermark;
    if (!PyArg_ParseTuple(args, "dd", &now, &watermark)) return NULL;
    int failed;
    Py_BEGIN_ALLOW_THREADS /* the collector's threads run while the engine judges */
    failed = advance(E, now, watermark);
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *hist_tuple(Engine *E, Pair *p) {
    PyObject *t = PyTuple_New(E->nbounds + 1);
    if (!t) return NULL;
    for (uint32_t b = 0; b <= E->nbounds; b++) PyTuple_SET_ITEM(t, b, PyLong_FromLongLong(p->hist[b]));
    return t;
}

static PyObject *bins_dict(Pair *p) {
    PyObject *d = PyDict_New();
    if (!d || !p->bins.keys) return d;
    for (uint32_t i = 0; i <= p->bins.mask; i++) {
        if (p->bins.keys[i] == INT32_MIN || !p->bins.vals[i]) continue;
        PyObject *k = PyLong_FromLong(p->bins.keys[i]), *v = PyLong_FromLongLong(p->bins.vals[i]);
        if (!k || !v || PyDict_SetItem(d, k, v)) { Py_XDECREF(k); Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

/* drain() -> (pairs, verdicts, missing): what changed since the last drain.
 * pairs: [(stream, group, {tally: delta}, latency_sum, histogram, sketch bins)];
 * missing: {(stream, kind, group): records declared missing}. */
static PyObject *Engine_drain(Engine *E, PyObject *Py_UNUSED(ignored)) {
    for (size_t i = 0; i < E->ndirty; i++) {
        uint32_t idx = (uint32_t)(E->dirty[i] >> 32), gen = (uint32_t)E->dirty[i];
        Entry *e = idx < E->pool_n ? E->pool[idx] : NULL;
        if (!e || e->gen != gen || !(e->flags & E_DIRTY)) continue;
        if (emit_verdicts(E, e)) return NULL;
    }
    E->ndirty = 0;
    for (size_t i = 0; i < E->ngraveyard; i++) {
        if (emit_verdicts(E, E->graveyard[i])) return NULL;
        free(E->graveyard[i]);
        E->graveyard[i] = NULL;
    }
    E->ngraveyard = 0;
    PyObject *pairs = PyList_New(0);
    if (!pairs) return NULL;
    for (uint32_t i = 0; i < E->npairs; i++) {
        Pair *p = &E->pairs[i];
        if (!p->dirty) continue;
        PyObject *counts = PyDict_New();
        if (!counts) goto fail;
        for (int k = 0; k < N_TALLY; k++) {
            if (!p->counts[k]) continue;
            PyObject *v = PyLong_FromLongLong(p->counts[k]);
            if (!v || PyDict_SetItemString(counts, TALLY_NAMES[k], v)) { Py_XDECREF(v); Py_DECREF(counts); goto fail; }
            Py_DECREF(v);
        }
        PyObject *row = Py_BuildValue("(NNNdNN)", dict_str(&E->streams, p->sid), dict_str(&E->groups, p->gid), counts,
                                      p->latency_sum, hist_tuple(E, p), bins_dict(p));
        if (!row || PyList_Append(pairs, row)) { Py_XDECREF(row); goto fail; }
        Py_DECREF(row);
        memset(p->counts, 0, sizeof p->counts);
        memset(p->hist, 0, (E->nbounds + 1) * sizeof(int64_t));
        p->latency_sum = 0;
        binmap_clear(&p->bins);
        p->dirty = 0;
    }
    PyObject *missing = seq_drain(E);
    if (!missing) goto fail;
    PyObject *verdicts = E->verdicts;
    E->verdicts = PyList_New(0);
    if (!E->verdicts) { E->verdicts = verdicts; Py_DECREF(missing); goto fail; }
    return Py_BuildValue("(NNN)", pairs, verdicts, missing);
fail:
    Py_DECREF(pairs);
    return NULL;
}

/* in_flight() -> {(stream, group): n}: acknowledged ids not yet judged for an
 * expected group that has no in-time ok delivery yet. */
static PyObject *Engine_in_flight(Engine *E, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    uint32_t np = 0;
    int64_t *counts = NULL;
    uint32_t *keys = NULL;
    /* count into a flat map keyed by pair */
    uint32_t cap = 64;
    counts = calloc(cap, sizeof(int64_t));
    keys = calloc(cap * 2, sizeof(uint32_t));
    if (!counts || !keys) goto nomem;
    for (uint32_t idx = 0; idx < E->pool_n; idx++) {
        Entry *e = E->pool[idx];
        if (!e || !(e->flags & E_ACKED)) continue;
        StreamInfo *si = &E->sinfo[e->sid];
        for (uint32_t g = 0; g < si->n; g++) {
            Slot *s = find_slot(e, si->gids[g]);
            if (s && (s->cls != CLS_PENDING || s->ok > 0)) continue;
            uint32_t k = 0;
            while (k < np && !(keys[2 * k] == e->sid && keys[2 * k + 1] == si->gids[g])) k++;
            if (k == np) {
                if (np == cap) {
                    cap *= 2;
                    int64_t *c2 = realloc(counts, cap * sizeof(int64_t));
                    if (!c2) goto nomem;
                    counts = c2;
                    uint32_t *k2 = realloc(keys, cap * 2 * sizeof(uint32_t));
                    if (!k2) goto nomem;
                    keys = k2;
                }
                keys[2 * np] = e->sid;
                keys[2 * np + 1] = si->gids[g];
                counts[np++] = 0;
            }
            counts[k]++;
        }
    }
    for (uint32_t k = 0; k < np; k++) {
        PyObject *key = Py_BuildValue("(NN)", dict_str(&E->streams, keys[2 * k]), dict_str(&E->groups, keys[2 * k + 1]));
        PyObject *v = PyLong_FromLongLong(counts[k]);
        if (!key || !v || PyDict_SetItem(out, key, v)) { Py_XDECREF(key); Py_XDECREF(v); goto fail; }
        Py_DECREF(key);
        Py_DECREF(v);
    }
    free(counts);
    free(keys);
    return out;
nomem:
    PyErr_NoMemory();
fail:
    free(counts);
    free(keys);
    Py_DECREF(out);
    return NULL;
}

static PyObject *Engine_stats(Engine *E, PyObject *Py_UNUSED(ignored)) {
    size_t table = (size_t)(E->mask + 1) * sizeof(uint32_t);
    size_t pool = (size_t)E->pool_cap * (sizeof(Entry *) + sizeof(uint32_t));
    size_t heaps = (E->due_heap.cap + E->receipt_heap.cap) * sizeof(Timer);
    size_t ctable = (size_t)(E->cmask + 1) * sizeof(Compact *), fifos = 0;
    for (uint32_t sid = 0; sid < E->streams.n; sid++) fifos += E->sinfo[sid].fifo_cap * sizeof(Compact *);
    size_t seq_bytes = E->seqs_cap * sizeof(SeqKey) + (size_t)(E->seq_mask + 1) * sizeof(uint32_t) +
                       E->hole_heap.cap * sizeof(Timer) + E->hole_slots * sizeof(Hole);
    PyObject *out = Py_BuildValue("{s:K,s:K,s:K,s:K,s:I,s:n,s:n,s:I,s:I,s:n,s:n,s:K}", "records",
                         (unsigned long long)E->records, "repeats", (unsigned long long)E->repeats, "judged",
                         (unsigned long long)E->judged, "evicted", (unsigned long long)E->evicted, "in_memory",
                         E->live, "entry_bytes", (Py_ssize_t)E->entry_bytes, "index_bytes",
                         (Py_ssize_t)(table + pool + heaps), "known", E->known_n, "compact", E->clive,
                         "compact_bytes", (Py_ssize_t)E->compact_bytes, "compact_index_bytes",
                         (Py_ssize_t)(ctable + fifos), "compacted", (unsigned long long)E->compacted);
    PyObject *more = out ? Py_BuildValue("{s:K,s:n,s:K,s:n}", "records_missing", (unsigned long long)E->missing,
                                         "sequences", (Py_ssize_t)E->nseqs, "open_holes",
                                         (unsigned long long)E->open_holes, "sequence_bytes", (Py_ssize_t)seq_bytes)
                       : NULL;
    if (!more || PyDict_Update(out, more)) Py_CLEAR(out);
    Py_XDECREF(more);
    return out;
}

/* ------------------------------------------------------------ backfill */
/* A group seen for the first time is owed every id produced on its stream
 * before it appeared. Ids still in memory get a slot (expect()); for the ones
 * already gone, the log is scanned: backfill_scan(body, stream) for every
 * body applied so far, then backfill_finish(stream, group) counts their
 * verdicts (lost if acknowledged: their deadline passed long ago). */

static void bf_reset(Engine *E) {
    for (uint32_t i = 0; i < E->bf_n; i++) free(E->bf_entries[i]);
    free(E->bf_entries);
    free(E->bf_table);
    E->bf_entries = NULL;
    E->bf_table = NULL;
    E->bf_n = E->bf_cap = 0;
    E->bf_mask = 0;
}

static int bf_add(Engine *E, uint32_t sid, const Rec *r) {
    if (!E->bf_table) {
        E->bf_mask = 4095;
        E->bf_table = calloc(E->bf_mask + 1, sizeof(uint32_t));
        if (!E->bf_table) return -1;
    }
    const Str *mid = &r->text[F_MESSAGE_ID];
    uint64_t h = key_hash(sid, mid->s, mid->n);
    int found;
    table_find(E, sid, mid->s, mid->n, h, &found);
    if (found) return 0; /* in memory: expect() took care of it */
    int64_t cj = compact_find(E, sid, mid->s, mid->n, h);
    if (cj >= 0) return reinflate(E, (uint32_t)cj, mid) < 0 ? -1 : 0; /* it owes the group now */
    uint32_t j = (uint32_t)h & E->bf_mask;
    Entry *e = NULL;
    while (E->bf_table[j]) {
        Entry *x = E->bf_entries[E->bf_table[j] - 1];
        if (x->hash == h && x->idlen == mid->n && memcmp(id_of(x), mid->s, mid->n) == 0) { e = x; break; }
        j = (j + 1) & E->bf_mask;
    }
    if (!e) {
        e = entry_alloc(0, 0, (uint16_t)mid->n);
        if (!e) return -1;
        e->hash = h;
        e->sid = sid;
        e->t0 = INFINITY;
        memcpy(id_of(e), mid->s, mid->n);
        if (E->bf_n == E->bf_cap) {
            uint32_t cap = E->bf_cap ? E->bf_cap * 2 : 1024;
            Entry **es = realloc(E->bf_entries, cap * sizeof(Entry *));
            if (!es) { free(e); return -1; }
            E->bf_entries = es;
            E->bf_cap = cap;
        }
        E->bf_entries[E->bf_n++] = e;
        E->bf_table[j] = E->bf_n;
        if (E->bf_n * 2 > E->bf_mask) {
            uint32_t mask = E->bf_mask * 2 + 1;
            uint32_t *t = calloc((size_t)mask + 1, sizeof(uint32_t));
            if (!t) return -1;
            for (uint32_t i = 0; i < E->bf_n; i++) {
                uint32_t k = (uint32_t)E->bf_entries[i]->hash & mask;
                while (t[k]) k = (k + 1) & mask;
                t[k] = i + 1;
            }
            free(E->bf_table);
            E->bf_table = t;
            E->bf_mask = mask;
        }
    }
    e->flags |= E_PANY;
    if (outcome_of(&r->text[F_OUTCOME]) == O_OK) e->flags |= E_ACKED;
    if (r->ts < e->t0) e->t0 = r->ts;
    uint32_t attempt = r->attempt < 1 ? 1 : (uint32_t)(r->attempt > 0xFFFFFFFFLL ? 0xFFFFFFFFu : r->attempt);
    if (attempt > e->p_max_attempt) e->p_max_attempt = attempt;
    return 0;
}

static PyObject *Engine_backfill_scan(Engine *E, PyObject *args) {
    PyObject *body;
    const char *s;
    Py_ssize_t sn;
    if (!PyArg_ParseTuple(args, "Os#", &body, &s, &sn)) return NULL;
    int64_t sid = dict_get(&E->streams, (const uint8_t *)s, (uint32_t)sn, 0);
    if (sid < 0) return PyLong_FromLong(0);
    Py_buffer view;
    if (get_body(body, &view)) return NULL;
    Cursor c = {view.buf, (const uint8_t *)view.buf + view.len};
    uint32_t n;
    if (open_body(&c, &n, NULL)) { PyBuffer_Release(&view); return bad_body(); }
    long produced = 0;
    for (uint32_t i = 0; i < n; i++) {
        Rec r;
        if (read_record(&c, &r)) { PyBuffer_Release(&view); return bad_body(); }
        if (kind_of(&r.text[F_KIND]) != K_PRODUCE) continue;
        if (r.text[F_STREAM].n != (uint32_t)sn || memcmp(r.text[F_STREAM].s, s, sn) != 0) continue;
        if (bf_add(E, (uint32_t)sid, &r)) { PyBuffer_Release(&view); return PyErr_NoMemory(); }
        produced++;
    }
    PyBuffer_Release(&view);
    return PyLong_FromLong(produced);
}

/* The scanned ids owe each of the groups a verdict (one scan serves every
 * group new to the stream in a tick). */
static PyObject *Engine_backfill_finish(Engine *E, PyObject *args) {
    const char *s;
    Py_ssize_t sn;
    PyObject *groups;
    if (!PyArg_ParseTuple(args, "s#O", &s, &sn, &groups)) return NULL;
    PyObject *seq = PySequence_Fast(groups, "groups must be a sequence");
    if (!seq) return NULL;
    int64_t sid = dict_get(&E->streams, (const uint8_t *)s, (uint32_t)sn, 0);
    long owed = 0;
    for (Py_ssize_t k = 0; k < PySequence_Fast_GET_SIZE(seq); k++) {
        Py_ssize_t gn;
        const char *g = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, k), &gn);
        if (!g) goto fail;
        int64_t gid = dict_get(&E->groups, (const uint8_t *)g, (uint32_t)gn, 1);
        if (gid < 0) { PyErr_NoMemory(); goto fail; }
        if (gid > MAX_GROUPS) {
            PyErr_Format(EngineError, "more than %d consumer groups in all", MAX_GROUPS);
            goto fail;
        }
        for (uint32_t i = 0; sid >= 0 && i < E->bf_n; i++) {
            Entry *e = E->bf_entries[i];
            Slot s0;
            memset(&s0, 0, sizeof s0);
            s0.gid = (uint16_t)gid;
            s0.first_ts = INFINITY;
            s0.first_ok = INFINITY;
            s0.flags = SL_PANY | ((e->flags & E_ACKED) ? SL_ACKED : 0);
            s0.cls = (e->flags & E_ACKED) ? CLS_LOST : CLS_NONE;
            int64_t zero[N_TALLY] = {0}, after[N_TALLY];
            counts_of(e, &s0, after);
            if (add_delta(E, e->sid, (uint32_t)gid, zero, after)) { PyErr_NoMemory(); goto fail; }
            PyObject *row = verdict_row(E, e, &s0);
            if (!row || PyList_Append(E->verdicts, row)) { Py_XDECREF(row); goto fail; }
            Py_DECREF(row);
            if (known_add(E, e->hash)) { PyErr_NoMemory(); goto fail; }
            owed++;
        }
    }
    Py_DECREF(seq);
    bf_reset(E);
    return PyLong_FromLong(owed);
fail:
    Py_DECREF(seq);
    bf_reset(E);
    return NULL;
}

/* ------------------------------------------------------------ checkpoints */

typedef struct {
    uint8_t *buf;
    size_t n, cap;
    int failed;
} Out;

static void out_put(Out *o, const void *p, size_t n) {
    if (o->failed) return;
    if (o->n + n > o->cap) {
        size_t cap = o->cap ? o->cap : 1 << 16;
        while (cap < o->n + n) cap *= 2;
        uint8_t *b = realloc(o->buf, cap);
        if (!b) { o->failed = 1; return; }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->n, p, n);
    o->n += n;
}
#define PUT(o, v) out_put((o), &(v), sizeof(v))

typedef struct {
    const uint8_t *p, *end;
    int failed;
} In;

static void in_get(In *in, void *p, size_t n) {
    if (in->failed || (size_t)(in->end - in->p) < n) { in->failed = 1; memset(p, 0, n); return; }
    memcpy(p, in->p, n);
    in->p += n;
}
#define GET(in, v) in_get((in), &(v), sizeof(v))

static const uint64_t CHECKPOINT_MAGIC = 0x3274706B636D746DULL; /* "mtmckpt2" */
/* Written before sequences were checked: the same but for them. */
static const uint64_t CHECKPOINT_MAGIC_1 = 0x3174706B636D746DULL; /* "mtmckpt1" */

static void put_dict(Out *o, Dict *d) {
    PUT(o, d->n);
    for (uint32_t i = 0; i < d->n; i++) {
        PUT(o, d->lens[i]);
        out_put(o, d->names[i], d->lens[i]);
    }
}

static int get_dict(In *in, Dict *d) {
    uint32_t n;
    GET(in, n);
    for (uint32_t i = 0; i < n && !in->failed; i++) {
        uint32_t len;
        GET(in, len);
        if ((size_t)(in->end - in->p) < len) { in->failed = 1; break; }
        if (dict_get(d, in->p, len, 1) != (int64_t)i) return -1;
        in->p += len;
    }
    return in->failed ? -1 : 0;
}

/* dumps() -> bytes: the whole state (outputs must have been drained). */
static PyObject *Engine_dumps(Engine *E, PyObject *Py_UNUSED(ignored)) {
    Out o = {0};
    PUT(&o, CHECKPOINT_MAGIC);
    PUT(&o, E->default_deadline);
    PUT(&o, E->settle);
    PUT(&o, E->remember);
    put_dict(&o, &E->streams);
    put_dict(&o, &E->groups);
    for (uint32_t sid = 0; sid < E->streams.n; sid++) {
        StreamInfo *si = &E->sinfo[sid];
        PUT(&o, si->deadline);
        uint32_t n = (uint32_t)si->n;
        PUT(&o, n);
        out_put(&o, si->gids, si->n * sizeof(uint32_t));
    }
    PUT(&o, E->records);
    PUT(&o, E->repeats);
    PUT(&o, E->judged);
    PUT(&o, E->evicted);
    PUT(&o, E->known_n);
    for (uint32_t i = 0; i <= E->known_mask; i++)
        if (E->known[i]) PUT(&o, E->known[i]);
    PUT(&o, E->live);
    for (uint32_t idx = 0; idx < E->pool_n; idx++) {
        Entry *e = E->pool[idx];
        if (!e) continue;
        uint8_t flags = e->flags & ~E_DIRTY;
        PUT(&o, e->t0);
        PUT(&o, e->r0);
        PUT(&o, e->p_max_attempt);
        PUT(&o, e->sid);
        PUT(&o, flags);
        PUT(&o, e->nslots);
        PUT(&o, e->nfp);
        PUT(&o, e->idlen);
        out_put(&o, slots_of(e), e->nslots * sizeof(Slot));
        out_put(&o, fps_of(e), e->nfp * 8);
        out_put(&o, id_of(e), e->idlen);
    }
    PUT(&o, E->clive);
    for (uint32_t sid = 0; sid < E->streams.n; sid++) { /* in FIFO order, to keep it */
        StreamInfo *si = &E->sinfo[sid];
        for (size_t k = si->fifo_head; k < si->fifo_n; k++) {
            Compact *c = si->fifo[k];
            if (c->dead) continue;
            out_put(&o, c, sizeof(Compact));
            out_put(&o, cfps(c), (size_t)c->nfp * 8);
        }
    }
    put_dict(&o, &E->producers);
    PUT(&o, E->missing);
    uint64_t nseqs = E->nseqs;
    PUT(&o, nseqs);
    for (size_t i = 0; i < E->nseqs; i++) {
        SeqKey *k = &E->seqs[i];
        PUT(&o, k->pid);
        PUT(&o, k->sid);
        PUT(&o, k->gid);
        PUT(&o, k->kind);
        PUT(&o, k->hw);
        PUT(&o, k->top);
        PUT(&o, k->nholes);
        PUT(&o, k->nshown);
        out_put(&o, k->holes, k->nholes * sizeof(Hole));
    }
    if (o.failed) { free(o.buf); return PyErr_NoMemory(); }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)o.buf, (Py_ssize_t)o.n);
    free(o.buf);
    return bytes;
}

/* The sequences of a checkpoint, their timers set again. */
static int get_sequences(Engine *E, In *in) {
    uint64_t nseqs;
    if (get_dict(in, &E->producers)) return -1;
    GET(in, E->missing);
    GET(in, nseqs);
    for (uint64_t i = 0; i < nseqs && !in->failed; i++) {
        SeqKey k;
        memset(&k, 0, sizeof k);
        GET(in, k.pid);
        GET(in, k.sid);
        GET(in, k.gid);
        GET(in, k.kind);
        GET(in, k.hw);
        GET(in, k.top);
        GET(in, k.nholes);
        GET(in, k.nshown);
        if (in->failed || k.pid >= E->producers.n || k.sid >= E->streams.n ||
            (k.kind == K_CONSUME && k.gid >= E->groups.n))
            return -1;
        if ((size_t)(in->end - in->p) / sizeof(Hole) < k.nholes || k.nshown > k.nholes) return -1;
        int64_t ki = seq_index(E, k.pid, k.sid, k.gid, k.kind);
        if (ki != (int64_t)i) return -1;
        SeqKey *at = &E->seqs[ki];
        at->hw = k.hw;
        at->top = k.top;
        for (uint32_t h = 0; h < k.nholes; h++) {
            if (hole_room(E, at)) return -1;
            in_get(in, &at->holes[at->nholes++], sizeof(Hole));
            E->open_holes++;
        }
        at->nshown = k.nshown;
        if (seq_schedule(E, (uint32_t)ki)) return -1;
    }
    return in->failed ? -1 : 0;
}

/* loads(bytes): replaces an empty engine's state with a checkpoint's. */
static PyObject *Engine_loads(Engine *E, PyObject *arg) {
    if (E->live || E->streams.n || E->nseqs) {
        PyErr_SetString(EngineError, "loads() needs a fresh engine");
        return NULL;
    }
    Py_buffer view;
    if (get_body(arg, &view)) return NULL;
    In in = {view.buf, (const uint8_t *)view.buf + view.len, 0};
    uint64_t magic;
    GET(&in, magic);
    if (magic != CHECKPOINT_MAGIC && magic != CHECKPOINT_MAGIC_1) {
        PyBuffer_Release(&view);
        PyErr_SetString(EngineError, "not a checkpoint");
        return NULL;
    }
    GET(&in, E->default_deadline);
    GET(&in, E->settle);
    GET(&in, E->remember);
    if (get_dict(&in, &E->streams) || get_dict(&in, &E->groups)) goto bad;
    for (uint32_t sid = 0; sid < E->streams.n && !in.failed; sid++) {
        Str st = {(const uint8_t *)E->streams.names[sid], E->streams.lens[sid], 0};
        if (stream_index(E, &st) != sid) goto bad;
        StreamInfo *si = &E->sinfo[sid];
        uint32_t n;
        GET(&in, si->deadline);
        GET(&in, n);
        for (uint32_t g = 0; g < n && !in.failed; g++) {
            uint32_t gid;
            GET(&in, gid);
            if (expect_group(E, sid, gid) < 0) goto bad;
        }
    }
    GET(&in, E->records);
    GET(&in, E->repeats);
    GET(&in, E->judged);
    GET(&in, E->evicted);
    uint32_t known_n;
    GET(&in, known_n);
    for (uint32_t i = 0; i < known_n && !in.failed; i++) {
        uint64_t h;
        GET(&in, h);
        if (known_add(E, h)) goto bad;
    }
    uint32_t live;
    GET(&in, live);
    for (uint32_t i = 0; i < live && !in.failed; i++) {
        Entry hdr;
        memset(&hdr, 0, sizeof hdr);
        GET(&in, hdr.t0);
        GET(&in, hdr.r0);
        GET(&in, hdr.p_max_attempt);
        GET(&in, hdr.sid);
        GET(&in, hdr.flags);
        GET(&in, hdr.nslots);
        GET(&in, hdr.nfp);
        GET(&in, hdr.idlen);
        if (in.failed || hdr.sid >= E->streams.n) goto bad;
        Entry *e = entry_alloc(hdr.nslots, hdr.nfp ? hdr.nfp : 1, hdr.idlen);
        if (!e) goto bad;
        uint16_t sc = e->slot_cap, fc = e->fp_cap;
        memcpy(e, &hdr, sizeof hdr);
        e->slot_cap = sc;
        e->fp_cap = fc;
        in_get(&in, slots_of(e), hdr.nslots * sizeof(Slot));
        in_get(&in, fps_of(e), hdr.nfp * 8);
        in_get(&in, id_of(e), hdr.idlen);
        if (in.failed) { free(e); goto bad; }
        e->hash = key_hash(e->sid, (const uint8_t *)id_of(e), e->idlen);
        int found;
        uint32_t j = table_find(E, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
        if (found) { free(e); goto bad; }
        int64_t idx = entry_insert(E, e, j);
        if (idx < 0 || schedule(E, (uint32_t)idx)) goto bad;
    }
    uint32_t compacts;
    GET(&in, compacts);
    for (uint32_t i = 0; i < compacts && !in.failed; i++) {
        Compact hdr;
        GET(&in, hdr);
        if (in.failed || hdr.sid >= E->streams.n) goto bad;
        Compact *c = malloc(sizeof(Compact) + (size_t)hdr.nfp * 8);
        if (!c) goto bad;
        *c = hdr;
        in_get(&in, cfps(c), (size_t)hdr.nfp * 8);
        if (in.failed || compact_insert(E, c)) { free(c); goto bad; }
    }
    if (magic == CHECKPOINT_MAGIC && get_sequences(E, &in)) goto bad;
    if (in.failed || in.p != in.end) goto bad;
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
bad:
    PyBuffer_Release(&view);
    if (!PyErr_Occurred()) PyErr_SetString(EngineError, "checkpoint is truncated or corrupt");
    return NULL;
}

/* ---------------------------------------------------------------- module */

static PyObject *body_keys(PyObject *Py_UNUSED(mod), PyObject *body) {
    /* keys(body) -> [(stream, message_id, kind)]: for tests and tools */
    Py_buffer view;
    if (get_body(body, &view)) return NULL;
    Cursor c = {view.buf, (const uint8_t *)view.buf + view.len};
    uint32_t n;
    if (open_body(&c, &n, NULL)) { PyBuffer_Release(&view); return bad_body(); }
    PyObject *out = PyList_New(0);
    for (uint32_t i = 0; out && i < n; i++) {
        Rec r;
        if (read_record(&c, &r)) { Py_DECREF(out); PyBuffer_Release(&view); return bad_body(); }
        PyObject *t = Py_BuildValue("(s#s#s#)", r.text[F_STREAM].s, (Py_ssize_t)r.text[F_STREAM].n,
                                    r.text[F_MESSAGE_ID].s, (Py_ssize_t)r.text[F_MESSAGE_ID].n, r.text[F_KIND].s,
                                    (Py_ssize_t)r.text[F_KIND].n);
        if (!t || PyList_Append(out, t)) { Py_XDECREF(t); Py_DECREF(out); out = NULL; break; }
        Py_DECREF(t);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef Engine_methods[] = {
    {"set_deadline", (PyCFunction)Engine_set_deadline, METH_VARARGS, "set_deadline(stream, seconds)"},
    {"configure", (PyCFunction)Engine_configure, METH_VARARGS, "configure(deadline, settle, remember)"},
    {"expected", (PyCFunction)Engine_expected, METH_NOARGS, "expected() -> {stream: [group]}"},
    {"new_groups", (PyCFunction)Engine_new_groups, METH_O, "new_groups(bodies) -> [(stream, group)]"},
    {"expect", (PyCFunction)Engine_expect, METH_VARARGS, "expect(stream, group) -> bool"},
    {"deferred_keys", (PyCFunction)Engine_deferred_keys, METH_NOARGS,
     "deferred_keys() -> [(stream, message_id)] to load before apply_deferred()"},
    {"apply_deferred", (PyCFunction)Engine_apply_deferred, METH_NOARGS, "apply_deferred() -> records"},
    {"install", (PyCFunction)Engine_install, METH_O, "install(verdict rows)"},
    {"apply", (PyCFunction)Engine_apply, METH_VARARGS, "apply(body, received_at) -> records"},
    {"advance", (PyCFunction)Engine_advance, METH_VARARGS, "advance(now, receipt_watermark)"},
    {"drain", (PyCFunction)Engine_drain, METH_NOARGS, "drain() -> (pairs, verdict rows)"},
    {"in_flight", (PyCFunction)Engine_in_flight, METH_NOARGS, "in_flight() -> {(stream, group): n}"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "stats() -> dict"},
    {"backfill_scan", (PyCFunction)Engine_backfill_scan, METH_VARARGS, "backfill_scan(body, stream) -> n"},
    {"backfill_finish", (PyCFunction)Engine_backfill_finish, METH_VARARGS, "backfill_finish(stream, groups) -> n"},
    {"dumps", (PyCFunction)Engine_dumps, METH_NOARGS, "dumps() -> bytes"},
    {"loads", (PyCFunction)Engine_loads, METH_O, "loads(bytes)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "msgtally.reconcile._engine.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_doc = "The per-id state machine of the reconcile engine.",
};

static PyMethodDef module_methods[] = {
    {"body_keys", body_keys, METH_O, "body_keys(body) -> [(stream, message_id, kind)]"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_engine", "The reconcile engine's state machine.", -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__engine(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    EngineError = PyErr_NewException("msgtally.reconcile._engine.EngineError", PyExc_ValueError, NULL);
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) || PyModule_AddObject(m, "EngineError", EngineError)) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *names = PyTuple_New(N_TALLY);
    for (int k = 0; k < N_TALLY; k++) PyTuple_SET_ITEM(names, k, PyUnicode_FromString(TALLY_NAMES[k]));
    PyModule_AddObject(m, "TALLY_FIELDS", names);
    PyModule_AddIntConstant(m, "SKETCH_OFFSET", SKETCH_OFFSET);
    PyModule_AddIntConstant(m, "MAX_GROUPS", MAX_GROUPS);
    PyModule_AddIntConstant(m, "MAX_GROUPS_PER_STREAM", MAX_GROUPS_PER_STREAM);
    PyModule_AddObject(m, "SKETCH_GAMMA", PyFloat_FromDouble(SKETCH_GAMMA));
    return m;
}
