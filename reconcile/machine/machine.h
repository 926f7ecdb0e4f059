/* The reconcile machine: the per-id state machine of the reconcile engine, in
 * plain C (no Python here: reconcile/_machine.c is the CPython binding).
 *
 * State is keyed by (stream, message id): one entry per id in flight, holding
 * the produce side and one slot per consumer group. Records are folded into
 * their entry as they arrive; a slot is judged `delivered` as soon as the id
 * is acknowledged and the group has an ok delivery by the deadline, every
 * other slot once the id is due (deadline + settle, and settle past the first
 * receipt of the id). The rules are the ones of docs/definitions.md;
 * `counts_of` in machine.c is the one place that says what a judged slot
 * counts for.
 *
 * Everything is deterministic given the same bodies and clocks in the same
 * order: recovery replays ticks after a checkpoint and must land on the same
 * state. A machine has no global state: two machines never share anything,
 * and one machine is used by one thread at a time (the binding enforces it).
 *
 * Every call returns MC_OK or an error kind, with the reason in mc_error().
 * A body the machine rejects (MC_EBODY) leaves the machine as it was; so does
 * a checkpoint that fails to load (MC_ECHECKPOINT: the machine stays empty).
 * After MC_ENOMEM or MC_ESTATE in the middle of a call, the machine may be
 * half-way: the engine throws it away and rebuilds from the store.
 */
#ifndef MSGTALLY_MACHINE_H
#define MSGTALLY_MACHINE_H

#include <stddef.h>
#include <stdint.h>

#include "limits.h"

typedef struct Machine Machine;

enum {
    MC_OK = 0,
    MC_ENOMEM = 1,      /* memory ran out */
    MC_EBODY = 2,       /* a log body the machine cannot apply: nothing of it applied */
    MC_ESTATE = 3,      /* a limit of the state, or a call out of place */
    MC_ECHECKPOINT = 4, /* a checkpoint that does not load: the machine is left empty */
    MC_ECALLBACK = 5,   /* an output callback failed (its own error stands) */
};

enum { MC_TALLY_PRODUCED, MC_TALLY_DELIVERED, MC_TALLY_LOST, MC_TALLY_LATE, MC_TALLY_RECOVERED,
       MC_TALLY_UNEXPECTED, MC_TALLY_DUPLICATED, MC_TALLY_RETRIED, MC_TALLY_ATTEMPTS,
       MC_TALLY_DEAD_LETTERED, MC_TALLY_CONSUME_ERRORS, MC_TALLY_LATENCY_COUNT, MC_N_TALLY };
extern const char *const MC_TALLY_NAMES[MC_N_TALLY];
/* Error classes of failed records (msgtally.record.ERROR_CLASSES, in order). */
enum { MC_N_ERROR = 7 };
extern const char *const MC_ERROR_NAMES[MC_N_ERROR];
extern const char *const MC_CLASS_NAMES[6]; /* pending, delivered, lost, recovered, unexpected, none */

#define MC_SKETCH_GAMMA (1.01 / 0.99) /* DDSketch, relative accuracy 0.01: (g - 1) / (g + 1) */
#define MC_SKETCH_OFFSET 100000       /* bins of |x| are offset so that 0 means zero itself */

/* A name, as bytes (UTF-8 from the log). */
typedef struct {
    const char *s;
    uint32_t n;
} McName;

/* Sketch bins summed by key (open addressing; key INT32_MIN is an empty place):
 * a pair's bins in the machine, and the binding's sums over drains and machines. */
typedef struct {
    int32_t *keys;
    int64_t *vals;
    uint32_t n, mask; /* n in use of mask + 1 places (none while keys is NULL) */
} McBins;
/* Adds `count` to bin `key` (not INT32_MIN), wrapping as unsigned (no overflow
 * to trap on); 0, or -1 when memory ran out (the bins as they were). */
int mc_bins_add(McBins *b, int32_t key, int64_t count);
void mc_bins_free(McBins *b);

/* What changed for one (stream, group) since the last drain. */
typedef struct {
    uint32_t sid, gid;
    const int64_t *counts; /* MC_N_TALLY deltas */
    double latency_sum;
    const int64_t *hist; /* nbuckets + 1 (the last: +Inf) */
    uint32_t nhist;
    const int32_t *bin_keys; /* sketch bins: nbins places, key INT32_MIN empty, value 0 skipped */
    const int64_t *bin_vals;
    uint32_t nbins;
} McPairOut;

/* The row of one judged slot, as the verdicts table stores it. */
typedef struct {
    uint32_t sid, gid;
    const char *id;
    uint32_t idlen;
    uint8_t cls, acked, pany, late, dl, has_t0, has_latency;
    double t0, deadline, latency;
    uint64_t n, ok;
    uint32_t max_attempt;
} McVerdict;

