"""The SLO spec: the model, its loaders and the budget arithmetic; no store, no HTTP."""

__all__ = [
    "budget",
    "checks",
    "fields",
    "load",
    "maintenance",
    "model",
    "native",
    "openslo",
    "semantics",
    "yamldoc",
]
