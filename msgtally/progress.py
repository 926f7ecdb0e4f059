"""Progress of long work (a reconcile over a big log, the demo's ingest): a bar with
the rate and the time left on a terminal (rich), one line per step otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Advance = Callable[[int, str], None]  # (units done in this step, what the step did)


@contextmanager
def progress(label: str, total: int | None, unit: str = "records",
             stream: TextIO | None = None) -> Iterator[Advance]:  # fmt: skip
    """`advance(n, note)` after each step: on a terminal a bar (`label`, rate, time
    left), else a line per step on `stream` (stderr)."""
    out = stream or sys.stderr
    if not out.isatty():
        def line(n: int, note: str) -> None:
            print(f"  {label}: {note}", file=out, flush=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{unit}"), TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(file=out), transient=False) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int, note: str) -> None:
            bar.update(task, advance=n)

        yield advance