typedef struct {
    void *ctx;
    /* each returns 0, or -1 to stop (the drain then fails with MC_ECALLBACK) */
    int (*pair)(void *ctx, const McPairOut *p);
    int (*verdict)(void *ctx, const McVerdict *v);
    int (*missing)(void *ctx, uint32_t sid, int consume, uint32_t gid, int64_t n);
    /* records per error class (MC_N_ERROR counts) of a (stream, kind, group); gid unused for a produce */
    int (*errors)(void *ctx, uint32_t sid, int consume, uint32_t gid, const int64_t *counts);
} McSink;

typedef struct {
    uint64_t records, repeats, judged, evicted, compacted, records_missing, open_holes;
    uint64_t in_memory, known, compact, sequences;
    uint64_t entry_bytes, index_bytes, compact_bytes, compact_index_bytes, sequence_bytes;
} McStats;

/* A verdict row loaded back from the store (install). */
typedef struct {
    McName stream, id, group;
    int cls; /* 1..5, MC_CLASS_NAMES */
    int acked, pany, late, dl;
    int has_t0, has_latency;
    double t0, deadline, latency;
    uint64_t n, ok;
    uint32_t max_attempt;
} McInstallRow;

Machine *mc_new(double deadline, double settle, double remember, const double *bounds, uint32_t nbounds);
void mc_free(Machine *M);
const char *mc_error(const Machine *M);

int mc_configure(Machine *M, double deadline, double settle, double remember);
int mc_set_deadline(Machine *M, McName stream, double seconds);

/* Names by index, for the outputs. */
McName mc_stream_name(const Machine *M, uint32_t sid);
McName mc_group_name(const Machine *M, uint32_t gid);
uint32_t mc_nstreams(const Machine *M);
uint32_t mc_ngroups_of(const Machine *M, uint32_t sid);
uint32_t mc_group_of(const Machine *M, uint32_t sid, uint32_t k);

/* Groups: expect a group (*added 1 when new); every produced id of the stream in memory owes it a verdict. */
int mc_expect(Machine *M, McName stream, const McName *groups, uint32_t ngroups, uint32_t *added);
/* (stream, group) consumed in a body and not expected yet: cb for each (repeats possible). */
int mc_new_groups(Machine *M, const uint8_t *body, size_t len,
                  int (*cb)(void *ctx, McName stream, McName group), void *ctx);

/* Folding log bodies. A body is checked whole before anything of it is applied;
 * once applied, the ids it touched get their early verdicts (delivered), body
 * by body, unless records of it wait for their verdict rows (mc_deferred_key:
 * then mc_apply_deferred gives them). Every other verdict waits for mc_advance. */
int mc_apply(Machine *M, const uint8_t *body, size_t len, double received_at, uint32_t *records);
/* A worker's step: the body read once; bad (MC_EBODY) or naming groups the
 * machine does not expect yet (*state MC_FEED_NEW_GROUPS: their names by
 * mc_checked_groups, which point into the body), nothing of it is applied;
 * else applied as mc_apply, then, unless records wait for their verdict rows
 * (*state MC_FEED_DEFERRED: mc_deferred_key), judged as mc_advance(now, now). */
enum { MC_FEED_JUDGED = 0, MC_FEED_NEW_GROUPS = 1, MC_FEED_DEFERRED = 2 };
int mc_feed(Machine *M, const uint8_t *body, size_t len, double received_at, double now, uint32_t *records,
            int *state);
/* Checks a body as mc_apply would, applying nothing; the new groups of the
 * bodies checked since mc_check_reset count against the limits of the next
 * (mc_checked_groups: how many, and the i-th). */
int mc_check(Machine *M, const uint8_t *body, size_t len);
void mc_check_reset(Machine *M);
size_t mc_checked_groups(const Machine *M, McName *stream, McName *group, size_t i);
int mc_deferred_count(const Machine *M, size_t *n);
int mc_deferred_key(const Machine *M, size_t i, McName *stream, McName *id);
/* The waiting records applied (after mc_install of their ids' rows), then the
 * early verdicts of what the body touched, as mc_apply gives them. */
int mc_apply_deferred(Machine *M, size_t *n);
size_t mc_install_begin(Machine *M);
int mc_install_row(Machine *M, const McInstallRow *row);
int mc_install_finish(Machine *M, size_t mark);
int mc_advance(Machine *M, double now, double watermark);
int mc_drain(Machine *M, const McSink *sink);
int mc_in_flight(Machine *M, int (*cb)(void *ctx, uint32_t sid, uint32_t gid, int64_t n, double oldest), void *ctx);
void mc_stats(const Machine *M, McStats *out);

/* Back-fill of groups new to a stream: scan every body applied so far, then finish. */
int mc_backfill_scan(Machine *M, const uint8_t *body, size_t len, McName stream, uint32_t *produced);
int mc_backfill_finish(Machine *M, McName stream, const McName *groups, uint32_t ngroups, uint64_t *owed);

/* Checkpoints: the whole state (outputs drained first). *out is malloc'd: free() it. */
int mc_dump(Machine *M, uint8_t **out, size_t *len);
/* Replaces an empty machine's state with a checkpoint's (any version this
 * machine reads), validated field by field; on failure the machine is empty. */
int mc_load(Machine *M, const uint8_t *buf, size_t len);

#endif
