"""The terminal report: one line per stream and consumer group."""

from __future__ import annotations

import datetime
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .figures import SLI
    from .retry_audit import GroupAudit


@dataclass(frozen=True)
class Column:
    """A column of the report: the SLI field it shows, its title, what it means."""

    field: str
    title: str
    meaning: str


# The report's columns, in order, and their legend: `msgtally report --help`
# and docs/quickstart.md show these words (a test holds the docs to them).
COLUMNS = (
    Column("stream", "stream", "the stream: topic, queue, subject, webhook"),
    Column("group", "group", "the consumer group"),
    Column("produced", "produced", "ids produced: sends the broker acknowledged"),
    Column("delivered", "delivered", "produced ids the group consumed ok by the deadline"),
    Column("lost", "lost", "produced ids not consumed ok by the deadline (dead-lettered ones "
           "included); `*`: records missing may account for some, see the notes"),
    Column("late", "late", "lost ids consumed ok after the deadline (still counted lost)"),
    Column("duplicated", "dup", "ok deliveries beyond the first of an id"),
    Column("retried", "retried", "ids sent or delivered more than once (an attempt above 1)"),
    Column("attempts", "attempts", "deliveries of sent ids: every consume record, any outcome"),
    Column("dead_lettered", "dlq", "produced ids dead-lettered (a consume with outcome "
           "dead_letter)"),
    Column("unexpected", "unexp", "ids consumed and never produced; `*` as for lost"),
    Column("recovered", "recov", "ids whose every send was indeterminate (outcome error) "
           "and that were consumed ok anyway"),
    Column("consume_errors", "errors", "deliveries whose processing failed (outcome error): "
           "redelivered, as a rule"),
    Column("records_dropped", "dropped", "records the shims dropped before sending them "
           "(measurement loss, not message loss)"),
    Column("produce_records_missing", "p.miss", "produce records that never reached the "
           "collector: gaps in the shims' numbering (measurement loss)"),
    Column("consume_records_missing", "c.miss", "consume records that never reached the "
           "collector (measurement loss)"),
    Column("in_flight", "flight", "produced ids not judged yet for the group (none of the "
           "figures counts them yet: every one counts judged ids only)"),
    Column("delivery_success_ratio", "success", "delivered / produced"),
    Column("duplicate_ratio", "dup%", "duplicated / every ok delivery"),
    Column("latency_p50", "p50", "median latency: first produce to first ok delivery"),
    Column("latency_p99", "p99", "99th percentile of the same latency"),
    Column("observed_semantics", "observed", "the strongest delivery semantics the figures "
           "keep: exactly-once, at-least-once, at-most-once, none"),
    Column("contract", "contract", "the semantics the SLO spec declares (--spec); BREACHED "
           "once a breach it forbids happened"),
)  # fmt: skip
# What an on-call reads first: the default table, within 100 columns (--wide: every column).
NARROW = ("stream", "group", "produced", "lost", "duplicated", "dead_lettered",
          "delivery_success_ratio", "latency_p99", "observed_semantics", "contract")  # fmt: skip
WIDTH = 100
NAME_MAX = 18  # stream and group names longer than this are cut (with `~`) in the narrow table
# ANSI colours on a terminal: red for a breach, yellow for a figure measurement loss may inflate.
RED, YELLOW, RESET = "\x1b[31;1m", "\x1b[33m", "\x1b[0m"
# The terms the legend defines beside its columns.
_FOOTNOTES = (
    "An id is judged for each group: delivered as soon as it is, every other verdict at its "
    "deadline (first produce + --deadline) + --settle. `-`: no figure yet (nothing to "
    "divide by, no latency). docs/definitions.md defines every figure exactly.",
)


def legend(width: int = 78) -> str:
    """The columns' legend as `msgtally report --help` prints it."""
    pad = max(len(c.title) for c in COLUMNS) + 4
    lines = ["columns:"]
    for c in COLUMNS:
        lines += textwrap.wrap(
            c.meaning, width, initial_indent=f"  {c.title}".ljust(pad),
            subsequent_indent=" " * pad,
        )  # fmt: skip
    for note in _FOOTNOTES:
        lines += ["", *textwrap.wrap(note, width)]
    return "\n".join(lines)


def legend_markdown() -> str:
    """The columns' legend as a Markdown table (docs/quickstart.md holds it)."""
    rows = [f"| `{c.title}` | {c.meaning} |" for c in COLUMNS]
    return "\n".join(["| column | meaning |", "|---|---|", *rows])


def duration(seconds: float) -> str:
    """A latency as a person reads it: 850ms, 2.1s, 3m20s, 2h05m, 1d03h; `<1ms`."""
    if seconds <= 0:
        return "0ms"
    if seconds < 0.001:
        return "<1ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


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
        return duration(float(value))  # type: ignore[arg-type]
    return str(value)


_WORDS = ("stream", "group", "observed_semantics", "contract")  # left-aligned columns


def _cut(name: str) -> str:
    return name if len(name) <= NAME_MAX else name[: NAME_MAX - 1] + "~"


