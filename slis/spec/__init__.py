"""The SLO spec: the model, its loaders and the budget arithmetic; no store, no HTTP."""

from .budget import burn_factor, burn_rate, error_budget, objective_ratio, remaining_budget
from .load import check_spec, load_spec, read_spec_file
from .model import ALL_GROUPS, SLO, VERSION, Alerting, Notify, Period, Spec
from .yamldoc import Problem, SpecError

__all__ = [
    "ALL_GROUPS",
    "SLO",
    "VERSION",
    "Alerting",
    "Notify",
    "Period",
    "Problem",
    "Spec",
    "SpecError",
    "burn_factor",
    "burn_rate",
    "check_spec",
    "error_budget",
    "load_spec",
    "objective_ratio",
    "read_spec_file",
    "remaining_budget",
]
