"""The generated alerts' state, from a Prometheus's `ALERTS` series (`--prometheus-url`)."""

from __future__ import annotations

import httpx

from msgtally.names import BURN_ALERT
from msgtally.slis.spec.model import Spec

TIMEOUT = 2.0


def alert_states(url: str, spec: Spec) -> dict[tuple[str, str], str] | str:
    """(slo, severity) -> firing | pending for the burn alerts of the spec's service;
    a string saying why when Prometheus does not answer."""
    query = f'ALERTS{{alertname="{BURN_ALERT}",service="{spec.service}"}}'
    try:
        resp = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query},
                         timeout=TIMEOUT)  # fmt: skip
        body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"Prometheus at {url} did not answer: {type(exc).__name__}"
    if body.get("status") != "success":
        return f"Prometheus at {url}: {body.get('error', 'no answer')}"
    out: dict[tuple[str, str], str] = {}
    for series in body["data"]["result"]:
        labels = series["metric"]
        key = (labels.get("slo", ""), labels.get("severity", ""))
        state = labels.get("alertstate", "")
        if out.get(key) != "firing":
            out[key] = state
    return out
