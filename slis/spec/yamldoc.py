"""YAML documents as plain data plus the line of every value, for exact error places.

`yaml.compose` keeps each node's position; the spec loaders report problems
as `line N: slo NAME: field: reason`, the way a linter does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, and where it is."""

    line: int | None
    field: str
    message: str
    slo: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        slo = f"slo {self.slo!r}: " if self.slo is not None else ""
        return f"{where}{slo}{self.field}: {self.message}"


class SpecError(ValueError):
    """A spec with problems; `problems` lists every one of them."""

    def __init__(self, problems: list[Problem], source: str = "spec") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"{source}: {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


@dataclass
class Doc:
    """One YAML document: its data and the 1-based line of every path in it."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that is in the file."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)


def _convert(node: Node, path: Path, doc: Doc, construct: SafeConstructor) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = construct.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                doc.problems.append(
                    Problem(key_node.start_mark.line + 1, _dotted(path), f"key {key!r} is not text")
                )
                continue
            if key in out:
                doc.problems.append(
                    Problem(
                        key_node.start_mark.line + 1,
                        _dotted((*path, key)),
                        "appears twice in the same mapping",
                    )
                )
            out[key] = _convert(value_node, (*path, key), doc, construct)
            doc.lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, SequenceNode):
        return [_convert(item, (*path, i), doc, construct) for i, item in enumerate(node.value)]
    assert isinstance(node, ScalarNode)
    if node.style is None and (
        node.tag == _TIMESTAMP or (node.tag in (_INT, _FLOAT) and _SEXAGESIMAL.match(node.value))
    ):
        # YAML 1.1 reads 22:00 as the number 1320 and 2025-06-14T22:00:00Z as a date: a
        # spec means the text (a time of day, an RFC 3339 timestamp), checked as such.
        return node.value
    return construct.construct_object(node, deep=True)


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(document)"


def dotted(path: Path) -> str:
    """`('slos', 2, 'threshold')` -> `slos[2].threshold`."""
    return _dotted(path)


def parse_documents(text: str) -> Iterator[Doc]:
    """Every document of a YAML text; a syntax error raises SpecError with its line."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError([Problem(line, "(yaml)", str(exc.problem or exc))]) from exc
    for node in nodes:
        if node is None:
            continue
        doc = Doc(data=None)
        try:
            doc.data = _convert(node, (), doc, SafeConstructor())
        except yaml.MarkedYAMLError as exc:  # e.g. a bad !!tag
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else None
            raise SpecError([Problem(line, "(yaml)", str(exc.problem or exc))]) from exc
        yield doc
