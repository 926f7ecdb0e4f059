"""The numbers of the record contract and of the collector's intake.

A leaf module (nothing imported): the shim checks a record against the same
limits the collector enforces, without loading the collector.
"""

MAX_ID_LENGTH = 256  # message_id, in characters
MAX_TEXT_LENGTH = 256  # stream, group, producer, record_id, source
DEFAULT_MAX_BODY = 8 * 1024 * 1024  # bytes of one POST /v1/records body