def _paint(cell: str, padded: str, colour: bool) -> str:
    """A padded cell in red (a breach) or yellow (a figure missing records may inflate)."""
    if not colour:
        return padded
    if cell.endswith("BREACHED"):
        return RED + padded + RESET
    if cell.endswith(MARK):
        return YELLOW + padded + RESET
    return padded


def render_table(slis: Sequence[SLI], *, wide: bool = True, colour: bool = False) -> str:
    """A fixed-width table; numbers right-aligned, names left-aligned. `wide`: every
    column; otherwise the NARROW ones, within WIDTH columns for names up to NAME_MAX.
    `colour`: ANSI colours for breaches and for figures measurement loss may inflate."""
    if not slis:
        return "no SLIs yet: nothing reconciled (ingest records, then run `msgtally reconcile`)"
    columns = COLUMNS if wide else tuple(c for c in COLUMNS if c.field in NARROW)
    header = [c.title for c in columns]
    rows = [s.to_json() for s in slis]
    for row in rows:
        if row["contract"] is not None and any(row["contract_breaches"].values()):
            row["contract"] = f"{row['contract']} BREACHED"
        if not wide:
            row["stream"], row["group"] = _cut(row["stream"]), _cut(row["group"])
    body = [[_cell(c.field, row[c.field], row) for c in columns] for row in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(
            _paint(c, c.ljust(w) if i < 2 or (i == len(cells) - 1 and not wide) else c.rjust(w),
                   colour) for i, (c, w) in pairs
        ).rstrip()  # fmt: skip

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


def utc(at: float) -> str:
    """A unix time as the report shows it: to the second, UTC."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def held_note(held_since: float | None) -> str:
    """The line under the table that says how far back the log goes."""
    if held_since is None:
        return "the log holds no records"
    return (
        f"the log holds the records received since {utc(held_since)} (older ones are pruned "
        "past --retain; every figure above still counts them)"
    )


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """What each mark means: the ids that records missing may account for; the
    groups back-filled from a pruned log; how far back the log goes."""
    notes = []
    for row in rows:
        if row["backfilled_since"] is not None:
            notes += textwrap.wrap(
                f"{row['stream']} / {row['group']}: a group first seen after the log was "
                f"pruned: it counts the ids received since {utc(row['backfilled_since'])}",
                WIDTH, subsequent_indent="  ",
            )  # fmt: skip
    for row in rows:
        for figure, bound, done, kind in _BOUNDS:
            if row[bound]:
                notes += textwrap.wrap(
                    f"{MARK} {row['stream']} / {row['group']}: up to {row[bound]} of the "
                    f"{figure} ids may have been {done} ({kind} records missing: measurement "
                    "loss)", WIDTH, subsequent_indent="  ",
                )  # fmt: skip
    if rows:
        notes += textwrap.wrap(held_note(rows[0]["log_held_since"]), WIDTH,
                               subsequent_indent="  ")  # fmt: skip
    return ["", *notes] if notes else []


ERRORS_TITLE = "failed records by error class"


def error_notes(slis: Sequence[SLI]) -> list[str]:
    """The lines under the table on why sends and deliveries failed: each stream's
    failed produce records and each group's failed consume records by error class
    (msgtally.record.ERROR_CLASSES; docs/adapters.md says what each means and
    what to do), the largest first. Running totals, with --since too. One line
    when no failed record carries a class."""
    if not slis:
        return []
    lines: list[str] = []
    streams: set[str] = set()
    for s in slis:
        rows = []
        if s.stream not in streams:  # a stream's produces are the same on each of its rows
            streams.add(s.stream)
            rows.append((s.stream, "produce", s.errors.get("produce", {})))
        rows.append((f"{s.stream} / {s.group}", "consume", s.errors.get("consume", {})))
        for who, kind, counts in rows:
            found = sorted(((c, n) for c, n in counts.items() if n), key=lambda cn: -cn[1])
            if found:
                what = ", ".join(f"{c} {n}" for c, n in found)
                lines += textwrap.wrap(f"{who} ({kind}): {what}", WIDTH,
                                       initial_indent="  ", subsequent_indent="    ")  # fmt: skip
    if not lines:
        return [f"{ERRORS_TITLE}: none"]
    return [f"{ERRORS_TITLE} (running totals; what each means: docs/adapters.md):", *lines]


def retry_notes(audits: Sequence[GroupAudit]) -> list[str]:
    """The lines under the table on the consumers' retry configurations: each stream
    and group with a finding, the instances with each (GET /v1/retry-configs has
    the configurations themselves); one line when nothing was found."""
    if not audits:
        return []
    found = [a for a in audits if any(a.findings.values())]
    if not found:
        groups = "group" if len(audits) == 1 else "groups"
        return [f"retry configurations: {len(audits)} {groups} audited, no finding"]
    lines = ["retry configurations (instances with each finding; GET /v1/retry-configs):"]
    for a in found:
        contract = f", contract {a.contract}" if a.contract else ""
        what = ", ".join(f"{name} {n}" for name, n in a.findings.items() if n)
        lines += textwrap.wrap(
            f"{a.stream} / {a.group} ({a.instances} instances, {len(a.settings)} "
            f"configurations{contract}): {what}",
            WIDTH, initial_indent="  ", subsequent_indent="    ",
        )  # fmt: skip
    return lines
