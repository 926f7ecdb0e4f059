"""The reconcile engine: produced and consumed ids joined into verdicts and tallies."""

from .config import DEFAULT_DEADLINE, DEFAULT_SETTLE, ReconcileConfig
from .engine import Reconciler, TickResult, reconcile
from .lease import LeaseHeld

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_SETTLE",
    "LeaseHeld",
    "ReconcileConfig",
    "Reconciler",
    "TickResult",
    "reconcile",
]
