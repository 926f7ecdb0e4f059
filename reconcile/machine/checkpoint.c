/* Checkpoints: the machine's whole state as bytes, and back.
 *
 * Format 4 ("MTMCKPT\0"), written since this machine (3 was the same but for
 * the compact ids' first ok deliveries, read as not known):
 *
 *   header  magic "MTMCKPT\0" | version u32 (4) | sections u32 | body length u64 | checksum u64
 *   body    sections, each: tag u32 | 0 u32 | length u64 | payload
 *
 * Little-endian; the checksum is a 64-bit hash of the body. The sections come
 * in one order (SECTIONS below), every one present. Every field is read on
 * its own and checked against the ranges and the dictionaries loaded before
 * it (a stream id against the streams, a group id against the groups, a
 * class, flags, counts, holes in order): a checkpoint that fails any check is
 * refused whole, naming the section and the field, and the machine stays
 * empty (mc_load loads into a machine of its own, swapped in on success).
 *
 * Formats 2 ("mtmckpt2") and 1 ("mtmckpt1", before sequences), written by
 * earlier versions as raw structs, are read field by field with the same
 * checks. */
#include <stdio.h>

#include "internal.h"

#define CK_VERSION 4
static const uint8_t MAGIC3[8] = {'M', 'T', 'M', 'C', 'K', 'P', 'T', 0};
static const uint8_t MAGIC2[8] = {'m', 't', 'm', 'c', 'k', 'p', 't', '2'};
static const uint8_t MAGIC1[8] = {'m', 't', 'm', 'c', 'k', 'p', 't', '1'};
#define CK_SEED 0x6D746D636B707433ULL
/* Compact ids of format 2 could hold this many fingerprints (the old cap of an id). */
#define CK_COMPACT_FPS 4096u

enum { S_CONF = 1, S_STREAMS, S_GROUPS, S_STREAMINFO, S_COUNTERS, S_KNOWN, S_ENTRIES, S_COMPACTS, S_PRODUCERS,
       S_SEQUENCES, N_SECTIONS = S_SEQUENCES };
static const char *const SECTION_NAMES[N_SECTIONS + 1] = {
    "", "config", "streams", "groups", "stream info", "counters", "known", "entries", "compacts", "producers",
    "sequences"};

/* ------------------------------------------------------------------ out */

typedef struct {
    uint8_t *buf;
    size_t n, cap;
    int failed;
} Out;

static void put(Out *o, const void *p, size_t n) {
    if (o->failed || !n) return;
    if (n > SIZE_MAX - o->n) { o->failed = 1; return; }
    if (o->n + n > o->cap) {
        size_t cap = o->cap ? o->cap : 1 << 16;
        while (cap < o->n + n) {
            if (cap > SIZE_MAX / 2) { o->failed = 1; return; }
            cap *= 2;
        }
        uint8_t *b = realloc(o->buf, cap);
        if (!b) { o->failed = 1; return; }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->n, p, n);
    o->n += n;
}

static void put_le(Out *o, uint64_t v, int bytes) {
    uint8_t b[8];
    for (int i = 0; i < bytes; i++) b[i] = (uint8_t)(v >> (8 * i));
    put(o, b, (size_t)bytes);
}
static void put_u8(Out *o, uint8_t v) { put_le(o, v, 1); }
static void put_u16(Out *o, uint16_t v) { put_le(o, v, 2); }
static void put_u32(Out *o, uint32_t v) { put_le(o, v, 4); }
static void put_u64(Out *o, uint64_t v) { put_le(o, v, 8); }
static void put_f64(Out *o, double d) {
    uint64_t v;
    memcpy(&v, &d, 8);
    put_le(o, v, 8);
}

/* ------------------------------------------------------------------- in */

typedef struct {
    const uint8_t *p, *end;
    int failed;
} In;

