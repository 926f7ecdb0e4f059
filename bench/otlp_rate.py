"""OTLP ingest (spans/s) against the same records through POST /v1/records.

    python bench/otlp_rate.py              # SQLite; ~1 min
    python bench/otlp_rate.py --pg         # PostgreSQL too
    python bench/otlp_rate.py --gzip       # exporters compressing (gzip)

The workload's records (bench/_common.Workload) as the messaging spans an
OpenTelemetry SDK exports: one span a record (PRODUCER send or CONSUMER
process, 8 attributes, ERROR status for failures, the SDK's resource), in
ExportTraceServiceRequest bodies of `--batch` spans (512: the
BatchSpanProcessor's default), serialized before the clock starts. For each
way in, a fresh collector in its own process (`msgtally serve
--no-reconcile`) and `--senders` clients (threads, one connection each)
sending every body and waiting for every answer:

- OTLP/HTTP: POST /v1/traces, application/x-protobuf;
- OTLP/gRPC: TraceService/Export;
- the reference, same run: the records those spans map to (as the collector
  stores them: trace and span ids, record ids), as JSON bodies of the same
  size, POSTed to /v1/records.

Then the log is read back: it holds every record, and no span was rejected.
Goal: OTLP >= 0.5x the reference, both ways.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from typing import Any

import grpc
from _common import CollectorProcess, Rec, Workload, chunks, log, pg_database, scratch_dir
from ingest_rate import logged, post_all, send_all
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from msgtally.ingest.intake.otlp.mapping import Mapped, map_span, service_name

GOAL_RATIO = 0.5
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


RESOURCE = Resource(attributes=[
    _kv("service.name", "bench"), _kv("telemetry.sdk.language", "python"),
    _kv("telemetry.sdk.name", "opentelemetry"), _kv("telemetry.sdk.version", "1.45.2"),
])  # fmt: skip


def as_span(rec: Rec, n: int) -> Span:
    """A record as the span an instrumented client would export for it."""
    stream, mid, kind, grp, ts, attempt, outcome = rec
    end = int(ts * 1e9)
    attrs = [_kv("messaging.system", "kafka"), _kv("messaging.destination.name", stream),
             _kv("messaging.message.id", mid), _kv("server.address", "broker-1.internal"),
             _kv("server.port", 9092), _kv("msgtally.attempt", attempt)]  # fmt: skip
    if kind == "produce":
        attrs.append(_kv("messaging.operation.type", "send"))
    else:
        attrs += [_kv("messaging.operation.type", "process"),
                  _kv("messaging.consumer.group.name", grp)]  # fmt: skip
        if outcome == "dead_letter":
            attrs.append(_kv("msgtally.outcome", "dead_letter"))
    span = Span(
        trace_id=(n + 1).to_bytes(16, "big"),
        span_id=(n + 1).to_bytes(8, "big"),
        parent_span_id=(n + 7).to_bytes(8, "big"),
        name=f"{'send' if kind == 'produce' else 'process'} {stream}",
        kind=Span.SPAN_KIND_PRODUCER if kind == "produce" else Span.SPAN_KIND_CONSUMER,
        start_time_unix_nano=end - 1_500_000,
        end_time_unix_nano=end,
        attributes=attrs,
    )
    if outcome != "ok":
        span.status.code = Status.STATUS_CODE_ERROR
    return span


def make_bodies(ids: int, batch: int, seed: int) -> tuple[list[ExportTraceServiceRequest], int]:
    workload = Workload(ids, seed=seed)
    requests, n = [], 0
    for part in chunks(workload.records(), batch):
        spans = [as_span(rec, n + i) for i, (rec, _) in enumerate(part)]
        scope = ScopeSpans(scope=InstrumentationScope(name="bench.kafka", version="1.0"),
                           spans=spans)  # fmt: skip
        requests.append(ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=RESOURCE, scope_spans=[scope])]))  # fmt: skip
        n += len(part)
    return requests, n


def records_of(req: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """The records the collector makes of a request (the mapping itself)."""
    out = []
    for rs in req.resource_spans:
        service = service_name(rs.resource)
        for ss in rs.scope_spans:
            for span in ss.spans:
                mapped = map_span(span, ss.scope.name, service)
                assert isinstance(mapped, Mapped), mapped
                out += mapped.records
    return out


def _check(answer: bytes) -> None:
    response = ExportTraceServiceResponse.FromString(answer)
    if response.partial_success.rejected_spans:
        raise RuntimeError(response.partial_success.error_message)


def http_traces(url: str, bodies: list[bytes], senders: int, gz: bool) -> float:
    import httpx

    headers = {"content-type": "application/x-protobuf"}
    if gz:
        headers["content-encoding"] = "gzip"

    def open_client() -> httpx.Client:
        client = httpx.Client(base_url=url, timeout=120)
        client.get("/healthz")  # the connection is open before the clock starts
        return client

    def send(client: httpx.Client, body: bytes) -> None:
        resp = client.post("/v1/traces", content=body, headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code} {resp.content[:200]!r}")
        _check(resp.content)

    return send_all(send, open_client, lambda c: c.close(), bodies, senders)


def grpc_traces(port: int, bodies: list[bytes], senders: int, gz: bool) -> float:
    compression = grpc.Compression.Gzip if gz else grpc.Compression.NoCompression

    def open_client() -> tuple[grpc.Channel, Any]:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        return channel, channel.unary_unary(EXPORT)  # raw bytes: serialized beforehand

    def send(client: tuple[grpc.Channel, Any], body: bytes) -> None:
        _check(client[1](body, timeout=120, compression=compression))

    return send_all(send, open_client, lambda c: c[0].close(), bodies, senders)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ids", type=int, default=100_000, help="produced ids (~3 records each)")
    ap.add_argument("--batch", type=int, default=512, help="spans (records) per request")
    ap.add_argument("--senders", type=int, default=4, help="concurrent clients")
    ap.add_argument("--gzip", action="store_true", help="compress every body (gzip)")
    ap.add_argument("--pg", action="store_true", help="PostgreSQL too")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    load = os.getloadavg()[0]
    log(f"building requests of {args.batch} spans")
    requests, spans = make_bodies(args.ids, args.batch, args.seed)
    plain = [r.SerializeToString() for r in requests]
    records = [json.dumps({"records": records_of(r)}).encode() for r in requests]
    # HTTP bodies compressed beforehand, as an exporter sends them; gRPC compresses itself
    traces = [gzip.compress(b) for b in plain] if args.gzip else plain
    size = sum(map(len, traces)) / len(traces)
    log(f"{spans:,} spans in {len(traces)} requests: {size:,.0f} bytes a request "
        f"(JSON records: {sum(map(len, records)) / len(records):,.0f})")  # fmt: skip

    ways = [
        ("/v1/records (JSON)", lambda c: post_all(c.url, records, args.senders)[0]),
        ("OTLP/HTTP protobuf", lambda c: http_traces(c.url, traces, args.senders, args.gzip)),
        ("OTLP/gRPC", lambda c: grpc_traces(c.grpc_port, plain, args.senders, args.gzip)),
    ]
    results: list[tuple[str, str, float, float]] = []  # store, way, rate, collector CPU
    with scratch_dir() as directory:
        stores = [("SQLite", lambda name: _sqlite(directory, name))]
        if args.pg:
            stores.append(("PostgreSQL", lambda name: pg_database()))
        for store, database in stores:
            for k, (way, run) in enumerate(ways):
                with database(f"otlp{k}") as url:
                    with CollectorProcess(url, directory / f"collector{k}.log") as c:
                        cpu = c.cpu_seconds()
                        elapsed = run(c)
                        cpu = c.cpu_seconds() - cpu
                    assert logged(url) == spans, (way, logged(url), spans)
                results.append((store, way, spans / elapsed, cpu / spans))
                log(f"{store}, {way}: {spans / elapsed:,.0f} spans/s, "
                    f"collector CPU {cpu / spans * 1e6:.1f} us a span")  # fmt: skip
    print("\n== otlp_rate ==")
    print(f"load average at start: {load:.2f} (2 cores)")
    print(f"{spans:,} spans (= records) in {len(traces)} requests of {args.batch}, "
          f"{args.senders} senders, gzip {'on' if args.gzip else 'off'}, engine off")  # fmt: skip
    for store in dict.fromkeys(s for s, _, _, _ in results):
        rates = {way: (rate, cpu) for s, way, rate, cpu in results if s == store}
        reference, ref_cpu = rates.pop("/v1/records (JSON)")
        print(f"{store}: reference: the same records through /v1/records: "
              f"{reference:,.0f} records/s (collector CPU {ref_cpu * 1e6:.1f} us a record)")
        for way, (rate, cpu) in rates.items():
            ratio = rate / reference
            goal = "met" if ratio >= GOAL_RATIO else "missed"
            print(f"{store}: {way}: {rate:,.0f} spans/s (collector CPU {cpu * 1e6:.1f} us a "
                  f"span), {ratio:.2f}x (goal >= {GOAL_RATIO}x: {goal})")


class _sqlite:
    """A fresh SQLite file URL, as a context manager like pg_database()."""

    def __init__(self, directory: Any, name: str) -> None:
        self.url = f"sqlite:///{directory / (name + '.db')}"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    main()
