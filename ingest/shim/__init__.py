"""The shim a service installs: `tally` (the `Tally`), `shipper` (batches to
the collector, bounded buffer, drop counts), `tracing` (spans and W3C
context), `wire` (the record as JSON), `adapters` (broker clients wrapped).

Nothing here imports the collector (tests/test_layout.py holds it).
"""

__all__ = ["adapters", "shipper", "tally", "tracing", "wire"]
