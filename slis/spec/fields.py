"""Typed reads of YAML fields that collect every problem instead of stopping at the first."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from .model import RESERVED_LABELS
from .yamldoc import Doc, Path, Problem, dotted

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FieldReader:
    """Reads fields of one document; every bad value becomes a Problem."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.problems: list[Problem] = list(doc.problems)
        self.slo: str | None = None  # the SLO being read, named in problems

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.doc.line(path), dotted(path), message, self.slo))

    def mapping(
        self, value: Any, path: Path, allowed: Collection[str], required: Collection[str] = ()
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, not {_kind(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.problem((*path, key), f"unknown field (known: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                self.problem(path, f"missing required field {key!r}")
        return value

    def string(self, m: Mapping[str, Any], key: str, path: Path) -> str | None:
        if key not in m:
            return None
        value = m[key]
        if not isinstance(value, str) or not value:
            self.problem((*path, key), f"must be non-empty text, not {_kind(value)}")
            return None
        return value

    def name(self, m: Mapping[str, Any], key: str, path: Path) -> str | None:
        value = self.string(m, key, path)
        if value is not None and not NAME.match(value):
            self.problem(
                (*path, key),
                f"{value!r} is not a valid name (letters, digits, '-', '_', '.'; "
                "starting with a letter or digit)",
            )
            return None
        return value

    def number(self, m: Mapping[str, Any], key: str, path: Path) -> float | None:
        if key not in m:
            return None
        value = m[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem((*path, key), f"must be a number, not {_kind(value)}")
            return None
        return float(value)

    def boolean(self, m: Mapping[str, Any], key: str, path: Path) -> bool:
        value = m.get(key, False)
        if not isinstance(value, bool):
            self.problem((*path, key), f"must be true or false, not {_kind(value)}")
            return False
        return value

    def text_map(
        self, m: Mapping[str, Any], key: str, path: Path, *, labels: bool
    ) -> dict[str, str]:
        """A mapping of label (or annotation) names to text values."""
        if key not in m:
            return {}
        raw = m[key]
        value = self.mapping(raw, (*path, key), allowed=raw if isinstance(raw, dict) else ())
        out: dict[str, str] = {}
        for name, item in (value or {}).items():
            where = (*path, key, name)
            if not LABEL_NAME.match(name) or name.startswith("__"):
                self.problem(where, f"{name!r} is not a valid Prometheus label name")
                continue
            if labels and name in RESERVED_LABELS:
                self.problem(
                    where,
                    f"label {name!r} is set by msgtally itself "
                    f"(reserved: {', '.join(sorted(RESERVED_LABELS))})",
                )
                continue
            if not isinstance(item, str):
                self.problem(where, f"must be text, not {_kind(item)} (quote it)")
                continue
            out[name] = item
        return out


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "empty text" if not value else f"the text {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return f"{type(value).__name__} {value!r}"
