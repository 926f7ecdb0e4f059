"""The numbers of the record contract and of the collector's intake.

A leaf module (nothing imported): the shim checks a record against the same
limits the collector enforces, without loading the collector.
"""

MAX_ID_LENGTH = 256  # message_id, in characters
MAX_TEXT_LENGTH = 256  # stream, group, producer, record_id, source
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
MAX_TS = 1e10  # unix seconds: the year 2286; beyond is a unit mistake (ms, us)
MAX_ATTEMPT = 2**31 - 1
MAX_SEQ = 2**63 - 1
MAX_DROP_TOTAL = 2**40  # one shim's running total; many summed stay far below 2**63
