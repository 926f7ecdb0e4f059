/* Reading log bodies (msgtally.ingest.logbody) without building objects.
 *
 * A log body is msgpack, in one of three versions:
 * - [2, marks, [record, ...]]: each record a map from the field names of
 *   msgtally.ingest.schema to their values, as msgspec encodes the validated
 *   records (fields at their default left out); marks is nil (the records'
 *   seqs are not checked), or the sender's sequence marks, each [producer,
 *   stream, kind, group, last] (the records' seqs are checked);
 * - [1, [record, ...]]: written before sequences were checked, no marks;
 * - [3, marks, runs, [record, ...]]: a slice of a request on the Kafka log.
 *   The records are those of this partition's ids; their seqs are never
 *   checked. The sequence state gets the runs instead, each [producer,
 *   stream, kind, group, [seq, ...]] (one sequence's seqs in the request's
 *   order), and the marks (an array, maybe empty): those of the sequences
 *   this partition owns, applied to the sequence state only, never joined as
 *   records (msgtally.store.kafka_log says which partition owns which).
 * - [4, groups, marks, runs, [record, ...]]: a version 3 slice with the
 *   consumer groups its request names for the first time, each [stream,
 *   group]: every partition gets one (its records maybe none), so that every
 *   machine expects them, and back-fills them, at the request's clock. The
 *   groups are the body's new groups as its consumes' are (screen, feed, apply).
 *
 * Every reader says what is wrong and where in `err` ("record 3: field 'ts'
 * is not a number"): a body the machine rejects is set aside with that
 * reason, so it has to name the fault. Strings point into the body. */
#ifndef MSGTALLY_MACHINE_LOGBODY_H
#define MSGTALLY_MACHINE_LOGBODY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { F_STREAM, F_KIND, F_MESSAGE_ID, F_TS, F_GROUP, F_ATTEMPT, F_OUTCOME, F_PRODUCER, F_SEQ,
       F_TRACE_ID, F_SPAN_ID, F_RECORD_ID, F_ERROR, N_FIELDS };
/* The record's fields in wire order (msgtally.record; tests/test_record.py holds them together). */
extern const char *const LB_FIELD_NAMES[N_FIELDS];
enum { K_PRODUCE = 0, K_CONSUME = 1 };
enum { O_OK = 0, O_ERROR = 1, O_DEAD_LETTER = 2 };
/* A record's error class: 0 none (not classified), else 1 + its index in
 * MC_ERROR_NAMES (machine.h). */

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
    uint8_t kind, outcome; /* K_*, O_* */
    uint8_t error;         /* 0: none; 1 + index in MC_ERROR_NAMES */
    /* the machine's, looked up before the record applies: -1 not known yet */
    int32_t sid, gid;
    uint8_t expected; /* the stream expects the group already */
} Rec;

typedef struct {
    Str producer, stream, kind_name, group;
    int64_t last;
    uint8_t kind;
} Mark;

typedef struct {
    const uint8_t *p, *end;
} Cursor;

/* A run (version 3): the names of a sequence, then `count` seqs to read with lb_run_seq. */
typedef struct {
    Str producer, stream, kind_name, group;
    uint32_t count;
    uint8_t kind;
} Run;

typedef struct {
    Cursor records;  /* at the first record */
    Cursor groups;   /* at the groups' array (version 4); groups.p NULL: none */
    Cursor marks;    /* at the marks' array; marks.p NULL: a body without marks */
    Cursor runs;     /* at the runs' array (version 3); runs.p NULL: none */
    uint32_t count;  /* records */
    uint8_t record_seqs; /* the records' seqs are checked (version 2 with marks) */
} Body;

#define LB_ERR 192 /* room for a reason */

/* Opens a body: 0, or -1 with the reason in err. */
int lb_open(Body *b, const uint8_t *buf, size_t len, char err[LB_ERR]);
/* The next record (number `index`, for the reason): 0, or -1 with the reason. */
int lb_record(Cursor *c, Rec *r, uint32_t index, char err[LB_ERR]);
/* The marks' count, then each mark: 0, or -1 with the reason. */
int lb_marks_open(Cursor *c, uint32_t *n, char err[LB_ERR]);
int lb_mark(Cursor *c, Mark *m, uint32_t index, char err[LB_ERR]);
/* The runs' count, then each run's names and count, then its seqs (each an
 * integer >= 0): 0, or -1 with the reason. */
int lb_runs_open(Cursor *c, uint32_t *n, char err[LB_ERR]);
int lb_run(Cursor *c, Run *r, uint32_t index, char err[LB_ERR]);
int lb_run_seq(Cursor *c, int64_t *seq, uint32_t run, uint32_t index, char err[LB_ERR]);
/* The groups' count (version 4), then each group's names: 0, or -1 with the reason. */
int lb_groups_open(Cursor *c, uint32_t *n, char err[LB_ERR]);
int lb_group(Cursor *c, Str *stream, Str *group, uint32_t index, char err[LB_ERR]);
/* Whether bytes are UTF-8 (surrogates let through, as Python's "surrogatepass").
 * Names become Python strings and ids go back to the store as text. ASCII, the
 * common case, is checked eight bytes at a time, inline: it runs for every record. */
int lb_utf8_slow(const uint8_t *p, uint32_t n);
static inline int lb_is_utf8(const uint8_t *p, uint32_t n) {
    uint64_t any = 0;
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        any |= v;
    }
    for (; i < n; i++) any |= p[i];
    return (any & 0x8080808080808080ULL) ? lb_utf8_slow(p, n) : 1;
}

#endif
