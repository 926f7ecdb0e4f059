"""The terminal report: one line per stream and consumer group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .figures import SLI

_COLUMNS = (
    ("stream", "stream"),
    ("group", "group"),
    ("produced", "produced"),
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("late", "late"),
    ("duplicated", "dup"),
    ("retried", "retried"),
    ("attempts", "attempts"),
    ("dead_lettered", "dlq"),
    ("unexpected", "unexp"),
    ("recovered", "recov"),
    ("consume_errors", "errors"),
    ("records_dropped", "dropped"),
    ("produce_records_missing", "p.miss"),
    ("consume_records_missing", "c.miss"),
    ("delivery_success_ratio", "success"),
    ("duplicate_ratio", "dup%"),
    ("latency_p50", "p50"),
    ("latency_p99", "p99"),
    ("observed_semantics", "observed"),
    ("contract", "contract"),
)


# Figures missing records may have inflated, and by how much at most (SLI.inflation).
_BOUNDS = (
    ("lost", "lost_inflated_by_at_most", "consumed", "consume"),
    ("unexpected", "unexpected_inflated_by_at_most", "produced", "produce"),
)
MARK = "*"


def _cell(name: str, value: object, row: dict[str, Any]) -> str:
    for figure, bound, _, _ in _BOUNDS:
        if name == figure and row[bound]:
            return f"{value}{MARK}"
    if value is None:
        return "-"
    if name.endswith("_ratio"):
        return f"{100 * float(value):.2f}%"  # type: ignore[arg-type]
    if name.startswith("latency_"):
        return f"{float(value):.3f}s"  # type: ignore[arg-type]
    return str(value)


def render_table(slis: Sequence[SLI]) -> str:
    """A fixed-width table; numbers right-aligned, names left-aligned."""
    if not slis:
        return "no SLIs yet: nothing reconciled (ingest records, then run `msgtally reconcile`)"
    header = [title for _, title in _COLUMNS]
    rows = [s.to_json() for s in slis]
    for row in rows:
        if row["contract"] is not None and any(row["contract_breaches"].values()):
            row["contract"] = f"{row['contract']} BREACHED"
    body = [[_cell(name, row[name], row) for name, _ in _COLUMNS] for row in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    table = [line(header), line(["-" * w for w in widths]), *map(line, body)]
    return "\n".join(table + _notes(rows))


def quarantine_note(ids: Sequence[int]) -> str:
    """The line under the table when the engine set log rows aside."""
    shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
    rows = "row" if len(ids) == 1 else "rows"
    return (
        f"{len(ids)} log {rows} in quarantine, not counted (the engine rejects their bodies): "
        f"{shown}; see `msgtally quarantine list`"
    )


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """What each mark means: the ids that records missing may account for."""
    notes = []
    for row in rows:
        for figure, bound, done, kind in _BOUNDS:
            if row[bound]:
                notes.append(
                    f"{MARK} {row['stream']} / {row['group']}: up to {row[bound]} of the "
                    f"{figure} ids may have been {done} ({kind} records missing: measurement loss)"
                )
    return ["", *notes] if notes else []
