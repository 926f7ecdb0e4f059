"""Assembly of the collector: ingest and SLI routes, metrics, reconcile loop."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from msgtally.ingest.intake import problems
from msgtally.ingest.intake.api import BODY_SCHEMAS
from msgtally.ingest.intake.api import router as ingest_router
from msgtally.ingest.intake.bounds import Intake
from msgtally.ingest.intake.cardinality import NameGuard
from msgtally.ingest.intake.limits import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_SERIES,
    DEFAULT_READ_TIMEOUT,
)
from msgtally.ingest.intake.metrics import ingest_metrics
from msgtally.ingest.intake.otlp.grpc_server import OtlpGrpc
from msgtally.ingest.intake.otlp.http import router as otlp_router
from msgtally.ingest.intake.otlp.metrics import OtlpMetrics
from msgtally.reconcile import retention as log_retention
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import Reconciler, checkpoint_interval
from msgtally.reconcile.history import Retention, prune
from msgtally.reconcile.lease import LeaseHeld
from msgtally.slis.read.api import router as slis_router
from msgtally.slis.read.exposition import StoreCollector
from msgtally.slis.spec.model import Spec
from msgtally.store.db import checkpoint_wal
from msgtally.store.tables import log_pending

from .auth import BearerAuth, Tokens
from .health import router as health_router
from .status.pages import STATIC, Links, is_page
from .status.pages import router as status_router

log = logging.getLogger("msgtally")


class EngineLoop:
    """The reconcile engine in a background thread of the collector.

    It takes the store's lease, ticks every `interval` seconds (at once while
    a backlog lasts), checkpoints, and stands by while another engine holds
    the lease. A failed tick throws the in-memory state away: the next one
    rebuilds it from the store, which holds nothing half-written; failures in
    a row wait longer each time (up to `MAX_BACKOFF`).
    """

    STALE = 30.0  # seconds without a tick, or without progress on a backlog, before unready
    MAX_BACKOFF = 10.0
    STANDBY = 5.0  # seconds between tries to take the lease while another engine holds it
    PRUNE_EVERY = 60.0  # seconds between prunes of the per-minute and per-hour rows
    # Seconds between prunes of the log and the verdicts; a pass takes at most
    # PRUNE_CHUNKS short transactions of each, and goes on after the next tick
    # while there is more (msgtally.reconcile.retention).
    PRUNE_LOG_EVERY = 5.0
    PRUNE_CHUNKS = 8

    def __init__(
        self, store: Engine, config: ReconcileConfig, interval: float,
        retention: Retention | None = None,
    ) -> None:  # fmt: skip
        self._store, self._config, self._interval = store, config, interval
        self._retention = retention or Retention()
        self._last_prune = 0.0
        self._last_log_prune = 0.0
        self._prune_more = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msgtally-engine", daemon=True)
        self.reconciler: Reconciler | None = None
        self.state = "starting"  # running | standby | failing
        self.last_ok = time.monotonic()
        self.last_error = ""
        self.failures = 0  # ticks failed in a row
        # The backlog as last seen, and when it last shrank, was empty, or rows applied.
        self.backlog = 0
        self.progress_at = time.monotonic()
        self._last_wal = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def problem(self) -> str | None:
        """Why the engine is not doing its work, or None (readiness)."""
        if not self._thread.is_alive():
            return "the engine thread is not running"
        now = time.monotonic()
        if self.state == "failing":
            return f"the engine is failing ({self.failures} ticks in a row): {self.last_error}"
        idle = now - self.last_ok
        if idle > self.STALE + (self.STANDBY if self.state == "standby" else 0):
            return f"the engine has not completed a tick for {idle:.0f} s ({self.last_error})"
        stuck = now - self.progress_at
        if self.backlog and stuck > self.STALE:
            who = " (another engine holds the store's lease)" if self.state == "standby" else ""
            return (
                f"the backlog ({self.backlog} records) has not shrunk for {stuck:.0f} s and "
                f"the engine applied nothing{who}"
            )
        return None

    def _observe(self, applied: int) -> None:
        """The backlog after a tick (or a look while standing by)."""
        with self._store.connect() as conn:
            backlog = int(
                conn.execute(select(func.coalesce(func.sum(log_pending.c.n), 0))).scalar_one()
            )
        if applied or not backlog or backlog < self.backlog:
            self.progress_at = time.monotonic()
        self.backlog = backlog

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._interval
            try:
                if self.reconciler is None:
                    self.reconciler = Reconciler(
                        self._store, self._config,
                        checkpoint_every=checkpoint_interval(self._retention.minutes),
                    ).open()  # fmt: skip
                result = self.reconciler.tick(time.time())
                self.state, self.last_ok, self.failures = "running", time.monotonic(), 0
                self._observe(result.batches)
                if result.records >= self._config.budget:
                    wait = 0  # a backlog: keep going
                if time.monotonic() - self._last_prune > self.PRUNE_EVERY:
                    prune(self._store, time.time(), self._retention)
                    self._last_prune = time.monotonic()
                due = time.monotonic() - self._last_log_prune > self.PRUNE_LOG_EVERY
                if self._prune_more or due:
                    self._prune_log()
                if time.monotonic() - self._last_wal > 2:
                    checkpoint_wal(self._store)
                    self._last_wal = time.monotonic()
            except LeaseHeld:
                self.state, self.last_ok, self.failures = "standby", time.monotonic(), 0
                wait = self.STANDBY
                with contextlib.suppress(SQLAlchemyError):
                    self._observe(0)
            except Exception as exc:  # any bug: say it, start again from the store
                self.state, self.last_error = "failing", f"{type(exc).__name__}: {exc}"
                self.failures += 1
                log.exception("engine tick failed; rebuilding the state from the store")
                self._drop(checkpoint=False)
                wait = min(self.MAX_BACKOFF, self._interval * 2 ** min(self.failures, 16))
            self._stop.wait(wait)
        self._drop(checkpoint=True)

    def _prune_log(self) -> None:
        """A few chunks of the log and verdicts past their retention, and a step of
        space given back; the rest after the next tick."""
        done = log_retention.prune(
            self._store, time.time(), self._retention, max_chunks=self.PRUNE_CHUNKS
        )
        log_retention.reclaim(self._store, max_steps=1)
        self._prune_more = done.more
        self._last_log_prune = time.monotonic()
        if done.log_rows or done.verdicts:
            log.debug("pruned %d log rows (%d ticks), %d verdict rows",
                      done.log_rows, done.ticks, done.verdicts)  # fmt: skip

    def _drop(self, *, checkpoint: bool) -> None:
        reconciler, self.reconciler = self.reconciler, None
        if reconciler is not None:
            try:
                reconciler.close(checkpoint=checkpoint)
            except Exception:
                log.exception("engine close failed")


def create_app(
    store: Engine,
    config: ReconcileConfig | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_series: int = DEFAULT_MAX_SERIES,
    token: str | Tokens | None = None,
    metrics_open: bool = False,
    reconcile_interval: float | None = None,
    otlp_grpc: tuple[str, int] | None = None,
    spec: Spec | None = None,
    retention: Retention | None = None,
    links: Links | None = None,
    ui_open: bool = False,
) -> FastAPI:
    """The collector. With `reconcile_interval`, it also runs the reconcile loop;
    with `otlp_grpc` (host, port), the OTLP/gRPC server (app.state.otlp_grpc.port);
    with an SLO `spec`, its SLIs carry the delivery contracts the spec declares;
    with a `token` (or `Tokens`, which a token file's watcher replaces), every
    endpoint but /healthz needs one (the status page takes it once, into a cookie,
    unless `ui_open`); `links` are where the status page links out (Prometheus,
    Grafana, traces)."""
    config = config or ReconcileConfig()
    tokens = Tokens([token]) if isinstance(token, str) else token
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, config.latency_buckets, spec))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        if otlp_grpc is not None:  # made here: grpc.aio belongs to the serving loop
            grpc_server = OtlpGrpc(_app.state, tokens.check if tokens else None)
            port = await grpc_server.start(*otlp_grpc)
            log.info("OTLP/gRPC on %s:%d", otlp_grpc[0], port)
        _app.state.otlp_grpc = grpc_server
        loop = (
            EngineLoop(store, config, reconcile_interval, retention)
            if reconcile_interval else None
        )  # fmt: skip
        _app.state.engine_loop = loop
        if loop:
            loop.start()
        try:
            yield
        finally:
            if grpc_server:
                await grpc_server.stop()
            if loop:
                loop.stop()

    app = FastAPI(title="msgtally collector", version="0.1.0", lifespan=lifespan)
    app.state.store = store
    app.state.spec = spec
    app.state.registry = registry
    ingest_metrics(app.state)  # the ingest counters, at 0 from the first scrape
    app.state.intake = Intake(max_body, max_inflight, read_timeout)
    app.state.names = NameGuard(max_series)
    app.state.otlp_metrics = OtlpMetrics(registry)
    app.state.tokens = tokens
    app.state.links = links or Links()
    if tokens is not None:
        open_paths = {"/healthz", "/metrics"} if metrics_open else {"/healthz"}
        app.add_middleware(
            BearerAuth, tokens=tokens, open_paths=open_paths, on_refused=_count_refusal(app),
            page_paths=is_page, login="/ui/login", page_open=ui_open,
            open_prefixes=("/ui/login", "/ui/static/"),
        )  # fmt: skip
    problems.install(app)
    app.state.engine_loop = None
    app.include_router(health_router)
    app.include_router(ingest_router)
    app.include_router(otlp_router)
    app.include_router(slis_router)
    app.include_router(status_router())
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="status-static")
    _describe_bodies(app)
    return app


def _count_refusal(app: FastAPI) -> Callable[[str], None]:
    """Count a 401 on an ingest endpoint under the reason `unauthorized`."""

    def refused(path: str) -> None:
        if path == "/v1/records":
            ingest_metrics(app.state).rejected(401)
        elif path == "/v1/traces":
            app.state.otlp_metrics.rejected("http", 401)

    return refused


def _describe_bodies(app: FastAPI) -> None:
    """Add the record types to the OpenAPI document (POST /v1/records refers to them)."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(BODY_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
