"""The shim a service installs: `tally` (the `Tally`), `shipper` (batches to
the collector, bounded buffer, drop counts), `tracing` (spans and W3C
context), `wire` (the record as JSON), `classify` (the error class of a
failure), `adapters` (broker clients wrapped), `announce` (the consumers'
retry configurations, told to the collector).

Nothing here imports the collector (tests/test_layout.py holds it).
"""

__all__ = ["adapters", "announce", "classify", "shipper", "tally", "tracing", "wire"]
