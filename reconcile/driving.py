"""A join whose left side drives: the scratch table, then index lookups.

SQLite plans joins without statistics on temporary tables, and given
`t_cand JOIN records` it scans all of `records` and probes the scratch
table: a pass then costs the whole history. `CROSS JOIN` is SQLite's way to
fix the order (the left table is the outer loop). Other dialects plan on
statistics and get a plain JOIN.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FromClause, Join


class DrivingJoin(Join):
    inherit_cache = True


def driving_join(left: FromClause, right: FromClause, onclause: ColumnElement[Any]) -> Join:
    """`left JOIN right ON onclause`, with `left` as the outer loop on SQLite."""
    return DrivingJoin(left, right, onclause)


@compiles(DrivingJoin, "sqlite")
def _sqlite(join: DrivingJoin, compiler: SQLCompiler, **kw: Any) -> str:
    kw["asfrom"] = True
    left = compiler.process(join.left, **kw)
    right = compiler.process(join.right, **kw)
    assert join.onclause is not None  # driving_join always has one
    on = compiler.process(join.onclause, **{k: v for k, v in kw.items() if k != "asfrom"})
    return f"{left} CROSS JOIN {right} ON {on}"


@compiles(DrivingJoin)
def _default(join: DrivingJoin, compiler: SQLCompiler, **kw: Any) -> str:
    sql: str = compiler.visit_join(join, **kw)  # type: ignore[no-untyped-call]
    return sql
