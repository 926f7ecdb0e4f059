"""Delivery contract breach alerts: a page for the first loss or duplicate a contract forbids.

A breach is not a budget to burn: one lost id on an at-least-once stream,
one duplicated delivery on an at-most-once one, pages. Per contract and
forbidden breach, one `MsgtallyDeliveryContractBreach` rule:

    NOW - BEFORE > 0  or  NOW > 0 unless BEFORE
    NOW = max by (stream, group) (COUNT{sel})
    BEFORE = max by (stream, group) (max_over_time(COUNT{sel}[5m] offset 5m))

The difference, not `increase()`, so the value is the exact count of breaches
in the window (the tallies are read from the store: they never reset, and
collectors behind a load balancer expose the same values, hence `max`). The
second half pages for a series younger than the window that already counts
breaches: a (stream, group) whose first verdicts are losses, or a Prometheus
that starts scraping a stream with breaches in its history (they page once).
A stream-wide contract leaves out the groups that have their own. What the
contract allows, and an idle stream, never fire.
"""

from __future__ import annotations

from typing import Any

from msgtally.names import CONTRACT_ALERT, counter
from msgtally.slis.spec.model import Contract, Spec
from msgtally.slis.spec.semantics import BREACH_COUNTS, FORBIDS, Breach

from .promql import quote
from .windows import floor, format_duration, keep_firing_for

WINDOW_SECONDS = 300
WINDOW = format_duration(WINDOW_SECONDS)
GROUP_NAME = "msgtally-{service}-contracts"
# What one breach is, in the words of the alert.
_UNITS = {Breach.LOSS: "ids lost", Breach.DUPLICATE: "duplicate deliveries"}

Rule = dict[str, Any]


def selector(spec: Spec, contract: Contract) -> str:
    """The series a contract covers: its group, or every group without its own contract."""
    parts = [f"stream={quote(contract.stream)}"]
    if contract.group is not None:
        parts.append(f"group={quote(contract.group)}")
    else:
        parts += [f"group!={quote(g)}" for g in spec.own_groups(contract.stream)]
    return ",".join(parts)


def breach_series(spec: Spec, contract: Contract, breach: Breach) -> str:
    """The counter of one breach on the series a contract covers."""
    return f"{counter(BREACH_COUNTS[breach])}{{{selector(spec, contract)}}}"


def breach_expr(spec: Spec, contract: Contract, breach: Breach) -> str:
    series = breach_series(spec, contract, breach)
    now = f"max by (stream, group) ({series})"
    # The last value scraped before the window, whatever scrapes were missed then: a
    # range of four scrape intervals at least.
    look = format_duration(max(WINDOW_SECONDS, floor(spec.scrape_interval)))
    before = f"max by (stream, group) (max_over_time({series}[{look}] offset {WINDOW}))"
    return f"{now} - {before} > 0\nor\n{now} > 0 unless {before}"


def breach_alert(spec: Spec, contract: Contract, breach: Breach) -> Rule:
    kind = BREACH_COUNTS[breach]
    semantics = contract.semantics.value
    query = (
        f"/v1/discrepancies?kind={kind}&stream={{{{ $labels.stream | urlquery }}}}"
        f"&group={{{{ $labels.group | urlquery }}}}"
    )
    return {
        "alert": CONTRACT_ALERT,
        "expr": breach_expr(spec, contract, breach),
        # A missed scrape makes every series of the collector stale until the next one:
        # the page rides it out instead of resolving and paging again.
        "keep_firing_for": format_duration(keep_firing_for(spec.scrape_interval)),
        # stream (and a contract's own group) come with the series too; stated here so
        # that each rule of the file is unique (promtool's lint) and reads on its own.
        "labels": {
            "severity": "page",
            "service": spec.service,
            "stream": contract.stream,
            **({"group": contract.group} if contract.group is not None else {}),
            "semantics": semantics,
            "breach": breach.value,
            **dict(sorted(spec.labels.items())),
        },
        "annotations": {
            "summary": f"{{{{ $labels.stream }}}} / {{{{ $labels.group }}}} promises "
            f"{semantics}: {{{{ $value }}}} {_UNITS[breach]} in {WINDOW}",
            "description": f"Stream {{{{ $labels.stream }}}}, group {{{{ $labels.group }}}} of "
            f"{spec.service} is declared {semantics}, which allows no {breach.value}; the "
            f"collector counted {{{{ $value }}}} {_UNITS[breach]} in the last {WINDOW}. "
            f"The ids: GET {query}",
        },
    }


def contract_rules(spec: Spec) -> list[Rule]:
    return [
        breach_alert(spec, contract, breach)
        for contract in spec.contracts
        for breach in FORBIDS[contract.semantics]
    ]
