"""The retry-configuration ticket: consumers configured against their stream's contract.

A consumer that acks before processing, or gives up after one attempt, on a
stream that promises at-least-once (or exactly-once) will lose messages the
first time processing fails or the consumer crashes; one that retries on an
at-most-once stream will duplicate them. The collector audits what every
consumer instance announced (`GET /v1/retry-configs`) and exposes, per stream
and group, the instances whose configuration contradicts the contract of the
collector's spec (`serve --spec`, the same spec as these rules):

    max by (stream, group) (msgtally_retry_config_findings{finding="contradicts_contract",SEL}) > 0

A ticket, not a page: nothing is lost yet (the breach alert pages when it is).
It fires at the first scrape that shows the finding and rides out a missed
scrape (keep_firing_for), like the breach alert. `max`: collectors behind a
load balancer expose the same values.
"""

from __future__ import annotations

from typing import Any

from msgtally.names import CONTRADICTS_CONTRACT, RETRY_CONTRADICTION_ALERT, RETRY_FINDINGS
from msgtally.slis.spec.model import Contract, Spec
from msgtally.slis.spec.semantics import Semantics

from .contracts import selector
from .promql import quote
from .windows import format_duration, keep_firing_for

Rule = dict[str, Any]
# What contradicts each promise, in the words of the alert.
_WHY = {
    Semantics.AT_MOST_ONCE: "retry failed messages (acks after processing, more than one "
    "attempt): each retry after a processed-but-unacked delivery is a duplicate",
    Semantics.AT_LEAST_ONCE: "ack before processing or allow one attempt only: a failure or a "
    "crash while processing loses the message",
    Semantics.EXACTLY_ONCE: "ack before processing or allow one attempt only: a failure or a "
    "crash while processing loses the message",
}


def findings_series(spec: Spec, contract: Contract) -> str:
    """The contradiction gauge on the series a contract covers."""
    finding = f"finding={quote(CONTRADICTS_CONTRACT)}"
    return f"{RETRY_FINDINGS}{{{finding},{selector(spec, contract)}}}"


def contradiction_alert(spec: Spec, contract: Contract) -> Rule:
    semantics = contract.semantics.value
    query = (
        "/v1/retry-configs?stream={{ $labels.stream | urlquery }}"
        "&group={{ $labels.group | urlquery }}"
    )
    return {
        "alert": RETRY_CONTRADICTION_ALERT,
        "expr": f"max by (stream, group) ({findings_series(spec, contract)}) > 0",
        "keep_firing_for": format_duration(keep_firing_for(spec.scrape_interval)),
        "labels": {
            "severity": "ticket",
            "service": spec.service,
            "stream": contract.stream,
            **({"group": contract.group} if contract.group is not None else {}),
            "semantics": semantics,
            **dict(sorted(spec.labels.items())),
        },
        "annotations": {
            "summary": "{{ $labels.stream }} / {{ $labels.group }} promises "
            f"{semantics}: {{{{ $value }}}} consumer instances configured against it",
            "description": "Stream {{ $labels.stream }}, group {{ $labels.group }} of "
            f"{spec.service} is declared {semantics}, and {{{{ $value }}}} of its consumer "
            f"instances announce that they {_WHY[contract.semantics]}. Nothing is lost yet. "
            f"The configurations in use: GET {query}",
        },
    }


def retry_rules(spec: Spec) -> list[Rule]:
    return [contradiction_alert(spec, contract) for contract in spec.contracts]
