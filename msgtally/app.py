"""Assembly of the collector: ingest and SLI routes, metrics, reconcile loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from msgtally.ingest import problems
from msgtally.ingest.api import router as ingest_router
from msgtally.ingest.ingest_metrics import ingest_metrics
from msgtally.ingest.limits import DEFAULT_MAX_BODY
from msgtally.reconcile import ReconcileConfig, reconcile
from msgtally.slis.api import router as slis_router
from msgtally.slis.exposition import StoreCollector

log = logging.getLogger("msgtally")


class ReconcileLoop:
    """Runs reconcile passes every `interval` seconds in a background thread."""

    def __init__(self, engine: Engine, config: ReconcileConfig, interval: float) -> None:
        self._engine, self._config, self._interval = engine, config, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msgtally-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = reconcile(self._engine, self._config)
                if result.records or result.classified:
                    log.info("reconciled %s", result)
            except SQLAlchemyError:  # the store is down: say so, try again next tick
                log.exception("reconcile pass failed")
            self._stop.wait(self._interval)


def create_app(
    engine: Engine,
    config: ReconcileConfig | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    reconcile_interval: float | None = None,
) -> FastAPI:
    """The collector. With `reconcile_interval`, it also runs the reconcile loop."""
    config = config or ReconcileConfig()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(engine, config.latency_buckets))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = ReconcileLoop(engine, config, reconcile_interval) if reconcile_interval else None
        # SQLite checkpoints the WAL whenever its last connection closes; with a
        # connection per request that is every request. One idle connection held
        # for the collector's life keeps checkpoints to SQLite's own schedule.
        anchor = engine.connect() if engine.dialect.name == "sqlite" else None
        if loop:
            loop.start()
        try:
            yield
        finally:
            if loop:
                loop.stop()
            if anchor is not None:
                anchor.close()

    app = FastAPI(title="msgtally collector", version="0.1.0", lifespan=lifespan)
    app.state.engine = engine
    app.state.registry = registry
    ingest_metrics(app.state)  # the ingest counters, at 0 from the first scrape
    app.state.max_body = max_body
    problems.install(app)
    app.include_router(ingest_router)
    app.include_router(slis_router)
    return app
