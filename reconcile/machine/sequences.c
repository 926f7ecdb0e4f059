/* Sequences: measurement loss, found rather than guessed.
 *
 * A sender that numbers its records from 1 per (producer, stream, kind,
 * group) shows every record it never delivered as a hole in its numbering,
 * the tail too once its high-water mark (the body's marks: how far it
 * numbered) says so. A hole is declared missing when it is still open, on the
 * receipt clock, `settle` after the body that showed it (a later record came:
 * a batch reordered in flight is not counted), or the stream's deadline +
 * settle after the mark that announced it (its records may wait in a live
 * sender's buffer; a dead sender's never come). The count only grows: a
 * record that comes after its hole was declared is counted in the tallies as
 * any other, and the hole stays missing. */
#include "internal.h"

static inline int same_name(const Dict *d, uint32_t i, const Str *s) {
    return d->lens[i] == s->n && memcmp(d->names[i], s->s, s->n) == 0;
}

static inline uint64_t seq_hash(uint32_t pid, uint32_t sid, uint32_t gid, int kind) {
    return hash_u64(((uint64_t)pid << 32) | sid, hash_u64(((uint64_t)gid << 1) | (uint64_t)kind, 0x736571));
}

static int seq_table_grow(Machine *M) {
    if (M->seq_mask >= UINT32_MAX / 2) return -1;
    uint32_t mask = M->seq_mask * 2 + 1;
    uint32_t *t = calloc((size_t)mask + 1, sizeof(uint32_t));
    if (!t) return -1;
    for (size_t i = 0; i < M->nseqs; i++) {
        SeqKey *k = &M->seqs[i];
        uint32_t j = (uint32_t)seq_hash(k->pid, k->sid, k->gid, k->kind) & mask;
        while (t[j]) j = (j + 1) & mask;
        t[j] = (uint32_t)i + 1;
    }
    free(M->seq_table);
    M->seq_table = t;
    M->seq_mask = mask;
    return 0;
}

int64_t seq_index(Machine *M, uint32_t pid, uint32_t sid, uint32_t gid, int kind) {
    uint32_t j = (uint32_t)seq_hash(pid, sid, gid, kind) & M->seq_mask;
    while (M->seq_table[j]) {
        SeqKey *k = &M->seqs[M->seq_table[j] - 1];
        if (k->pid == pid && k->sid == sid && k->gid == gid && k->kind == kind) return M->seq_table[j] - 1;
        j = (j + 1) & M->seq_mask;
    }
    if (M->nseqs >= MC_MAX_SEQUENCES)
        return mc_fail(M, MC_ESTATE, "the limit of %u sequences is reached", MC_MAX_SEQUENCES);
    if (grow(&M->seqs, &M->seqs_cap, M->nseqs, sizeof(SeqKey), 64)) return -1;
    SeqKey *k = &M->seqs[M->nseqs];
    memset(k, 0, sizeof *k);
    k->pid = pid;
    k->sid = sid;
    k->gid = (uint16_t)gid;
    k->kind = (uint8_t)kind;
    k->due = INFINITY;
    M->seq_table[j] = (uint32_t)++M->nseqs;
    if ((uint64_t)M->nseqs * 2 > M->seq_mask && seq_table_grow(M)) return -1;
    return (int64_t)M->nseqs - 1;
}

/* The sequence of (producer, stream, kind, group): -1 failed, -2 for one
 * that cannot be (a group past the limit of groups). */
static int64_t seq_find(Machine *M, const Str *producer, uint32_t sid, int kind, const Str *group) {
    if (kind == K_CONSUME && group->nil) return -2;
    /* A body holds the records of a few sequences: found again without hashing names. */
    uint32_t slot = (sid * 7 + (uint32_t)kind * 3 + producer->n * 5 + (producer->n ? producer->s[producer->n - 1] : 0) +
                     (kind == K_CONSUME ? group->n * 11 + (group->n ? group->s[group->n - 1] : 0) : 0)) & 15;
    if (M->seq_recent[slot]) {
        SeqKey *k = &M->seqs[M->seq_recent[slot] - 1];
        if (k->sid == sid && k->kind == kind && same_name(&M->producers, k->pid, producer) &&
            (kind == K_PRODUCE || same_name(&M->groups, k->gid, group)))
            return M->seq_recent[slot] - 1;
    }
    int64_t pid = dict_get(&M->producers, producer->s, producer->n, 1);
    int64_t gid = kind == K_CONSUME ? dict_get(&M->groups, group->s, group->n, 1) : 0;
    if (pid < 0 || gid < 0) return -1;
    if (gid > MC_MAX_GROUPS) return -2;
    int64_t i = seq_index(M, (uint32_t)pid, sid, (uint32_t)gid, kind);
    if (i >= 0) M->seq_recent[slot] = (uint32_t)i + 1;
    return i;
}