static uint64_t get_le(In *in, int bytes) {
    if (in->failed || in->end - in->p < bytes) { in->failed = 1; return 0; }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)in->p[i] << (8 * i);
    in->p += bytes;
    return v;
}
static uint8_t get_u8(In *in) { return (uint8_t)get_le(in, 1); }
static uint16_t get_u16(In *in) { return (uint16_t)get_le(in, 2); }
static uint32_t get_u32(In *in) { return (uint32_t)get_le(in, 4); }
static uint64_t get_u64(In *in) { return get_le(in, 8); }
static double get_f64(In *in) {
    uint64_t v = get_le(in, 8);
    double d;
    memcpy(&d, &v, 8);
    return d;
}
static size_t left(const In *in) { return (size_t)(in->end - in->p); }

/* The context of a failure: which section (and item) is being read. */
typedef struct {
    Machine *M;
    const char *section;
} Ck;

#define BAD(ck, ...) bad_((ck), __VA_ARGS__)
static int bad_(Ck *ck, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
#include <stdarg.h>
static int bad_(Ck *ck, const char *fmt, ...) {
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mc_fail(ck->M, MC_ECHECKPOINT, "checkpoint: section '%s': %s", ck->section, what);
}
#define TRUNC(ck, in, what) do { if ((in)->failed) return BAD((ck), "truncated in %s", (what)); } while (0)

/* ------------------------------------------------------------ sections read */

static int read_names(Ck *ck, In *in, Dict *d) {
    uint32_t n = get_u32(in);
    TRUNC(ck, in, "the count of names");
    if (n > MC_MAX_NAMES) return BAD(ck, "%u names, past the limit of %u", n, MC_MAX_NAMES);
    if (n > left(in) / 4) return BAD(ck, "%u names in %zu bytes", n, left(in));
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = get_u32(in);
        TRUNC(ck, in, "a name's length");
        if (len > MC_MAX_TEXT_BYTES) return BAD(ck, "name %u: %u bytes, past the limit of %u", i, len, MC_MAX_TEXT_BYTES);
        if (left(in) < len) return BAD(ck, "name %u: truncated", i);
        if (!lb_is_utf8(in->p, len)) return BAD(ck, "name %u: not UTF-8", i);
        int64_t got = dict_get(d, in->p, len, 1);
        if (got == -1) return -1;
        if (got != (int64_t)i) return BAD(ck, "name %u: the same as name %lld", i, (long long)got);
        in->p += len;
    }
    return 0;
}

static int read_conf(Ck *ck, In *in, Machine *T) {
    double deadline = get_f64(in), settle = get_f64(in), remember = get_f64(in);
    TRUNC(ck, in, "the settings");
    if (!isfinite(deadline) || deadline <= 0) return BAD(ck, "field 'deadline' is %g", deadline);
    if (!isfinite(settle) || settle < 0) return BAD(ck, "field 'settle' is %g", settle);
    if (!isfinite(remember) || remember < 0) return BAD(ck, "field 'remember' is %g", remember);
    T->default_deadline = deadline;
    T->settle = settle;
    T->remember = remember;
    return 0;
}

static int read_streaminfo(Ck *ck, In *in, Machine *T, int with_count) {
    if (with_count) {
        uint32_t n = get_u32(in);
        TRUNC(ck, in, "the count of streams");
        if (n != T->streams.n) return BAD(ck, "%u streams, the names have %u", n, T->streams.n);
    }
    for (uint32_t sid = 0; sid < T->streams.n; sid++) {
        Str st = {(const uint8_t *)T->streams.names[sid], T->streams.lens[sid], 0};
        if (stream_index(T, &st) != sid) return -1;
        StreamInfo *si = &T->sinfo[sid];
        double deadline = get_f64(in);
        uint32_t n = get_u32(in);
        TRUNC(ck, in, "a stream's deadline and groups");
        if (!isfinite(deadline) || deadline <= 0) return BAD(ck, "stream %u: field 'deadline' is %g", sid, deadline);
        if (n > MC_MAX_GROUPS_PER_STREAM) return BAD(ck, "stream %u: %u groups, past the limit of %u", sid, n, MC_MAX_GROUPS_PER_STREAM);
        si->deadline = deadline;
        for (uint32_t g = 0; g < n; g++) {
            uint32_t gid = get_u32(in);
            TRUNC(ck, in, "a stream's groups");
            if (gid >= T->groups.n) return BAD(ck, "stream %u: group %u of %u groups", sid, gid, T->groups.n);
            int got = expect_group(T, sid, gid);
            if (got < 0) return T->err_kind ? BAD(ck, "stream %u: %s", sid, T->err) : -1;
            if (!got) return BAD(ck, "stream %u: group %u twice", sid, gid);
        }
    }
    return 0;
}

