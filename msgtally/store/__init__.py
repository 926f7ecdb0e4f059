"""The store: its tables, opening it (SQLite or PostgreSQL), its URL, what the log holds.

Every part imports it; it imports nothing of msgtally but the names.
"""

__all__ = ["db", "held", "kafka_log", "tables", "url"]
