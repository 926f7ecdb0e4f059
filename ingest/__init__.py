"""Delivery records in, in two rooms; imports go one way (intake may use the shim's
names, the shim never imports the intake):

- `shim`: what a service installs: the `Tally` (count, trace, ship every
  produced and consumed id), its shipper, and the broker adapters; it imports
  nothing of the collector;
- `intake`: the collector's side: the record contract, the write path into
  the store, the HTTP endpoints, OTLP traces in.

Importing this package loads neither.
"""

__all__ = ["intake", "shim"]