static int read_counters(Ck *ck, In *in, Machine *T) {
    T->records = get_u64(in);
    T->repeats = get_u64(in);
    T->judged = get_u64(in);
    T->evicted = get_u64(in);
    TRUNC(ck, in, "the counters");
    return 0;
}

static int read_known(Ck *ck, In *in, Machine *T, int wide) {
    uint64_t n = wide ? get_u64(in) : get_u32(in);
    TRUNC(ck, in, "the count of known ids");
    if (n > MC_MAX_KNOWN) return BAD(ck, "%llu known ids, past the limit of %u", (unsigned long long)n, MC_MAX_KNOWN);
    if (n > left(in) / 8) return BAD(ck, "%llu known ids in %zu bytes", (unsigned long long)n, left(in));
    for (uint64_t i = 0; i < n; i++)
        if (known_add(T, get_u64(in))) return -1;
    return 0;
}

/* One entry, its fields read by the version's layout: checked, then put in place. */
static int read_entry(Ck *ck, In *in, Machine *T, uint64_t i, int version) {
    double t0 = get_f64(in), r0 = get_f64(in);
    uint32_t p_max = get_u32(in), sid = get_u32(in);
    uint8_t flags = get_u8(in);
    uint16_t nslots = get_u16(in);
    uint64_t nfp;
    uint16_t idlen;
    if (version >= 3) {
        idlen = get_u16(in);
        nfp = get_u64(in);
    } else {
        nfp = get_u16(in);
        idlen = get_u16(in);
    }
    TRUNC(ck, in, "an entry's header");
    if (sid >= T->streams.n) return BAD(ck, "entry %llu: stream %u of %u streams", (unsigned long long)i, sid, T->streams.n);
    if (flags & ~E_SAVED) return BAD(ck, "entry %llu: flags 0x%x", (unsigned long long)i, flags);
    if (nslots > MC_MAX_GROUPS_PER_STREAM)
        return BAD(ck, "entry %llu: %u slots, past the limit of %u", (unsigned long long)i, nslots, MC_MAX_GROUPS_PER_STREAM);
    if (idlen > MC_MAX_TEXT_BYTES) return BAD(ck, "entry %llu: an id of %u bytes", (unsigned long long)i, idlen);
    if (isnan(t0) || t0 == -INFINITY) return BAD(ck, "entry %llu: field 't0' is %g", (unsigned long long)i, t0);
    if (isnan(r0) || r0 == INFINITY) return BAD(ck, "entry %llu: field 'r0' is %g", (unsigned long long)i, r0);
    size_t slot_bytes = version >= 3 ? 48 : 40;
    if (nslots > left(in) / slot_bytes) return BAD(ck, "entry %llu: truncated in its slots", (unsigned long long)i);
    uint16_t fp_inline = nfp > MC_FP_INLINE ? 1 : (uint16_t)(nfp ? nfp : 1);
    Entry *e = entry_alloc(nslots, fp_inline, idlen);
    if (!e) return -1;
    e->t0 = t0;
    e->r0 = r0;
    e->p_max_attempt = p_max;
    e->sid = sid;
    e->flags = flags;
    for (uint16_t k = 0; k < nslots; k++) {
        Slot *s = &slots_of(e)[k];
        memset(s, 0, sizeof *s);
        if (version >= 3) {
            s->gid = get_u16(in);
            s->cls = get_u8(in);
            s->flags = get_u8(in);
            s->max_attempt = get_u32(in);
            s->n = get_u64(in);
            s->ok = get_u64(in);
        } else {
            s->n = get_u32(in);
            s->ok = get_u32(in);
            s->max_attempt = get_u32(in);
            s->gid = get_u16(in);
            s->cls = get_u8(in);
            s->flags = get_u8(in);
        }
        s->first_ts = get_f64(in);
        s->first_ok = get_f64(in);
        s->latency = get_f64(in);
        e->nslots = (uint16_t)(k + 1);
        const char *bad = in->failed ? "truncated" : s->gid >= T->groups.n ? "group" : s->cls > CLS_NONE ? "class"
                          : (s->flags & ~SL_ALL) ? "flags" : s->ok > s->n ? "ok" : isnan(s->first_ts) ? "first_ts"
                          : isnan(s->first_ok) ? "first_ok" : NULL;
        for (uint16_t q = 0; !bad && q < k; q++)
            if (slots_of(e)[q].gid == s->gid) bad = "group (twice)";
        if (bad) {
            entry_free(e);
            return BAD(ck, "entry %llu: slot %u: field '%s'", (unsigned long long)i, k, bad);
        }
    }
    if (nfp > left(in) / 8) {
        entry_free(e);
        return BAD(ck, "entry %llu: %llu fingerprints in %zu bytes", (unsigned long long)i, (unsigned long long)nfp, left(in));
    }
    const uint8_t *fps = in->p;
    in->p += nfp * 8;
    if (left(in) < idlen) {
        entry_free(e);
        return BAD(ck, "entry %llu: truncated in its id", (unsigned long long)i);
    }
    if (!lb_is_utf8(in->p, idlen)) {
        entry_free(e);
        return BAD(ck, "entry %llu: field 'id' is not UTF-8", (unsigned long long)i);
    }
    memcpy(id_of(e), in->p, idlen);
    in->p += idlen;
    e->hash = key_hash(e->sid, (const uint8_t *)id_of(e), e->idlen);
    int found;
    uint32_t j = table_find(T, e->sid, (const uint8_t *)id_of(e), e->idlen, e->hash, &found);
    if (found) {
        entry_free(e);
        return BAD(ck, "entry %llu: the id of an earlier entry", (unsigned long long)i);
    }
    int64_t idx = entry_insert(T, e, j);
    if (idx < 0) return -1;
    for (uint64_t k = 0; k < nfp; k++) {
        uint64_t fp;
        memcpy(&fp, fps + 8 * k, 8); /* written little-endian, read on little-endian hosts */
        if (fp_add(T, (uint32_t)idx, fp)) return -1;
    }
    return schedule(T, (uint32_t)idx);
}

