/* The machine's own structures, shared by its files (machine.c, sequences.c,
 * checkpoint.c). Nothing outside reconcile/machine/ includes this. */
#ifndef MSGTALLY_MACHINE_INTERNAL_H
#define MSGTALLY_MACHINE_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "logbody.h"
#include "machine.h"

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
static inline uint64_t hash_bytes(const uint8_t *p, size_t n, uint64_t seed) {
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

/* Room for one more item in a growable array (doubling from `first`); -1 when
 * out of memory or when the size would pass what size_t holds. */
static inline int grow(void *items_ptr, size_t *cap, size_t n, size_t size, size_t first) {
    void **items = (void **)items_ptr;
    if (n < *cap) return 0;
    size_t new_cap = *cap ? *cap * 2 : first;
    if (new_cap < *cap || new_cap > SIZE_MAX / size) return -1;
    void *p = realloc(*items, new_cap * size);
    if (!p) return -1;
    *items = p;
    *cap = new_cap;
    return 0;
}

/* ------------------------------------------------------------ dictionaries */
/* Stream, group and producer names, interned to small integers. */

typedef struct {
    char **names;
    uint32_t *lens;
    uint32_t n, cap;
    uint32_t *table; /* index + 1, 0 empty */
    uint32_t mask;
} Dict;

int dict_init(Dict *d);
void dict_free(Dict *d);
/* The index of a name, added when new (`add`); -2 absent, -1 out of memory or past MC_MAX_NAMES. */
int64_t dict_get(Dict *d, const uint8_t *s, uint32_t n, int add);

/* ------------------------------------------------------------------ entries */

enum { CLS_PENDING = 0, CLS_DELIVERED, CLS_LOST, CLS_RECOVERED, CLS_UNEXPECTED, CLS_NONE };

/* Slot flags: state frozen at the verdict, and what the records showed. */
enum { SL_LATE = 1, SL_DL = 2, SL_ACKED = 4, SL_PANY = 8, SL_LATENCY = 16, SL_ALL = 31 };
/* Entry flags. E_FPSET: the fingerprints are in a set of their own (fps_of(e)[0] points to it). */
enum { E_PANY = 1, E_ACKED = 2, E_T0_FROZEN = 4, E_DIRTY = 8, E_PERSISTED = 16, E_LOADED = 32, E_FPSET = 64,
       E_SAVED = E_PANY | E_ACKED | E_T0_FROZEN | E_PERSISTED | E_LOADED };

typedef struct {
    double first_ts;     /* earliest consume ts: the deadline base of an unproduced id */
    double first_ok;     /* earliest ok consume ts (INFINITY if none) */
    double latency;      /* observed latency, valid with SL_LATENCY */
    uint64_t n, ok;      /* consume records, ok ones: no bound on the records of one id */
    uint32_t max_attempt; /* highest attempt (this group): the contract's attempts are 31 bits */
    uint16_t gid;        /* MC_MAX_GROUPS */
    uint8_t cls, flags;
} Slot;

typedef struct {
    uint64_t hash;
    double t0; /* earliest produce ts (INFINITY if none), frozen at the first verdict */
    double r0; /* receipt time of the first body that named the id */
    uint32_t p_max_attempt;
    uint32_t gen;
    uint32_t sid;
    uint32_t idx; /* in the pool */
    uint16_t nslots, slot_cap; /* MC_MAX_GROUPS_PER_STREAM */
    uint16_t nfp, fp_cap;      /* inline fingerprints, at most MC_FP_INLINE + 2; then a set (E_FPSET) */
    uint16_t idlen;            /* MC_MAX_TEXT_BYTES */
    uint8_t flags;
    uint8_t _pad;
    /* followed by: Slot slots[slot_cap]; uint64_t fps[fp_cap]; char id[idlen] */
} Entry;

/* The fingerprints of an id with many records: open addressing, 0 empty
 * (a zero fingerprint is `has_zero`). */
typedef struct {
    uint64_t n, mask;
    int has_zero;
    uint64_t keys[];
} FpSet;

/* A plain delivery in its compact form: an id judged `delivered` for every
 * expected group, in time and once, never retried nor dead-lettered, needs no
 * more than this until it is forgotten: its key (two hashes: the id itself is
 * dropped), t0 and first receipt (when to forget it; the deadline of a group
 * that appears later), how many of the stream's groups it was delivered to,
 * its records' fingerprints (a resend is still recognised), and when each of
 * those groups had its ok delivery (its latency, for a verdict row later). A
 * record that is not a resend turns it back into an entry (reinflate). */
typedef struct {
    uint64_t hash, hash2;
    double t0, r0;
    uint32_t sid;
    uint16_t nfp;   /* at most MC_FP_INLINE + 2: an id with more is never compact */
    uint8_t ngroups, dead; /* a stream with more than 255 groups has no compact ids */
    /* followed by uint64_t fps[nfp]; double ok_at[ngroups] (NaN: not known) */
} Compact;

static inline uint64_t *cfps(Compact *c) { return (uint64_t *)(c + 1); }
/* The first ok delivery of each of the stream's first `ngroups` groups, in their order. */
static inline double *cok_at(Compact *c) { return (double *)(cfps(c) + c->nfp); }
static inline size_t compact_size(uint16_t nfp, uint8_t ngroups) {
    return sizeof(Compact) + (size_t)nfp * 8 + (size_t)ngroups * sizeof(double);
}
static inline Slot *slots_of(Entry *e) { return (Slot *)(e + 1); }
static inline uint64_t *fps_of(Entry *e) { return (uint64_t *)(slots_of(e) + e->slot_cap); }
static inline char *id_of(Entry *e) { return (char *)(fps_of(e) + e->fp_cap); }
static inline FpSet *fpset_of(Entry *e) {
    FpSet *s;
    memcpy(&s, fps_of(e), sizeof s);
    return s;
}
static inline size_t entry_size(uint16_t slot_cap, uint16_t fp_cap, uint16_t idlen) {
    return sizeof(Entry) + (size_t)slot_cap * sizeof(Slot) + (size_t)fp_cap * 8 + idlen;
}

/* ------------------------------------------------------------- tallies */


/* The pair of a stream's produce records (their error classes): no group has this index. */
#define PRODUCE_GID UINT32_MAX

typedef struct {
    uint32_t sid, gid;
    int dirty;
    int errors_dirty;
    int64_t errors[MC_N_ERROR]; /* records by error class (a produce pair has only these) */
    int64_t counts[MC_N_TALLY];
    double latency_sum;
    int64_t *hist; /* nbounds + 1 (+Inf) */
    McBins bins; /* sketch bin -> count */
} Pair;

/* ------------------------------------------------------------- timers */

typedef struct {
    double due;
    uint32_t idx, gen;
} Timer;

typedef struct {
    Timer *items;
    size_t n, cap;
} Heap;

int heap_push(Heap *h, double due, uint32_t idx, uint32_t gen);
Timer heap_pop(Heap *h);

typedef struct {
    uint32_t *gids;
    size_t n, cap;
    double deadline;
    /* compact entries of the stream in the order they were made: forgotten from the front */
    Compact **fifo;
    size_t fifo_head, fifo_n, fifo_cap;
} StreamInfo;

/* ------------------------------------------------------------- sequences */

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

/* A record waiting for its id's stored verdicts: its text copied, so the body may go. */
typedef struct {
    Rec r;
    double at;
    uint8_t *text;
} Deferred;

/* A verdict row waiting for the drain; its id is in the machine's arena. */
typedef struct {
    McVerdict v;
    size_t id_off;
} VRow;

/* New (stream, group) pairs of the bodies being checked, not expected yet. */
typedef struct {
    Str stream, group;
} NewGroup;

struct Machine {
    /* why the last call failed */
    int err_kind;
    char err[256];
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
    uint32_t gen_counter; /* the generation of the next entry: a timer of an entry gone is stale */
    void **table; /* the entries (ptable_*) */
    uint32_t mask, live;
    size_t entry_bytes, fpset_bytes;
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
    VRow *vrows;
    size_t nvrows, vrows_cap;
    char *arena; /* the ids of vrows */
    size_t arena_n, arena_cap;
    /* counters */
    uint64_t records, repeats, judged, evicted;
    Entry **graveyard; /* forgotten entries whose verdicts drain() still writes */
    size_t ngraveyard, graveyard_cap;
    /* records of ids that have a verdict in the store and are not in memory:
     * applied once the store's rows are installed (apply_deferred) */
    Deferred *deferred;
    size_t ndeferred, deferred_cap;
    /* touched entries in the current apply, for early verdicts */
    uint32_t *touched;
    size_t ntouched, touched_cap;
    /* a body's records, read whole before any is applied */
    Rec *scratch;
    size_t scratch_cap;
    NewGroup *newg;
    size_t nnewg, newg_cap;
    /* backfill scratch */
    uint32_t *bf_table;
    uint32_t bf_mask, bf_n;
    /* the produce records a back-fill scan met (id key x fingerprint; 0 empty):
     * a record sent again counts once there too */
    uint64_t *bf_seen;
    size_t bf_seen_mask, bf_seen_n;
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
};

/* Sets the reason of a failure: returns -1. */
int mc_fail(Machine *M, int kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static inline double deadline_of(Machine *M, uint32_t sid) { return M->sinfo[sid].deadline; }
static inline uint64_t key_hash(uint32_t sid, const uint8_t *id, uint32_t n) {
    return hash_bytes(id, n, hash_u64(sid, 0x6B6579));
}
static inline uint64_t key_hash2(uint32_t sid, const uint8_t *id, uint32_t n) {
    return hash_bytes(id, n, hash_u64(sid, 0x636F6D70616374ULL));
}

/* machine.c, for the checkpoint */
int64_t stream_index(Machine *M, const Str *s);
int expect_group(Machine *M, uint32_t sid, uint32_t gid);
uint32_t table_find(Machine *M, uint32_t sid, const uint8_t *id, uint32_t n, uint64_t h, int *found);
Entry *entry_alloc(uint16_t slot_cap, uint16_t fp_cap, uint16_t idlen);
void entry_free(Entry *e);
int64_t entry_insert(Machine *M, Entry *e, uint32_t j);
int fp_add(Machine *M, uint32_t idx, uint64_t fp);
uint64_t fp_count(Entry *e);
int fp_each(Entry *e, int (*cb)(void *ctx, uint64_t fp), void *ctx);
int schedule(Machine *M, uint32_t idx);
int compact_insert(Machine *M, Compact *c);
int compact_exists(Machine *M, uint64_t h, uint64_t h2, uint32_t sid);
int known_add(Machine *M, uint64_t h);
void machine_clear(Machine *M);
int machine_init(Machine *M, double deadline, double settle, double remember, const double *bounds, uint32_t nbounds);

/* sequences.c */
int seq_record(Machine *M, const Rec *r, uint32_t sid, double at);
int seq_marks(Machine *M, Cursor *c, double at);
int seq_runs(Machine *M, Cursor *c, double at);
int seq_advance(Machine *M, double watermark);
int seq_drain(Machine *M, const McSink *sink);
int64_t seq_index(Machine *M, uint32_t pid, uint32_t sid, uint32_t gid, int kind);
int hole_room(Machine *M, SeqKey *k);
int seq_schedule(Machine *M, uint32_t ki);

/* checkpoint.c */
int checkpoint_dump(Machine *M, uint8_t **out, size_t *len);
int checkpoint_load(Machine *M, const uint8_t *buf, size_t len);

#endif
