/* Reading log bodies: see logbody.h. */
#include "logbody.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "limits.h"
#include "machine.h"

const char *const LB_FIELD_NAMES[N_FIELDS] = {"stream", "kind", "message_id", "ts", "group", "attempt",
                                            "outcome", "producer", "seq", "trace_id", "span_id", "record_id",
                                            "error"};
const char *const MC_ERROR_NAMES[MC_N_ERROR] = {"auth", "serialization", "timeout", "throttled",
                                                "unavailable", "poison", "other"};

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* The size of a container: fix form (`fix` in the high nibble), 16 or 32 bits. */
static int mp_size(Cursor *c, uint8_t fix, uint8_t code16, uint32_t *n) {
    if (c->p >= c->end) return -1;
    uint8_t b = *c->p;
    if ((b & 0xf0) == fix) { c->p++; *n = b & 0x0f; return 0; }
    int len = b == code16 ? 2 : b == code16 + 1 ? 4 : 0;
    if (!len || c->end - c->p - 1 < len) return -1;
    c->p++;
    *n = (uint32_t)be(c->p, len);
    c->p += len;
    return 0;
}

static int mp_array(Cursor *c, uint32_t *n) { return mp_size(c, 0x90, 0xdc, n); }
static int mp_map(Cursor *c, uint32_t *n) { return mp_size(c, 0x80, 0xde, n); }

/* A string or nil: 0, -1 truncated, -2 another type. */
static inline __attribute__((always_inline)) int mp_str(Cursor *c, Str *s) {
    if (c->p >= c->end) return -1;
    uint8_t b = *c->p;
    uint32_t n;
    s->nil = 0;
    if (b == 0xc0) { c->p++; s->nil = 1; s->s = NULL; s->n = 0; return 0; }
    if ((b & 0xe0) == 0xa0) {
        n = b & 0x1f;
        c->p++;
    } else {
        int len = b == 0xd9 ? 1 : b == 0xda ? 2 : b == 0xdb ? 4 : 0;
        if (!len) return -2;
        if (c->end - c->p - 1 < len) return -1;
        c->p++;
        n = (uint32_t)be(c->p, len);
        c->p += len;
    }
    if ((size_t)(c->end - c->p) < n) return -1;
    s->s = c->p;
    s->n = n;
    c->p += n;
    return 0;
}

/* An integer, a float or nil (*nil set): 0, -1 truncated, -2 another type. */
static inline __attribute__((always_inline)) int mp_number(Cursor *c, int64_t *i, double *d, int *is_float, int *nil) {
    if (c->p >= c->end) return -1;
    uint8_t b = *c->p;
    *nil = 0;
    *is_float = 0;
    if (b <= 0x7f) { c->p++; *i = b; return 0; }
    if (b >= 0xe0) { c->p++; *i = (int8_t)b; return 0; }
    if (b == 0xc0) { c->p++; *nil = 1; return 0; }
    int len;
    switch (b) {
        case 0xcb: case 0xca: {
            len = b == 0xcb ? 8 : 4;
            if (c->end - c->p - 1 < len) return -1;
            c->p++;
            if (len == 8) {
                uint64_t v = be(c->p, 8);
                memcpy(d, &v, 8);
            } else {
                uint32_t v = (uint32_t)be(c->p, 4);
                float f;
                memcpy(&f, &v, 4);
                *d = f;
            }
            c->p += len;
            *is_float = 1;
            return 0;
        }
        case 0xcc: case 0xd0: len = 1; break;
        case 0xcd: case 0xd1: len = 2; break;
        case 0xce: case 0xd2: len = 4; break;
        case 0xcf: case 0xd3: len = 8; break;
        default: return -2;
    }
    if (c->end - c->p - 1 < len) return -1;
    c->p++;
    uint64_t v = be(c->p, len);
    c->p += len;
    if (b >= 0xd0) { /* signed */
        int shift = 64 - 8 * len;
        *i = (int64_t)(v << shift) >> shift;
    } else {
        *i = (int64_t)(v > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : v); /* saturates: never negative */
    }
    return 0;
}