static int read_entries(Ck *ck, In *in, Machine *T, int version) {
    uint64_t n = version >= 3 ? get_u64(in) : get_u32(in);
    TRUNC(ck, in, "the count of entries");
    if (n > MC_MAX_IDS) return BAD(ck, "%llu entries, past the limit of %u", (unsigned long long)n, MC_MAX_IDS);
    for (uint64_t i = 0; i < n; i++)
        if (read_entry(ck, in, T, i, version)) return -1;
    return 0;
}

static int read_compacts(Ck *ck, In *in, Machine *T, int version) {
    uint64_t n = version >= 3 ? get_u64(in) : get_u32(in);
    TRUNC(ck, in, "the count of compact ids");
    if (n > MC_MAX_IDS) return BAD(ck, "%llu compact ids, past the limit of %u", (unsigned long long)n, MC_MAX_IDS);
    for (uint64_t i = 0; i < n; i++) {
        Compact h;
        h.hash = get_u64(in);
        h.hash2 = get_u64(in);
        h.t0 = get_f64(in);
        h.r0 = get_f64(in);
        h.sid = get_u32(in);
        h.nfp = get_u16(in);
        h.ngroups = get_u8(in);
        h.dead = get_u8(in);
        TRUNC(ck, in, "a compact id");
        const char *bad = h.sid >= T->streams.n ? "sid" : h.nfp > CK_COMPACT_FPS ? "nfp" : h.dead ? "dead"
                          : !isfinite(h.t0) ? "t0" : !isfinite(h.r0) ? "r0" : NULL;
        if (!bad && h.ngroups > T->sinfo[h.sid].n) bad = "ngroups";
        if (!bad && (size_t)h.nfp * 8 > left(in)) bad = "nfp (truncated)";
        if (!bad && compact_exists(T, h.hash, h.hash2, h.sid)) bad = "hash (twice)";
        if (bad) return BAD(ck, "compact id %llu: field '%s'", (unsigned long long)i, bad);
        Compact *c = malloc(compact_size(h.nfp, h.ngroups));
        if (!c) return -1;
        *c = h;
        memcpy(cfps(c), in->p, (size_t)h.nfp * 8);
        in->p += (size_t)h.nfp * 8;
        for (uint8_t g = 0; g < h.ngroups; g++) {
            double ok = version >= 4 ? get_f64(in) : NAN;
            if (version >= 4 && (in->failed || isinf(ok))) { /* NaN: not known; a consume may precede t0 */
                free(c);
                TRUNC(ck, in, "a compact id's deliveries");
                return BAD(ck, "compact id %llu: field 'ok_at'", (unsigned long long)i);
            }
            cok_at(c)[g] = ok;
        }
        if (compact_insert(T, c)) { free(c); return -1; }
    }
    return 0;
}

