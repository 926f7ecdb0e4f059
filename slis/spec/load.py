"""Load and validate an SLO spec: `msgtally/v1` YAML, or OpenSLO (`openslo/v1`).

Every problem is reported with its place (line, SLO, field); a spec with any
problem raises SpecError listing all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path as FilePath

from msgtally.names import DEFAULT_BUCKETS

from .model import Spec
from .native import read_native
from .openslo import read_openslo
from .yamldoc import Doc, Problem, SpecError, parse_documents


def load_spec(
    text: str,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    source: str = "spec",
    scrape_interval: int | None = None,
) -> Spec:
    """A spec from YAML text, native or OpenSLO; raises SpecError with every problem.

    `scrape_interval` (seconds, from --scrape-interval) wins over the spec's."""
    docs = list(_documents(text, source))
    first = docs[0].data if docs else None
    if isinstance(first, dict) and "apiVersion" in first:
        spec, problems = read_openslo(docs, buckets, scrape_interval)
    elif len(docs) == 1:
        spec, problems = read_native(docs[0], buckets, scrape_interval)
    else:
        line = docs[1].line(()) if len(docs) > 1 else 1
        spec, problems = None, [Problem(line, "(document)", "a spec is one YAML document")]
    if problems or spec is None:
        raise SpecError(problems or [Problem(1, "(document)", "empty spec")], source)
    return spec


def read_spec_file(
    path: str | FilePath,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    scrape_interval: int | None = None,
) -> Spec:
    path = FilePath(path)
    return load_spec(
        path.read_text(encoding="utf-8"),
        buckets=buckets,
        source=str(path),
        scrape_interval=scrape_interval,
    )


def check_spec(
    text: str,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    source: str = "spec",
    scrape_interval: int | None = None,
) -> list[Problem]:
    """Every problem of a spec; an empty list when it is valid."""
    try:
        load_spec(text, buckets=buckets, source=source, scrape_interval=scrape_interval)
    except SpecError as exc:
        return exc.problems
    return []


def _documents(text: str, source: str) -> list[Doc]:
    try:
        docs = list(parse_documents(text))
    except SpecError as exc:
        raise SpecError(exc.problems, source) from None
    if not docs:
        raise SpecError([Problem(1, "(document)", "empty spec")], source)
    return docs
