"""OTLP/gRPC: TraceService/Export (default port 4317), beside the HTTP port.

The server runs on the collector's event loop (grpc.aio), so it shares the
collector's byte budget, store, name guard and counters with HTTP; each
request is mapped and stored in a worker thread as on /v1/traces. gzip is
grpc's own (grpc-encoding). Messages are bounded by --max-body, after
decompression too; concurrent streams per connection by MAX_STREAMS (an
exporter beyond it waits, HTTP/2 flow control, rather than failing).

Refusals: INVALID_ARGUMENT (not a request), RESOURCE_EXHAUSTED (past
--max-body), UNAVAILABLE (busy, or the store is down: exporters retry it),
UNAUTHENTICATED (with a token, the `authorization` metadata must carry it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import grpc
from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

from msgtally.ingest.intake.metrics import ingest_metrics
from msgtally.ingest.intake.otlp.decode import PROTOBUF, answer, grpc_code, reason_of
from msgtally.ingest.intake.otlp.export import export_body

SERVICE: Final = "opentelemetry.proto.collector.trace.v1.TraceService"
DEFAULT_PORT: Final = 4317
MAX_STREAMS: Final = 16  # requests in progress per connection


class OtlpGrpc:
    """The gRPC server of one collector (`state`: the app's state)."""

    def __init__(self, state: Any, authorize: Callable[[bytes], str | None] | None) -> None:
        self._state = state
        self._authorize = authorize
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen (port 0: any free port) and serve; returns the port.
        Raises RuntimeError when the address cannot be bound."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared one
                ("grpc.max_receive_message_length", self._state.intake.max_body),
                ("grpc.max_concurrent_streams", MAX_STREAMS),
            ]
        )
        # No (de)serializers: bytes in, bytes out, parsed as on /v1/traces.
        export: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self._export
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": export}),)
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let those in progress finish (up to `grace` seconds)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _export(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        state = self._state
        if self._authorize is not None:
            metadata = context.invocation_metadata() or ()
            given = next((v for k, v in metadata if k == "authorization"), "")
            why = self._authorize(given.encode() if isinstance(given, str) else given)
            if why is not None:
                state.otlp_metrics.rejected("grpc", 401)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authorization: {why}")
        try:
            with state.intake.held() as take:
                take(len(request))
                outcome = await run_in_threadpool(
                    export_body, state.store, request, PROTOBUF, state.names
                )
        except HTTPException as exc:
            state.otlp_metrics.rejected("grpc", exc.status_code)
            await context.abort(grpc_code(exc), reason_of(exc))
        ingest_metrics(state).accepted(outcome.logged)
        state.otlp_metrics.spans("grpc", outcome.spans)
        return answer(outcome.rejected, outcome.message(), PROTOBUF)