/* When the first hole of each kind is missing; INFINITY without holes. */
static double seq_due(Machine *M, const SeqKey *k) {
    double due = INFINITY;
    if (k->nshown) due = k->holes[0].opened + M->settle;
    if (k->nholes > k->nshown) {
        double announced = k->holes[k->nshown].opened + deadline_of(M, k->sid) + M->settle;
        if (announced < due) due = announced;
    }
    return due;
}

int seq_schedule(Machine *M, uint32_t ki) {
    SeqKey *k = &M->seqs[ki];
    double due = seq_due(M, k);
    if (due >= k->due) return 0;
    if (!++M->seq_tokens) ++M->seq_tokens; /* 0 means none */
    k->timer = M->seq_tokens;
    k->due = due;
    return heap_push(&M->hole_heap, due, ki, k->timer);
}

int hole_room(Machine *M, SeqKey *k) {
    if (k->nholes < k->hole_cap) return 0;
    size_t cap = k->hole_cap;
    if (cap >= UINT32_MAX / 2)
        return mc_fail(M, MC_ESTATE, "a sequence with more than %u open holes", UINT32_MAX / 2);
    if (grow(&k->holes, &cap, k->nholes, sizeof(Hole), 2)) return -1;
    M->hole_slots += cap - k->hole_cap;
    k->hole_cap = (uint32_t)cap;
    return 0;
}

/* Inserts a hole at i (its place by seq). */
static int hole_insert(Machine *M, SeqKey *k, uint32_t i, Hole h) {
    if (hole_room(M, k)) return -1;
    memmove(k->holes + i + 1, k->holes + i, (k->nholes - i) * sizeof(Hole));
    k->holes[i] = h;
    k->nholes++;
    M->open_holes++;
    return 0;
}

static void hole_remove(Machine *M, SeqKey *k, uint32_t i, uint32_t n) {
    memmove(k->holes + i, k->holes + i + n, (k->nholes - i - n) * sizeof(Hole));
    k->nholes -= n;
    M->open_holes -= n;
    if (!k->nholes) { /* memory is what is open */
        M->hole_slots -= k->hole_cap;
        free(k->holes);
        k->holes = NULL;
        k->hole_cap = 0;
    }
}

/* Takes seq out of hole i (it is in it). */
static int hole_fill(Machine *M, SeqKey *k, uint32_t i, uint64_t seq) {
    Hole *h = &k->holes[i];
    if (h->lo == h->hi) {
        if (i < k->nshown) k->nshown--;
        hole_remove(M, k, i, 1);
    } else if (seq == h->lo) {
        h->lo++;
    } else if (seq == h->hi) {
        h->hi--;
    } else { /* in two, both shown when the whole was */
        Hole above = {seq + 1, h->hi, h->opened};
        h->hi = seq - 1;
        if (hole_insert(M, k, i + 1, above)) return -1;
        if (i < k->nshown) k->nshown++;
    }
    return 0;
}

/* A record numbered `seq` of the sequence, received at `at`. */
static int seq_see(Machine *M, uint32_t ki, uint64_t seq, double at) {
    SeqKey *k = &M->seqs[ki];
    if (seq == 0) return 0; /* numbering starts at 1: 0 is never missing */
    if (seq <= k->top) { /* a record sent late: a shown hole, or a resend */
        uint32_t lo = 0, hi = k->nshown;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (k->holes[mid].hi < seq) lo = mid + 1;
            else hi = mid;
        }
        if (lo == k->nshown || k->holes[lo].lo > seq) return 0; /* received, or declared */
        return hole_fill(M, k, lo, seq);
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
            if (hole_insert(M, k, k->nshown, below)) return -1;
            k->nshown++;
        }
        if (hole_fill(M, k, k->nshown, seq)) return -1;
    } else if (seq > k->hw) {
        if (seq > k->hw + 1 && hole_insert(M, k, k->nholes, (Hole){k->hw + 1, seq - 1, at})) return -1;
        if (seq > k->hw + 1) k->nshown++;
        k->hw = seq;
    }
    return seq_schedule(M, ki);
}

/* A high-water mark: every seq up to `last` was given to a record. */
static int seq_mark(Machine *M, uint32_t ki, uint64_t last, double at) {
    SeqKey *k = &M->seqs[ki];
    if (last <= k->hw) return 0;
    if (k->nholes > k->nshown && k->holes[k->nholes - 1].opened > at) at = k->holes[k->nholes - 1].opened;
    if (hole_insert(M, k, k->nholes, (Hole){k->hw + 1, last, at})) return -1;
    k->hw = last;
    return seq_schedule(M, ki);
}

int seq_record(Machine *M, const Rec *r, uint32_t sid, double at) {
    if (!r->has_seq || r->text[F_PRODUCER].nil || r->seq < 0) return 0;
    int64_t ki = seq_find(M, &r->text[F_PRODUCER], sid, r->kind, &r->text[F_GROUP]);
    if (ki == -2) return 0;
    return ki < 0 ? -1 : seq_see(M, (uint32_t)ki, (uint64_t)r->seq, at);
}

