"""The terminal report: one line per stream and consumer group."""

from __future__ import annotations

from collections.abc import Sequence

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
    ("delivery_success_ratio", "success"),
    ("duplicate_ratio", "dup%"),
    ("latency_p50", "p50"),
    ("latency_p99", "p99"),
    ("observed_semantics", "observed"),
    ("contract", "contract"),
)


def _cell(name: str, value: object) -> str:
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
    body = [[_cell(name, row[name]) for name, _ in _COLUMNS] for row in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])
