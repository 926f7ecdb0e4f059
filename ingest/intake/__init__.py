"""The collector's intake: the record contract (`schema`), the write path
(`writer`, `logbody`), the bounds on what a request may take (`bounds`,
`limits`, `cardinality`), the endpoints (`api`, `otlp`), one error shape
(`problems`) and the ingest counters (`metrics`).
"""

__all__ = [
    "api",
    "bounds",
    "cardinality",
    "kafka_log",
    "limits",
    "logbody",
    "metrics",
    "otlp",
    "problems",
    "schema",
    "writer",
]