/* Skips one value of any type: fields a newer writer added. */
static int mp_skip(Cursor *c, int depth) {
    if (c->p >= c->end || depth > 16) return -1;
    uint8_t b = *c->p;
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) { Str s; return mp_str(c, &s) ? -1 : 0; }
    if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd) {
        uint32_t n;
        if (mp_array(c, &n)) return -1;
        for (uint32_t i = 0; i < n; i++) if (mp_skip(c, depth + 1)) return -1;
        return 0;
    }
    if ((b & 0xf0) == 0x80 || b == 0xde || b == 0xdf) {
        uint32_t n;
        if (mp_map(c, &n)) return -1;
        for (uint64_t i = 0; i < 2 * (uint64_t)n; i++) if (mp_skip(c, depth + 1)) return -1;
        return 0;
    }
    if (b == 0xc2 || b == 0xc3) { c->p++; return 0; }
    if (b >= 0xc4 && b <= 0xc6) { /* bin 8/16/32 */
        int len = 1 << (b - 0xc4);
        if (c->end - c->p - 1 < len) return -1;
        uint64_t n = be(c->p + 1, len);
        if ((uint64_t)(c->end - c->p - 1 - len) < n) return -1;
        c->p += 1 + len + n;
        return 0;
    }
    int64_t i;
    double d;
    int isf, nil;
    return mp_number(c, &i, &d, &isf, &nil) ? -1 : 0;
}

/* The field a key names, or -1; compared at constant sizes (inlined: it runs
 * for every field of every record). */
#define KEY(word, f) (memcmp(key->s, word, sizeof(word) - 1) == 0 ? (f) : -1)
static inline int field_of(const Str *key) {
    switch (key->n) { /* the names differ by length, but for a few */
        case 2: return KEY("ts", F_TS);
        case 3: return KEY("seq", F_SEQ);
        case 4: return KEY("kind", F_KIND);
        case 5: return key->s[0] == 'g' ? KEY("group", F_GROUP) : KEY("error", F_ERROR);
        case 6: return KEY("stream", F_STREAM);
        case 7: return key->s[0] == 'a' ? KEY("attempt", F_ATTEMPT) : key->s[0] == 'o' ? KEY("outcome", F_OUTCOME)
                                                                                  : KEY("span_id", F_SPAN_ID);
        case 8: return key->s[0] == 'p' ? KEY("producer", F_PRODUCER) : KEY("trace_id", F_TRACE_ID);
        case 9: return KEY("record_id", F_RECORD_ID);
        case 10: return KEY("message_id", F_MESSAGE_ID);
        default: return -1;
    }
}

/* UTF-8 past the ASCII fast path (logbody.h): surrogates let through, as
 * Python's "surrogatepass" writes them and reads them back. */
int lb_utf8_slow(const uint8_t *p, uint32_t n) {
    uint32_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) { i++; continue; }
        uint32_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
        if (!len || c > 0xF4 || n - i < len) return 0;
        for (uint32_t k = 1; k < len; k++)
            if ((p[i + k] & 0xC0) != 0x80) return 0;
        if ((c == 0xE0 && p[i + 1] < 0xA0) || (c == 0xF0 && p[i + 1] < 0x90) || (c == 0xF4 && p[i + 1] > 0x8F))
            return 0; /* overlong, or past U+10FFFF */
        i += len;
    }
    return 1;
}

/* A word, its length known at compile time (memcmp of a constant size is inlined). */
#define is(str, word) (!(str)->nil && (str)->n == sizeof(word) - 1 && memcmp((str)->s, word, sizeof(word) - 1) == 0)

#define FAIL(...) do { snprintf(err, LB_ERR, __VA_ARGS__); return -1; } while (0)

