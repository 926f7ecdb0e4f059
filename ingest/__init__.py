"""Delivery records in: schema, store, write path and the collector's ingest API."""

from .db import DEFAULT_DB_FILE, DEFAULT_DB_URL, open_engine, write_tx
from .schema import Record, RecordError, parse_batch, record_to_json, validate_record
from .writer import IngestResult, record_key, write_batch

__all__ = [
    "DEFAULT_DB_FILE",
    "DEFAULT_DB_URL",
    "IngestResult",
    "Record",
    "RecordError",
    "open_engine",
    "parse_batch",
    "record_key",
    "record_to_json",
    "validate_record",
    "write_batch",
    "write_tx",
]
