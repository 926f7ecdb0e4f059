"""Assembly of the collector: ingest and SLI routes, metrics, reconcile loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import Engine

from msgtally.ingest import problems
from msgtally.ingest.api import router as ingest_router
from msgtally.ingest.ingest_metrics import ingest_metrics
from msgtally.ingest.limits import DEFAULT_MAX_BODY
from msgtally.reconcile import LeaseHeld, ReconcileConfig, Reconciler
from msgtally.slis.api import router as slis_router
from msgtally.slis.exposition import StoreCollector

log = logging.getLogger("msgtally")


class EngineLoop:
    """The reconcile engine in a background thread of the collector.

    It takes the store's lease, ticks every `interval` seconds (at once while
    a backlog lasts), checkpoints, and stands by while another engine holds
    the lease. A failed tick throws the in-memory state away: the next one
    rebuilds it from the store, which holds nothing half-written.
    """

    def __init__(self, engine: Engine, config: ReconcileConfig, interval: float) -> None:
        self._store, self._config, self._interval = engine, config, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msgtally-engine", daemon=True)
        self.reconciler: Reconciler | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._interval
            try:
                if self.reconciler is None:
                    self.reconciler = Reconciler(self._store, self._config).open()
                result = self.reconciler.tick(time.time())
                if result.records >= self._config.budget:
                    wait = 0  # a backlog: keep going
            except LeaseHeld:
                wait = 5.0  # stand by
            except Exception:
                log.exception("engine tick failed; rebuilding the state from the store")
                self._drop(checkpoint=False)
            self._stop.wait(wait)
        self._drop(checkpoint=True)

    def _drop(self, *, checkpoint: bool) -> None:
        reconciler, self.reconciler = self.reconciler, None
        if reconciler is not None:
            try:
                reconciler.close(checkpoint=checkpoint)
            except Exception:
                log.exception("engine close failed")


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
        loop = EngineLoop(engine, config, reconcile_interval) if reconcile_interval else None
        if loop:
            loop.start()
        try:
            yield
        finally:
            if loop:
                loop.stop()

    app = FastAPI(title="msgtally collector", version="0.1.0", lifespan=lifespan)
    app.state.engine = engine
    app.state.registry = registry
    ingest_metrics(app.state)  # the ingest counters, at 0 from the first scrape
    app.state.max_body = max_body
    problems.install(app)
    app.include_router(ingest_router)
    app.include_router(slis_router)
    return app
