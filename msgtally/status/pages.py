"""The status page's routes: the list at `/`, a detail page per SLO, their partials.

Server-rendered (Jinja2); htmx replaces the partials in place every few
seconds, uPlot draws the graphs from `graphs.json`. Every script and style
is served from the package (`/ui/static/`): the page works offline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine

from msgtally.alerts.windows import format_duration
from msgtally.slis.read.query import DISCREPANCY_KINDS, read_discrepancies, read_drops_by_source
from msgtally.slis.read.report import duration
from msgtally.slis.read.traces import trace_ids
from msgtally.slis.spec.model import Spec, parse_duration

from . import model, series
from .prom import alert_states

STATIC = Path(__file__).parent / "static"
PRESETS = (3_600, 6 * 3_600, 86_400, 3 * 86_400, 7 * 86_400)
IDS_SHOWN = 10
COOKIE_AGE = 30 * 86_400
env = Environment(
    loader=PackageLoader("msgtally.status", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Links:
    """Where the page links out: Prometheus (alerts), Grafana (boards), traces."""

    prometheus: str | None = None
    grafana: str | None = None
    trace: str | None = None  # a template with {trace_id}

    def trace_link(self, trace_id: str | None) -> str | None:
        if not self.trace or not trace_id:
            return None
        return self.trace.replace("{trace_id}", trace_id)

    def boards(self, spec: Spec | None) -> list[tuple[str, str]]:
        if not self.grafana or spec is None:
            return []
        from msgtally.dashboards.build import BOARDS, uid  # the [slo] extra, only here

        base = self.grafana.rstrip("/")
        return [(b.title, f"{base}/d/{uid(spec, b.name)}") for b in BOARDS]


def _pct(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _burn(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else duration(seconds)


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


env.filters.update(pct=_pct, burn=_burn, ago=_ago, dur=format_duration, human=duration,
                   clock=_clock)  # fmt: skip
env.globals["quote"] = lambda s: quote(s, safe="")


def _render(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(env.get_template(name).render(**context))


def _ctx(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"spec": state.spec, "links": state.links, "now": time.time()}


def _objectives(request: Request, now: float) -> list[model.Objective]:
    store: Engine = request.app.state.store
    spec: Spec | None = request.app.state.spec
    with store.connect() as conn:
        rows = model.objectives(conn, spec, now)
    links: Links = request.app.state.links
    if links.prometheus and spec is not None:
        states = alert_states(links.prometheus, spec)
        request.state.prometheus = states if isinstance(states, str) else None
        if not isinstance(states, str):
            for o in rows:
                o.alerts = {sev: st for (slo, sev), st in states.items() if slo == o.key}
    return rows


def _header(request: Request, now: float) -> dict[str, Any]:
    store: Engine = request.app.state.store
    with store.connect() as conn:
        fresh = model.freshness(conn)
    loop = request.app.state.engine_loop
    trouble = loop.problem() if loop is not None else None
    return {"fresh": fresh, "age": fresh.age(now), "ready": trouble is None,
            "trouble": trouble, "engine": "off" if loop is None else loop.state}  # fmt: skip


def _find(request: Request, key: str, now: float) -> model.Objective:
    for o in _objectives(request, now):
        if o.key == key:
            return o
    raise HTTPException(404, f"no SLO or stream/group {key!r}")


def _range(o: model.Objective, text: str | None) -> int:
    if text in (None, "", "period"):
        return o.period
    try:
        seconds = int(parse_duration(text))
    except ValueError:
        raise HTTPException(422, f"range: {text!r} is not a duration") from None
    return max(60, min(seconds, o.period))


def _dropped_by(request: Request, o: model.Objective) -> list[tuple[str, str, str, int]]:
    """Measurement loss per shim instance: what each dropped on the SLO's pairs."""
    store: Engine = request.app.state.store
    with store.connect() as conn:
        return read_drops_by_source(conn, o.stream, None if o.group == "*" else o.group)


