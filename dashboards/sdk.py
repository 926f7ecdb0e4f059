"""Grafana's foundation SDK, imported without its one known deprecation warning.

The classic dashboard builder (schemaVersion 42, what Grafana imports
everywhere today) warns at import that dashboardv2 is preferred. That
warning, and only it, is silenced here: message, category and the SDK
modules that raise it.
"""

from __future__ import annotations

import warnings

DEPRECATION_MESSAGE = r"Prefer using dashboardv2\.Dashboard instead\."
DEPRECATION_MODULES = r"grafana_foundation_sdk\.(builders|models)\.dashboard(v2beta1)?$"

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message=DEPRECATION_MESSAGE,
        category=DeprecationWarning,
        module=DEPRECATION_MODULES,
    )
    from grafana_foundation_sdk.builders import (
        bargauge,
        dashboard,
        heatmap,
        prometheus,
        stat,
        table,
        timeseries,
    )
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import heatmap as heatmap_model
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = [
    "JSONEncoder",
    "PromQueryFormat",
    "bargauge",
    "cogbuilder",
    "cogvariants",
    "common",
    "common_builders",
    "dashboard",
    "heatmap",
    "heatmap_model",
    "model",
    "prometheus",
    "stat",
    "table",
    "timeseries",
]
