"""OTLP/gRPC on a real collector: TraceService/Export, its status codes, the
token, its bounds; and `msgtally serve` starting and stopping it."""

from __future__ import annotations

import gzip
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import Engine

from msgtally.reconcile.config import ReconcileConfig
from msgtally.server import free_port
from msgtally.store.db import open_store
from tests.conftest import LiveCollector
from tests.harness import logged
from tests.otlp_support import PRODUCER, request, span

SEND = {"messaging.system": "kafka", "messaging.destination.name": "orders"}


def produce_span(mid: object) -> Span:
    return span({**SEND, "messaging.message.id": mid}, PRODUCER)


@pytest.fixture
def live(store: Engine) -> Iterator[LiveCollector]:
    with LiveCollector(store, ReconcileConfig(), otlp_grpc=("127.0.0.1", 0)) as collector:
        yield collector


def stub(collector: LiveCollector) -> Iterator[TraceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{collector.app.state.otlp_grpc.port}") as channel:
        yield TraceServiceStub(channel)


@pytest.fixture
def traces(live: LiveCollector) -> Iterator[TraceServiceStub]:
    yield from stub(live)


def raw_call(collector: LiveCollector, body: bytes, **kwargs: object) -> grpc.RpcError:
    """Export `body` as it is (no serialization): the error it gets."""
    port = collector.app.state.otlp_grpc.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        )
        with pytest.raises(grpc.RpcError) as err:
            call(body, timeout=10, **kwargs)
    return err.value


def test_export_answers_partial_success(store: Engine, traces: TraceServiceStub) -> None:
    req = request([produce_span("m1"), produce_span(""), produce_span("m2")])
    answer: ExportTraceServiceResponse = traces.Export(req, compression=grpc.Compression.Gzip)
    assert answer.partial_success.rejected_spans == 1
    assert answer.partial_success.error_message.endswith(
        "messaging.message.id: must not be empty"
    )
    again = traces.Export(req)  # a retry: logged again, counted once by the engine
    assert again.partial_success.rejected_spans == 1
    assert sorted(r["message_id"] for r in logged(store)) == ["m1", "m2"]
    fine = traces.Export(ExportTraceServiceRequest())
    assert not fine.HasField("partial_success")


def test_bytes_that_are_no_request_are_invalid_argument(live: LiveCollector) -> None:
    err = raw_call(live, b"\xff\xff\xff")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("body: not an ExportTraceServiceRequest")


def test_messages_past_the_limit_are_refused_also_decompressed(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_body=64 * 1024,
                       otlp_grpc=("127.0.0.1", 0)) as live:  # fmt: skip
        big = request([produce_span(f"m{i}") for i in range(2000)]).SerializeToString()
        assert len(big) > 64 * 1024
        err = raw_call(live, big)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a gzip bomb: 50 MiB of zeros, 50 kB on the wire
        bomb = request([produce_span("z" * 50 * 2**20)]).SerializeToString()
        assert len(gzip.compress(bomb)) < 64 * 1024
        err = raw_call(live, bomb, compression=grpc.Compression.Gzip)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for traces in stub(live):
            traces.Export(request([produce_span("fits")]), compression=grpc.Compression.Gzip)
    assert [r["message_id"] for r in logged(store)] == ["fits"]


def test_busy_is_unavailable(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_inflight=4096,
                       otlp_grpc=("127.0.0.1", 0)) as live:  # fmt: skip
        body = request([produce_span(f"m{i}") for i in range(100)]).SerializeToString()
        assert len(body) > 4096
        err = raw_call(live, body)
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # exporters retry it
        assert err.details().startswith("busy: ")
        assert live.app.state.intake.inflight == 0
    assert logged(store) == []


def test_a_store_that_is_down_is_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    store = open_store(str(db))
    with LiveCollector(store, ReconcileConfig(), otlp_grpc=("127.0.0.1", 0)) as live:
        db.unlink()
        db.mkdir()
        store.dispose()
        err = raw_call(live, request([produce_span("m1")]).SerializeToString())
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details().startswith("store unavailable")
    store.dispose()


def test_the_token_is_checked_in_the_metadata(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), token="s3cret",
                       otlp_grpc=("127.0.0.1", 0)) as live:  # fmt: skip
        body = request([produce_span("m1")]).SerializeToString()
        err = raw_call(live, body)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == "authorization: a bearer token is required"
        err = raw_call(live, body, metadata=[("authorization", "Bearer nope")])
        assert err.details() == "authorization: the token is not valid"
        for traces in stub(live):
            answer = traces.Export(
                request([produce_span("m1")]), metadata=[("authorization", "Bearer s3cret")]
            )
            assert not answer.HasField("partial_success")
        refused = live.app.state.registry.get_sample_value(
            "msgtally_otlp_rejected_total", {"transport": "grpc", "reason": "unauthorized"}
        )
        assert refused == 2
    assert len(logged(store)) == 1


# --- msgtally serve -----------------------------------------------------------------------------


def serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgtally.cli", "serve", "--db", str(tmp_path / "s.db"),
         "--port", str(port), *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, url


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serve_runs_otlp_grpc_and_stops_cleanly(tmp_path: Path) -> None:
    grpc_port = free_port()
    proc, url = serve(tmp_path, "--otlp-grpc-port", str(grpc_port))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = TraceServiceStub(channel).Export(request([produce_span("m1")]), timeout=10)
        assert not answer.HasField("partial_success")
        assert '"recorded",transport="grpc"} 1.0' in httpx.get(f"{url}/metrics").text
    finally:
        err = stop(proc)
    assert f"OTLP: /v1/traces and gRPC 127.0.0.1:{grpc_port}" in err
    assert not listening(grpc_port)


def test_serve_without_otlp_grpc(tmp_path: Path) -> None:
    grpc_port = free_port()
    proc, _ = serve(tmp_path, "--otlp-grpc-port", str(grpc_port), "--no-otlp-grpc")
    try:
        assert not listening(grpc_port)
    finally:
        err = stop(proc)
    assert "OTLP: /v1/traces and gRPC off" in err


def test_a_busy_grpc_port_is_an_error_before_anything_listens(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = serve(tmp_path, "--otlp-grpc-port", str(port))
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.strip() == f"msgtally serve: cannot listen on 127.0.0.1:{port}: " \
        "Address already in use (OTLP/gRPC: --otlp-grpc-port, --no-otlp-grpc)"  # fmt: skip


def test_the_grpc_port_cannot_be_the_http_port(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "msgtally.cli", "serve", "--db", str(tmp_path / "s.db"),
         "--port", str(port), "--otlp-grpc-port", str(port)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"msgtally serve: --otlp-grpc-port {port} is the HTTP port (--port)"
    )
