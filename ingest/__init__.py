"""Delivery records in: the record contract, the shim and its adapters, and the
collector's write path.

Importing this package loads nothing: the shim (`msgtally.ingest.shim.tally`) must stay
light for the services that embed it, so the collector's modules (store, write
path, HTTP endpoints) are imported by name where they are used.
"""
