"""The join of produced and consumed ids, and the classification of every id."""

from .config import DEFAULT_BUCKETS, DEFAULT_DEADLINE, DEFAULT_SETTLE, ReconcileConfig
from .join import PassResult, reconcile, reconcile_slice

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_DEADLINE",
    "DEFAULT_SETTLE",
    "PassResult",
    "ReconcileConfig",
    "reconcile",
    "reconcile_slice",
]