/* An array at c, kept whole as [*into]: 0, -1 not an array, -2 truncated. */
static int array_part(Cursor *c, Cursor *into) {
    Cursor at = *c;
    uint32_t m;
    if (mp_array(&at, &m)) return -1;
    at = *c;
    if (mp_skip(c, 0)) return -2;
    *into = (Cursor){at.p, c->p};
    return 0;
}

int lb_open(Body *b, const uint8_t *buf, size_t len, char err[LB_ERR]) {
    Cursor c = {buf, buf + len};
    uint32_t n;
    int64_t version;
    double d;
    int isf, nil;
    b->marks.p = b->marks.end = NULL;
    b->runs.p = b->runs.end = NULL;
    b->groups.p = b->groups.end = NULL;
    if (mp_array(&c, &n) || n < 2 || n > 5) FAIL("log body: not a msgpack array [version, marks, records]");
    if (mp_number(&c, &version, &d, &isf, &nil) || isf || nil) FAIL("log body: the version is not an integer");
    if (version < 1 || version > 4) FAIL("log body: version %lld, this machine reads 1, 2, 3 and 4", (long long)version);
    if ((uint32_t)version != n - 1) FAIL("log body: version %lld with %u parts", (long long)version, n);
    if (version == 4) {
        int got = array_part(&c, &b->groups);
        if (got == -1) FAIL("log body: version 4: the groups are not an array");
        if (got) FAIL("log body: the groups are truncated");
    }
    if (version >= 2) {
        if (c.p >= c.end) FAIL("log body: truncated before its marks");
        if (*c.p == 0xc0 && version == 2) {
            c.p++;
        } else {
            int got = array_part(&c, &b->marks);
            if (got == -1 && version == 2) FAIL("log body: the marks are neither nil nor an array");
            if (got == -1) FAIL("log body: version %lld: the marks are not an array", (long long)version);
            if (got) FAIL("log body: the marks are truncated");
        }
    }
    if (version >= 3) {
        int got = array_part(&c, &b->runs);
        if (got == -1) FAIL("log body: version %lld: the runs are not an array", (long long)version);
        if (got) FAIL("log body: the runs are truncated");
    }
    b->record_seqs = version == 2 && b->marks.p;
    if (mp_array(&c, &b->count)) FAIL("log body: the records are not an array");
    if (b->count > (size_t)(c.end - c.p)) FAIL("log body: %u records in %zu bytes", b->count, (size_t)(c.end - c.p));
    b->records = c;
    return 0;
}

