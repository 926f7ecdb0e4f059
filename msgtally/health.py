"""Liveness and readiness: answered from the event loop, never queued behind
the requests that wait for the store."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from msgtally.ingest.intake.problems import problem

router = APIRouter()
# Readiness pings the store from a thread of its own: the shared thread pool
# may be full of ingest requests waiting for the store's write lock.
_pinger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgtally-readyz")
PING_TIMEOUT = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (nothing else is asked)."""
    return {"status": "ok"}


def _ping(store: Engine) -> None:
    with store.connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, str]:
    """The store answers and the engine, if this collector runs one, is at work."""
    problems = []
    loop = request.app.state.engine_loop
    if loop is not None and (trouble := loop.problem()) is not None:
        problems.append(trouble)
    try:
        run = asyncio.get_running_loop().run_in_executor(_pinger, _ping, request.app.state.store)
        await asyncio.wait_for(run, PING_TIMEOUT)
    except TimeoutError:
        problems.append(f"the store did not answer within {PING_TIMEOUT:g} s")
    except SQLAlchemyError as exc:
        problems.append(f"store unavailable: {type(exc).__name__}")
    if problems:
        raise problem(503, None, "; ".join(problems))
    return {"status": "ready", "engine": "off" if loop is None else loop.state}
