"""The store: its tables, opening it (SQLite or PostgreSQL), its URL.

Every part imports it; it imports nothing of msgtally but the names.
"""

__all__ = ["db", "kafka_log", "tables", "url"]