int lb_record(Cursor *c, Rec *r, uint32_t index, char err[LB_ERR]) {
    uint32_t n;
    if (mp_map(c, &n)) FAIL("log body: record %u: not a map", index);
    for (int f = 0; f < N_FIELDS; f++) {
        r->text[f].nil = 1;
        r->text[f].s = NULL;
        r->text[f].n = 0;
    }
    r->attempt = 1;
    r->has_seq = 0;
    r->seq = 0;
    r->ts = 0;
    r->sid = r->gid = -1;
    r->expected = 0;
    int has_ts = 0;
    for (uint32_t k = 0; k < n; k++) {
        Str key;
        int got = mp_str(c, &key);
        if (got == -1) FAIL("log body: record %u: truncated", index);
        if (got || key.nil) FAIL("log body: record %u: a key is not a string", index);
        int f = field_of(&key);
        if (f < 0) {
            if (mp_skip(c, 0)) FAIL("log body: record %u: field '%.*s' is truncated", index, (int)(key.n > 64 ? 64 : key.n), key.s);
            continue;
        }
        if (f == F_TS || f == F_ATTEMPT || f == F_SEQ) {
            int64_t iv = 0;
            double dv = 0;
            int isf, nil;
            got = mp_number(c, &iv, &dv, &isf, &nil);
            if (got == -1) FAIL("log body: record %u: field '%s' is truncated", index, LB_FIELD_NAMES[f]);
            if (got) FAIL("log body: record %u: field '%s' is not a number", index, LB_FIELD_NAMES[f]);
            if (nil) continue;
            if (isf && !isfinite(dv)) FAIL("log body: record %u: field '%s' is not finite", index, LB_FIELD_NAMES[f]);
            if (f == F_TS) {
                r->ts = isf ? dv : (double)iv;
                has_ts = 1;
            } else {
                /* a float count is cut to an integer, within int64 */
                int64_t v = !isf ? iv : dv >= 9.2e18 ? INT64_MAX : dv <= -9.2e18 ? INT64_MIN : (int64_t)dv;
                if (f == F_ATTEMPT) r->attempt = v;
                else { r->has_seq = 1; r->seq = v; }
            }
        } else {
            got = mp_str(c, &r->text[f]);
            if (got == -1) FAIL("log body: record %u: field '%s' is truncated", index, LB_FIELD_NAMES[f]);
            if (got) FAIL("log body: record %u: field '%s' is not a string", index, LB_FIELD_NAMES[f]);
            if (r->text[f].n > MC_MAX_TEXT_BYTES)
                FAIL("log body: record %u: field '%s' is %u bytes, past the limit of %u", index, LB_FIELD_NAMES[f],
                     r->text[f].n, MC_MAX_TEXT_BYTES);
            /* the text that becomes names and ids out of the machine (the rest is only hashed) */
            if ((f == F_STREAM || f == F_MESSAGE_ID || f == F_GROUP || f == F_PRODUCER) && !r->text[f].nil &&
                !lb_is_utf8(r->text[f].s, r->text[f].n))
                FAIL("log body: record %u: field '%s' is not UTF-8", index, LB_FIELD_NAMES[f]);
        }
    }
    if (!has_ts) FAIL("log body: record %u: field 'ts' is missing", index);
    if (r->text[F_STREAM].nil) FAIL("log body: record %u: field 'stream' is missing", index);
    if (r->text[F_MESSAGE_ID].nil) FAIL("log body: record %u: field 'message_id' is missing", index);
    const Str *kind = &r->text[F_KIND], *outcome = &r->text[F_OUTCOME];
    if (is(kind, "consume")) r->kind = K_CONSUME;
    else if (is(kind, "produce")) r->kind = K_PRODUCE;
    else if (kind->nil) FAIL("log body: record %u: field 'kind' is missing", index);
    else FAIL("log body: record %u: field 'kind' is neither produce nor consume", index);
    if (outcome->nil || is(outcome, "ok")) r->outcome = O_OK;
    else if (is(outcome, "error")) r->outcome = O_ERROR;
    else if (is(outcome, "dead_letter")) r->outcome = O_DEAD_LETTER;
    else FAIL("log body: record %u: field 'outcome' is none of ok, error, dead_letter", index);
    if (r->kind == K_CONSUME && r->text[F_GROUP].nil) FAIL("log body: record %u: a consume without field 'group'", index);
    r->error = 0;
    const Str *error = &r->text[F_ERROR];
    if (!error->nil) {
        for (int k = 0; k < MC_N_ERROR && !r->error; k++)
            if (error->n == strlen(MC_ERROR_NAMES[k]) && memcmp(error->s, MC_ERROR_NAMES[k], error->n) == 0)
                r->error = (uint8_t)(k + 1);
        if (!r->error) FAIL("log body: record %u: field 'error' is none of the error classes", index);
        if (r->outcome == O_OK) FAIL("log body: record %u: field 'error' on an ok record", index);
    }
    return 0;
}

int lb_marks_open(Cursor *c, uint32_t *n, char err[LB_ERR]) {
    if (mp_array(c, n)) FAIL("log body: the marks are not an array");
    return 0;
}

/* The names of a sequence, [producer, stream, kind, group, ...] (a mark's or
 * a run's, `what` and `index` for the reason): 0, or -1 with the reason. */
