"""Delivery SLIs: figures per stream and group, their exposition and report; SLO specs."""

from .budget import burn_factor, burn_rate, error_budget, objective_ratio, remaining_budget
from .exposition import COUNTERS, LATENCY, StoreCollector
from .model import SLI, nearest_rank, ratio
from .query import DISCREPANCY_KINDS, read_discrepancies, read_in_flight, read_slis
from .spec import ALL_GROUPS, SLO, VERSION, Alerting, Notify, Period, SLIKind, Spec
from .specload import check_spec, load_spec, read_spec_file
from .yamldoc import Problem, SpecError

__all__ = [
    "ALL_GROUPS",
    "COUNTERS",
    "DISCREPANCY_KINDS",
    "LATENCY",
    "SLI",
    "SLO",
    "VERSION",
    "Alerting",
    "Notify",
    "Period",
    "Problem",
    "SLIKind",
    "Spec",
    "SpecError",
    "StoreCollector",
    "burn_factor",
    "burn_rate",
    "check_spec",
    "error_budget",
    "load_spec",
    "nearest_rank",
    "objective_ratio",
    "ratio",
    "read_discrepancies",
    "read_in_flight",
    "read_slis",
    "read_spec_file",
    "remaining_budget",
]