static int read_sequences(Ck *ck, In *in, Machine *T) {
    T->missing = get_u64(in);
    uint64_t n = get_u64(in);
    TRUNC(ck, in, "the count of sequences");
    if (n > MC_MAX_SEQUENCES) return BAD(ck, "%llu sequences, past the limit", (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        SeqKey k;
        memset(&k, 0, sizeof k);
        k.pid = get_u32(in);
        k.sid = get_u32(in);
        k.gid = get_u16(in);
        k.kind = get_u8(in);
        k.hw = get_u64(in);
        k.top = get_u64(in);
        k.nholes = get_u32(in);
        k.nshown = get_u32(in);
        TRUNC(ck, in, "a sequence");
        const char *bad = k.pid >= T->producers.n ? "pid" : k.sid >= T->streams.n ? "sid"
                          : k.kind > K_CONSUME ? "kind" : (k.kind == K_CONSUME ? k.gid >= T->groups.n : k.gid != 0) ? "gid"
                          : k.top > k.hw ? "top" : k.nshown > k.nholes ? "nshown"
                          : k.nholes > left(in) / 24 ? "nholes" : NULL;
        if (bad) return BAD(ck, "sequence %llu: field '%s'", (unsigned long long)i, bad);
        int64_t ki = seq_index(T, k.pid, k.sid, k.gid, k.kind);
        if (ki < 0) return -1;
        if (ki != (int64_t)i) return BAD(ck, "sequence %llu: the key of sequence %lld", (unsigned long long)i, (long long)ki);
        SeqKey *at = &T->seqs[ki];
        at->hw = k.hw;
        at->top = k.top;
        uint64_t prev_hi = 0;
        for (uint32_t h = 0; h < k.nholes; h++) {
            Hole hole = {get_u64(in), get_u64(in), get_f64(in)};
            TRUNC(ck, in, "a hole");
            int shown = h < k.nshown;
            bad = hole.lo < 1 || hole.lo > hole.hi ? "lo" : hole.hi > k.hw ? "hi" : (h && hole.lo <= prev_hi) ? "order"
                  : (shown ? hole.hi >= k.top : hole.lo <= k.top) ? "shown" : !isfinite(hole.opened) ? "opened" : NULL;
            if (bad) return BAD(ck, "sequence %llu: hole %u: field '%s'", (unsigned long long)i, h, bad);
            prev_hi = hole.hi;
            if (hole_room(T, at)) return -1;
            at->holes[at->nholes++] = hole;
            T->open_holes++;
        }
        at->nshown = k.nshown;
        if (seq_schedule(T, (uint32_t)ki)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ load */

static int load_old(Machine *T, In *in, int version) {
    Ck ck = {T, "config"};
    if (read_conf(&ck, in, T)) return -1;
    ck.section = "streams";
    if (read_names(&ck, in, &T->streams)) return -1;
    ck.section = "groups";
    if (read_names(&ck, in, &T->groups)) return -1;
    ck.section = "stream info";
    if (read_streaminfo(&ck, in, T, 0)) return -1;
    ck.section = "counters";
    if (read_counters(&ck, in, T)) return -1;
    ck.section = "known";
    if (read_known(&ck, in, T, 0)) return -1;
    ck.section = "entries";
    if (read_entries(&ck, in, T, version)) return -1;
    ck.section = "compacts";
    if (read_compacts(&ck, in, T, version)) return -1;
    if (version == 2) {
        ck.section = "producers";
        if (read_names(&ck, in, &T->producers)) return -1;
        ck.section = "sequences";
        if (read_sequences(&ck, in, T)) return -1;
    }
    if (left(in)) return BAD(&ck, "%zu bytes after the end", left(in));
    return 0;
}

int checkpoint_load(Machine *T, const uint8_t *buf, size_t len) {
    In in = {buf, buf + len, 0};
    if (len < 8) return mc_fail(T, MC_ECHECKPOINT, "checkpoint: %zu bytes, too short for a header", len);
    if (!memcmp(buf, MAGIC2, 8) || !memcmp(buf, MAGIC1, 8)) {
        in.p += 8;
        return load_old(T, &in, buf[7] - '0');
    }
    if (memcmp(buf, MAGIC3, 8)) return mc_fail(T, MC_ECHECKPOINT, "checkpoint: not a msgtally checkpoint (magic)");
    in.p += 8;
    uint32_t version = get_u32(&in), nsections = get_u32(&in);
    uint64_t body_len = get_u64(&in), sum = get_u64(&in);
    if (in.failed) return mc_fail(T, MC_ECHECKPOINT, "checkpoint: header: truncated");
    if (version != CK_VERSION && version != 3)
        return mc_fail(T, MC_ECHECKPOINT, "checkpoint: header: field 'version' is %u, this machine reads 1 to %u",
                       version, CK_VERSION);
    if (nsections != N_SECTIONS)
        return mc_fail(T, MC_ECHECKPOINT, "checkpoint: header: field 'sections' is %u, not %u", nsections, N_SECTIONS);
    if (body_len != left(&in))
        return mc_fail(T, MC_ECHECKPOINT, "checkpoint: header: field 'length' is %llu, the body has %zu bytes",
                       (unsigned long long)body_len, left(&in));
    if (hash_bytes(in.p, left(&in), CK_SEED) != sum)
        return mc_fail(T, MC_ECHECKPOINT, "checkpoint: header: field 'checksum' does not match the body");
    for (uint32_t s = 1; s <= N_SECTIONS; s++) {
        uint32_t tag = get_u32(&in), zero = get_u32(&in);
        uint64_t n = get_u64(&in);
        if (in.failed) return mc_fail(T, MC_ECHECKPOINT, "checkpoint: section %u: truncated header", s);
        if (tag != s || zero) return mc_fail(T, MC_ECHECKPOINT, "checkpoint: section %u: field 'tag' is %u", s, tag);
        if (n > left(&in))
            return mc_fail(T, MC_ECHECKPOINT, "checkpoint: section '%s': field 'length' is %llu, %zu bytes left",
                           SECTION_NAMES[s], (unsigned long long)n, left(&in));
        In sec = {in.p, in.p + n, 0};
        in.p += n;
        Ck ck = {T, SECTION_NAMES[s]};
        int rc;
        switch (s) {
            case S_CONF: rc = read_conf(&ck, &sec, T); break;
            case S_STREAMS: rc = read_names(&ck, &sec, &T->streams); break;
            case S_GROUPS: rc = read_names(&ck, &sec, &T->groups); break;
            case S_STREAMINFO: rc = read_streaminfo(&ck, &sec, T, 1); break;
            case S_COUNTERS: rc = read_counters(&ck, &sec, T); break;
            case S_KNOWN: rc = read_known(&ck, &sec, T, 1); break;
            case S_ENTRIES: rc = read_entries(&ck, &sec, T, (int)version); break;
            case S_COMPACTS: rc = read_compacts(&ck, &sec, T, (int)version); break;
            case S_PRODUCERS: rc = read_names(&ck, &sec, &T->producers); break;
            default: rc = read_sequences(&ck, &sec, T); break;
        }
        if (rc) return -1;
        if (left(&sec)) return BAD(&ck, "%zu bytes left over", left(&sec));
    }
    return 0;
}

/* ------------------------------------------------------------------ dump */

static void put_names(Out *o, const Dict *d) {
    put_u32(o, d->n);
    for (uint32_t i = 0; i < d->n; i++) {
        put_u32(o, d->lens[i]);
        put(o, d->names[i], d->lens[i]);
    }
}

static int put_fp_cb(void *ctx, uint64_t fp) {
    put(ctx, &fp, 8); /* little-endian hosts: the bytes as they are */
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Hashes of a set, sorted: a checkpoint is the same bytes whatever order the
 * set was filled in (a loaded machine dumps what it loaded). */
typedef struct {
    uint64_t *v;
    size_t n;
} Sorted;

static int collect_cb(void *ctx, uint64_t fp) {
    Sorted *s = ctx;
    s->v[s->n++] = fp;
    return 0;
}

static void put_sorted(Out *o, Sorted *s) {
    qsort(s->v, s->n, 8, cmp_u64);
    for (size_t i = 0; i < s->n; i++) put_u64(o, s->v[i]);
}

static void put_fps(Out *o, Entry *e) {
    if (!(e->flags & E_FPSET)) {
        fp_each(e, put_fp_cb, o);
        return;
    }
    Sorted s = {malloc((size_t)fp_count(e) * 8 + 8), 0};
    if (!s.v) { o->failed = 1; return; }
    fp_each(e, collect_cb, &s);
    put_sorted(o, &s);
    free(s.v);
}

static void put_section(Out *o, uint32_t tag, Machine *M) {
    put_u32(o, tag);
    put_u32(o, 0);
    size_t at = o->n;
    put_u64(o, 0); /* the length, set once the payload is written */
    size_t start = o->n;
    switch (tag) {
        case S_CONF:
            put_f64(o, M->default_deadline);
            put_f64(o, M->settle);
            put_f64(o, M->remember);
            break;
        case S_STREAMS: put_names(o, &M->streams); break;
        case S_GROUPS: put_names(o, &M->groups); break;
        case S_STREAMINFO:
            put_u32(o, M->streams.n);
            for (uint32_t sid = 0; sid < M->streams.n; sid++) {
                StreamInfo *si = &M->sinfo[sid];
                put_f64(o, si->deadline);
                put_u32(o, (uint32_t)si->n);
                for (size_t g = 0; g < si->n; g++) put_u32(o, si->gids[g]);
            }
            break;
        case S_COUNTERS:
            put_u64(o, M->records);
            put_u64(o, M->repeats);
            put_u64(o, M->judged);
            put_u64(o, M->evicted);
            break;
        case S_KNOWN:
            put_u64(o, M->known_n);
            {
                Sorted k = {malloc((size_t)M->known_n * 8 + 8), 0};
                if (!k.v) { o->failed = 1; break; }
                for (uint64_t i = 0; i <= M->known_mask; i++)
                    if (M->known[i]) k.v[k.n++] = M->known[i];
                put_sorted(o, &k);
                free(k.v);
            }
            break;
        case S_ENTRIES:
            put_u64(o, M->live);
            for (uint32_t idx = 0; idx < M->pool_n; idx++) {
                Entry *e = M->pool[idx];
                if (!e) continue;
                put_f64(o, e->t0);
                put_f64(o, e->r0);
                put_u32(o, e->p_max_attempt);
                put_u32(o, e->sid);
                put_u8(o, e->flags & E_SAVED);
                put_u16(o, e->nslots);
                put_u16(o, e->idlen);
                put_u64(o, fp_count(e));
                for (uint16_t k = 0; k < e->nslots; k++) {
                    Slot *s = &slots_of(e)[k];
                    put_u16(o, s->gid);
                    put_u8(o, s->cls);
                    put_u8(o, s->flags);
                    put_u32(o, s->max_attempt);
                    put_u64(o, s->n);
                    put_u64(o, s->ok);
                    put_f64(o, s->first_ts);
                    put_f64(o, s->first_ok);
                    put_f64(o, s->latency);
                }
                put_fps(o, e);
                put(o, id_of(e), e->idlen);
            }
            break;
        case S_COMPACTS:
            put_u64(o, M->clive);
            for (uint32_t sid = 0; sid < M->streams.n; sid++) { /* in FIFO order, to keep it */
                StreamInfo *si = &M->sinfo[sid];
                for (size_t k = si->fifo_head; k < si->fifo_n; k++) {
                    Compact *c = si->fifo[k];
                    if (c->dead) continue;
                    put_u64(o, c->hash);
                    put_u64(o, c->hash2);
                    put_f64(o, c->t0);
                    put_f64(o, c->r0);
                    put_u32(o, c->sid);
                    put_u16(o, c->nfp);
                    put_u8(o, c->ngroups);
                    put_u8(o, 0);
                    put(o, cfps(c), (size_t)c->nfp * 8);
                    for (uint8_t g = 0; g < c->ngroups; g++) put_f64(o, cok_at(c)[g]);
                }
            }
            break;
        case S_PRODUCERS: put_names(o, &M->producers); break;
        default:
            put_u64(o, M->missing);
            put_u64(o, M->nseqs);
            for (size_t i = 0; i < M->nseqs; i++) {
                SeqKey *k = &M->seqs[i];
                put_u32(o, k->pid);
                put_u32(o, k->sid);
                put_u16(o, k->gid);
                put_u8(o, k->kind);
                put_u64(o, k->hw);
                put_u64(o, k->top);
                put_u32(o, k->nholes);
                put_u32(o, k->nshown);
                for (uint32_t h = 0; h < k->nholes; h++) {
                    put_u64(o, k->holes[h].lo);
                    put_u64(o, k->holes[h].hi);
                    put_f64(o, k->holes[h].opened);
                }
            }
            break;
    }
    if (o->failed) return;
    uint64_t n = o->n - start;
    for (int i = 0; i < 8; i++) o->buf[at + i] = (uint8_t)(n >> (8 * i));
}

int checkpoint_dump(Machine *M, uint8_t **out, size_t *len) {
    Out o = {0};
    put(&o, MAGIC3, 8);
    put_u32(&o, CK_VERSION);
    put_u32(&o, N_SECTIONS);
    put_u64(&o, 0); /* body length and checksum, set at the end */
    put_u64(&o, 0);
    size_t body = o.n;
    for (uint32_t s = 1; s <= N_SECTIONS; s++) put_section(&o, s, M);
    if (o.failed) {
        free(o.buf);
        return -1;
    }
    uint64_t n = o.n - body, sum = hash_bytes(o.buf + body, n, CK_SEED);
    for (int i = 0; i < 8; i++) {
        o.buf[16 + i] = (uint8_t)(n >> (8 * i));
        o.buf[24 + i] = (uint8_t)(sum >> (8 * i));
    }
    *out = o.buf;
    *len = o.n;
    return 0;
}