def _ids(request: Request, o: model.Objective) -> dict[str, list[dict[str, Any]]]:
    """The first ids behind each discrepancy count of the SLO's pairs, with trace links."""
    store: Engine = request.app.state.store
    links: Links = request.app.state.links
    group = None if o.group == "*" else o.group
    out: dict[str, list[dict[str, Any]]] = {}
    with store.connect() as conn:
        for kind in DISCREPANCY_KINDS:
            rows = read_discrepancies(conn, kind=kind, stream=o.stream, group=group,
                                      limit=IDS_SHOWN)  # fmt: skip
            if rows:
                out[kind] = rows
        if links.trace:
            wanted = [(r["stream"], r["message_id"], r["produced_at"] or 0.0, r["deadline"])
                      for rows in out.values() for r in rows]  # fmt: skip
            found = trace_ids(conn, wanted)
            for rows in out.values():
                for r in rows:
                    r["trace"] = links.trace_link(found.get((r["stream"], r["message_id"])))
    return out


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        now = time.time()
        rows = _objectives(request, now)
        return _render("list.html", **_ctx(request), rows=rows, head=_header(request, now),
                       prometheus_error=getattr(request.state, "prometheus", None))  # fmt: skip

    @r.get("/ui/list", response_class=HTMLResponse)
    def list_rows(request: Request) -> HTMLResponse:
        now = time.time()
        rows = _objectives(request, now)
        return _render("_rows.html", **_ctx(request), rows=rows,
                       prometheus_error=getattr(request.state, "prometheus", None))  # fmt: skip

    @r.get("/ui/header", response_class=HTMLResponse)
    def header(request: Request) -> HTMLResponse:
        return _render("_header.html", **_ctx(request), head=_header(request, time.time()))

    @r.get("/slo/{key:path}", response_class=HTMLResponse)
    def detail(request: Request, key: str, range: str | None = None) -> HTMLResponse:
        now = time.time()
        o = _find(request, key, now)
        seconds = _range(o, range)
        presets = [p for p in PRESETS if p < o.period] + [o.period]
        return _render(
            "detail.html", **_ctx(request), o=o, seconds=seconds, presets=presets,
            head=_header(request, now), ids=_ids(request, o), dropped_by=_dropped_by(request, o),
            boards=request.app.state.links.boards(request.app.state.spec),
            spec_text=_spec_text(request, o),
        )  # fmt: skip

    @r.get("/ui/slo/{key:path}/tiles", response_class=HTMLResponse)
    def tiles(request: Request, key: str) -> HTMLResponse:
        o = _find(request, key, time.time())
        return _render("_tiles.html", **_ctx(request), o=o, ids=_ids(request, o),
                       dropped_by=_dropped_by(request, o))  # fmt: skip

    @r.get("/ui/slo/{key:path}/graphs.json")
    def graphs(request: Request, key: str,
               range: Annotated[str | None, Query()] = None) -> JSONResponse:
        now = time.time()
        o = _find(request, key, now)
        store: Engine = request.app.state.store
        with store.connect() as conn:
            body = series.graphs(conn, o, now, _range(o, range))
            body["burndown"] = series.burndown(conn, o, now)
        return JSONResponse(body)

    @r.get("/ui/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return _render("login.html", next=_safe_next(next), error=None)

    @r.post("/ui/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        next = (form.get("next") or ["/"])[0]
        tokens = request.app.state.tokens
        if tokens is None or tokens.check(b"Bearer " + token.strip().encode()) is not None:
            return HTMLResponse(
                env.get_template("login.html").render(next=_safe_next(next),
                                                      error="that token is not valid"),
                status_code=401,
            )  # fmt: skip
        resp = RedirectResponse(_safe_next(next), status_code=303)
        from msgtally.auth import COOKIE

        resp.set_cookie(COOKIE, token.strip(), max_age=COOKIE_AGE, secure=True, httponly=True,
                        samesite="strict", path="/")  # fmt: skip
        return resp

    return r


def _safe_next(path: str) -> str:
    """Only a path of this collector (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


def _spec_text(request: Request, o: model.Objective) -> str | None:
    spec: Spec | None = request.app.state.spec
    if spec is None or o.slo is None:
        return None
    s = o.slo
    lines = [f"name: {s.name}", f"stream: {s.stream}", f"group: {s.group_label}",
             f"sli: {s.sli.value}", f"objective: {s.objective}", f"period: {spec.period.text}"]
    if s.threshold is not None:
        lines.append(f"threshold: {s.threshold}s")
    if s.description:
        lines.append(f"description: {s.description}")
    return "\n".join(lines)


def is_page(path: str) -> bool:
    """The paths of the page and its partials (the cookie is accepted there only)."""
    return path == "/" or path.startswith(("/slo/", "/ui/"))