static int sequence_names(Cursor *c, Str *producer, Str *stream, Str *kind_name, Str *group, uint8_t *kind,
                          const char *what, uint32_t index, char err[LB_ERR]) {
    if (mp_str(c, producer) || mp_str(c, stream) || mp_str(c, kind_name) || mp_str(c, group))
        FAIL("log body: %s %u: a name is not a string", what, index);
    if (producer->nil || stream->nil || kind_name->nil || group->nil)
        FAIL("log body: %s %u: a name is nil", what, index);
    if (producer->n > MC_MAX_TEXT_BYTES || stream->n > MC_MAX_TEXT_BYTES || group->n > MC_MAX_TEXT_BYTES)
        FAIL("log body: %s %u: a name is past the limit of %u bytes", what, index, MC_MAX_TEXT_BYTES);
    if (!lb_is_utf8(producer->s, producer->n) || !lb_is_utf8(stream->s, stream->n) || !lb_is_utf8(group->s, group->n))
        FAIL("log body: %s %u: a name is not UTF-8", what, index);
    if (is(kind_name, "consume")) *kind = K_CONSUME;
    else if (is(kind_name, "produce")) *kind = K_PRODUCE;
    else FAIL("log body: %s %u: the kind is neither produce nor consume", what, index);
    return 0;
}

int lb_mark(Cursor *c, Mark *m, uint32_t index, char err[LB_ERR]) {
    uint32_t parts;
    double d;
    int isf, nil;
    if (mp_array(c, &parts) || parts != 5) FAIL("log body: mark %u: not [producer, stream, kind, group, last]", index);
    if (sequence_names(c, &m->producer, &m->stream, &m->kind_name, &m->group, &m->kind, "mark", index, err)) return -1;
    if (mp_number(c, &m->last, &d, &isf, &nil) || isf || nil) FAIL("log body: mark %u: 'last' is not an integer", index);
    return 0;
}

int lb_runs_open(Cursor *c, uint32_t *n, char err[LB_ERR]) {
    if (mp_array(c, n)) FAIL("log body: the runs are not an array");
    return 0;
}

int lb_run(Cursor *c, Run *r, uint32_t index, char err[LB_ERR]) {
    uint32_t parts;
    if (mp_array(c, &parts) || parts != 5) FAIL("log body: run %u: not [producer, stream, kind, group, seqs]", index);
    if (sequence_names(c, &r->producer, &r->stream, &r->kind_name, &r->group, &r->kind, "run", index, err)) return -1;
    if (mp_array(c, &r->count)) FAIL("log body: run %u: the seqs are not an array", index);
    if (r->count > (size_t)(c->end - c->p)) FAIL("log body: run %u: %u seqs in %zu bytes", index, r->count, (size_t)(c->end - c->p));
    return 0;
}

int lb_run_seq(Cursor *c, int64_t *seq, uint32_t run, uint32_t index, char err[LB_ERR]) {
    double d;
    int isf, nil;
    if (mp_number(c, seq, &d, &isf, &nil) || isf || nil || *seq < 0)
        FAIL("log body: run %u: seq %u is not an integer of 0 or more", run, index);
    return 0;
}

int lb_groups_open(Cursor *c, uint32_t *n, char err[LB_ERR]) {
    if (mp_array(c, n)) FAIL("log body: the groups are not an array");
    return 0;
}

/* A group of version 4: [stream, group], both strings as a consume's would be. */
int lb_group(Cursor *c, Str *stream, Str *group, uint32_t index, char err[LB_ERR]) {
    uint32_t parts;
    if (mp_array(c, &parts) || parts != 2) FAIL("log body: group %u: not [stream, group]", index);
    if (mp_str(c, stream) || mp_str(c, group)) FAIL("log body: group %u: a name is not a string", index);
    if (stream->nil || group->nil) FAIL("log body: group %u: a name is nil", index);
    if (stream->n > MC_MAX_TEXT_BYTES || group->n > MC_MAX_TEXT_BYTES)
        FAIL("log body: group %u: a name is past the limit of %u bytes", index, MC_MAX_TEXT_BYTES);
    if (!lb_is_utf8(stream->s, stream->n) || !lb_is_utf8(group->s, group->n))
        FAIL("log body: group %u: a name is not UTF-8", index);
    return 0;
}
