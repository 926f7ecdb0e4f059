/* Every bound of the machine, in one place. The binding exports each to
 * Python (msgtally.reconcile._machine), and msgtally.ingest.limits holds the
 * ones the collector enforces at its door (a test holds them together), so
 * that the machine never meets a record it cannot apply. */
#ifndef MSGTALLY_MACHINE_LIMITS_H
#define MSGTALLY_MACHINE_LIMITS_H

/* A group's index is 16 bits (Slot.gid, SeqKey.gid): the collector's
 * --max-series bound on (stream, group) names keeps the groups below it. */
#define MC_MAX_GROUPS 65535u
/* The slots of an entry (one per group of its stream) and a stream's expected
 * groups: 16-bit counts hold it. */
#define MC_MAX_GROUPS_PER_STREAM 1024u
/* A text field of a record, in bytes: the contract caps text at 256
 * characters, at most 4 bytes each in UTF-8. Entry.idlen is 16 bits. */
#define MC_MAX_TEXT_BYTES 1024u
/* Ids held in memory at once (full entries): pool indices and timers are 32
 * bits. At ~110 bytes an id, far past the memory of any machine it runs on. */
#define MC_MAX_IDS (1u << 31)
/* Names of one kind (streams, groups, producers), discrepant ids kept
 * (`known`), sequences: 32-bit indices. */
#define MC_MAX_NAMES (1u << 31)
#define MC_MAX_KNOWN (1u << 31)
#define MC_MAX_SEQUENCES (1u << 31)
/* Latency histogram bounds. */
#define MC_MAX_BUCKETS 4096u
/* Fingerprints of one id are unbounded: past this many they move from the
 * entry into a hash set of their own (a poison message redelivered a million
 * times is still counted exactly, and each record is looked up in O(1)). */
#define MC_FP_INLINE 32u

#endif
