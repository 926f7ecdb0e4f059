"""The numbers of the collector's intake (the record's own bounds are in
msgtally.record)."""

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # bytes of one POST /v1/records body
DEFAULT_MAX_INFLIGHT = 256 * 1024 * 1024  # bytes of bodies held at once, one process
DEFAULT_READ_TIMEOUT = 30.0  # seconds for a body to arrive
DEFAULT_MAX_SERIES = 10_000  # (stream, group) names a store takes
# The engine's own bounds (reconcile/machine/limits.h holds the same numbers): a
# group's index is 16 bits, so --max-series may not pass MAX_SERIES (every
# group is one of the store's names); an id holds one slot per group of its
# stream.
MAX_SERIES = 65_535
MAX_GROUPS_PER_STREAM = 1024
