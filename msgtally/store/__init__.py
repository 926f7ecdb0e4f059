"""The store: its tables, opening it (SQLite or PostgreSQL), its URL, what the log holds,
the engine's own bookkeeping (its last pass, records applied, backlog).

Every part imports it; it imports nothing of msgtally but the names.
"""

__all__ = ["db", "engine_facts", "held", "kafka_log", "tables", "url"]
