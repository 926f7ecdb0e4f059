"""Delivery SLIs: figures per stream and group, their exposition and report."""

from .exposition import COUNTERS, LATENCY, StoreCollector
from .model import SLI, nearest_rank, ratio
from .query import DISCREPANCY_KINDS, read_discrepancies, read_in_flight, read_slis

__all__ = [
    "COUNTERS",
    "DISCREPANCY_KINDS",
    "LATENCY",
    "SLI",
    "StoreCollector",
    "nearest_rank",
    "ratio",
    "read_discrepancies",
    "read_in_flight",
    "read_slis",
]