/* Applies a body's marks (read whole before: they are well-formed). */
int seq_marks(Machine *M, Cursor *c, double at) {
    uint32_t n;
    char err[LB_ERR];
    if (lb_marks_open(c, &n, err)) return mc_fail(M, MC_EBODY, "%s", err);
    for (uint32_t i = 0; i < n; i++) {
        Mark m;
        if (lb_mark(c, &m, i, err)) return mc_fail(M, MC_EBODY, "%s", err);
        if (m.last <= 0) continue;
        int64_t sid = stream_index(M, &m.stream);
        if (sid < 0) return -1;
        int64_t ki = seq_find(M, &m.producer, (uint32_t)sid, m.kind, &m.group);
        if (ki == -2) continue;
        if (ki < 0 || seq_mark(M, (uint32_t)ki, (uint64_t)m.last, at)) return -1;
    }
    return 0;
}

/* Applies a slice's runs (read whole before: they are well-formed): each seq
 * as a record of its sequence numbered so, received at `at`. */
int seq_runs(Machine *M, Cursor *c, double at) {
    uint32_t n;
    char err[LB_ERR];
    if (lb_runs_open(c, &n, err)) return mc_fail(M, MC_EBODY, "%s", err);
    for (uint32_t i = 0; i < n; i++) {
        Run run;
        if (lb_run(c, &run, i, err)) return mc_fail(M, MC_EBODY, "%s", err);
        int64_t sid = stream_index(M, &run.stream);
        if (sid < 0) return -1;
        int64_t ki = seq_find(M, &run.producer, (uint32_t)sid, run.kind, &run.group);
        if (ki == -1) return -1;
        for (uint32_t k = 0; k < run.count; k++) {
            int64_t seq;
            if (lb_run_seq(c, &seq, i, k, err)) return mc_fail(M, MC_EBODY, "%s", err);
            if (ki >= 0 && seq_see(M, (uint32_t)ki, (uint64_t)seq, at)) return -1;
        }
    }
    return 0;
}

/* Removes, out of holes [i, i + n), the first ones due by the watermark (`wait`
 * after they opened); *gone says how many; returns how many seqs they held. */
static uint64_t holes_due(Machine *M, SeqKey *k, uint32_t i, uint32_t n, double wait, double watermark,
                          uint32_t *gone) {
    uint32_t due = 0;
    uint64_t seqs = 0;
    for (; due < n && k->holes[i + due].opened + wait <= watermark; due++) {
        uint64_t size = k->holes[i + due].hi - k->holes[i + due].lo + 1;
        seqs = size > UINT64_MAX - seqs ? UINT64_MAX : seqs + size;
    }
    if (due) hole_remove(M, k, i, due);
    *gone = due;
    return seqs;
}

int seq_advance(Machine *M, double watermark) {
    Heap *h = &M->hole_heap;
    while (h->n && h->items[0].due <= watermark) {
        Timer t = heap_pop(h);
        SeqKey *k = &M->seqs[t.idx];
        if (k->timer != t.gen) continue; /* stale: the sequence has another timer */
        k->timer = 0;
        k->due = INFINITY;
        uint32_t gone;
        uint64_t n = holes_due(M, k, 0, k->nshown, M->settle, watermark, &gone);
        k->nshown -= gone;
        uint64_t m = holes_due(M, k, k->nshown, k->nholes - k->nshown, deadline_of(M, k->sid) + M->settle,
                               watermark, &gone);
        n = m > UINT64_MAX - n ? UINT64_MAX : n + m;
        if (n) {
            if (n > (uint64_t)(INT64_MAX - k->undrained)) n = (uint64_t)(INT64_MAX - k->undrained);
            k->undrained += (int64_t)n;
            M->missing = n > UINT64_MAX - M->missing ? UINT64_MAX : M->missing + n;
            if (!k->dirty) {
                if (grow(&M->seq_dirty, &M->seq_dirty_cap, M->nseq_dirty, sizeof(uint32_t), 64)) return -1;
                M->seq_dirty[M->nseq_dirty++] = t.idx;
                k->dirty = 1;
            }
        }
        if (seq_schedule(M, t.idx)) return -1;
    }
    return 0;
}

int seq_drain(Machine *M, const McSink *sink) {
    int failed = 0;
    for (size_t i = 0; i < M->nseq_dirty; i++) {
        SeqKey *k = &M->seqs[M->seq_dirty[i]];
        k->dirty = 0;
        if (!failed) failed = sink->missing(sink->ctx, k->sid, k->kind == K_CONSUME, k->gid, k->undrained);
        k->undrained = 0;
    }
    M->nseq_dirty = 0;
    return failed;
}
