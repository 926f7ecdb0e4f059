"""The collector's read side: SLI figures from the store, /v1/slis, /metrics, the report.

Modules are imported by name where they are used (SQLAlchemy, FastAPI).
"""

__all__ = [
    "api",
    "exposition",
    "figures",
    "objectives",
    "query",
    "report",
    "retry_audit",
    "retry_configs",
    "sketch",
    "traces",
    "windows",
]
