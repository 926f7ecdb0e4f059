"""Delivery SLIs, in two parts that do not import each other's way back:

- `msgtally.slis.spec`: the SLO spec and its loaders (native `msgtally/v1`
  and OpenSLO), pure data for `check`, the alert rules and the dashboards;
  it never imports the store;
- `msgtally.slis.read`: the collector's read side: figures per stream and
  group from the store, their exposition on /metrics, the report.

Importing this package loads neither.
"""

__all__ = ["read", "spec"]
