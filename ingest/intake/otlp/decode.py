"""OTLP request bodies in, answers out: media types, content encodings,
protobuf and OTLP/JSON, with the official opentelemetry-proto types.

Every refusal is a `problems.problem` (status, field, reason), answered the
OTLP way by the transports (a google.rpc.Status; a gRPC status code).
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterator
from typing import Any, Final

import grpc
import msgspec
from fastapi import HTTPException
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from msgtally.ingest.intake.problems import problem

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
STEP: Final = 256 * 1024  # bytes of decompressed output at a time
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_HEX: Final = re.compile(r"^(?:[0-9a-fA-F]{2})*$")
_ID_KEYS: Final = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")

# The gRPC code of each refusal (also Status.code in an OTLP/HTTP error body).
# Busy and a store that is down are UNAVAILABLE: OTLP exporters retry it.
GRPC_CODES: Final = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}


def media_type(content_type: str | None) -> str:
    """PROTOBUF or JSON from a Content-Type header; 415 for anything else."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise problem(
            415, "content-type", f"{media or 'none'}; send {PROTOBUF} or {JSON} (OTLP/HTTP)"
        )
    return media


def compressed(encoding: str) -> bool:
    """Whether a Content-Encoding says the body is compressed."""
    return encoding.strip().lower() not in ("", "identity")


def inflate(body: bytes, encoding: str, limit: int) -> Iterator[bytes]:
    """A compressed body decompressed, STEP bytes at a time (the caller counts
    them): 413 past `limit` bytes, so that a small bomb cannot take the memory."""
    name = encoding.strip().lower()
    wbits = _WBITS.get(name)
    if wbits is None:
        raise problem(415, "content-encoding", f"{name} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    data, size = body, 0
    while True:
        try:
            chunk = inflater.decompress(data, STEP)
        except zlib.error as exc:
            raise problem(400, "body", f"not valid {name} ({exc})") from None
        size += len(chunk)
        if size > limit:
            raise problem(413, "body", f"larger than the limit of {limit} bytes decompressed")
        if chunk:
            yield chunk
        data = inflater.unconsumed_tail
        if inflater.eof:
            data = inflater.unused_data
            if not data:
                return
            if name != "gzip":
                raise problem(400, "body", f"data after the end of the {name} stream")
            inflater = zlib.decompressobj(wbits)  # gzip allows members one after another
        elif not data and not chunk:
            raise problem(400, "body", f"not valid {name} (truncated)")


def _ids_as_base64(obj: dict[str, Any], path: str) -> None:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON reads bytes as base64."""
    for key in _ID_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            if not _HEX.match(value):
                raise problem(400, f"{path}.{key}", "not a hexadecimal id")
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode()


def _items(obj: object, *keys: str) -> list[Any]:
    if isinstance(obj, dict):
        for key in keys:
            value = obj.get(key)
            if isinstance(value, list):
                return value
    return []


def _from_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise problem(400, "body", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise problem(400, "body", "must be a JSON object (an ExportTraceServiceRequest)")
    for i, rs in enumerate(_items(data, "resourceSpans", "resource_spans")):
        for j, ss in enumerate(_items(rs, "scopeSpans", "scope_spans")):
            for k, span in enumerate(_items(ss, "spans")):
                if not isinstance(span, dict):
                    continue  # ParseDict names it
                path = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                _ids_as_base64(span, path)
                for n, link in enumerate(_items(span, "links")):
                    if isinstance(link, dict):
                        _ids_as_base64(link, f"{path}.links[{n}]")
    request = ExportTraceServiceRequest()
    try:
        # Unknown fields are ignored, as OTLP/JSON receivers must.
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as exc:
        raise problem(400, "body", f"not an ExportTraceServiceRequest ({exc})") from None
    return request


def parse(body: bytes, media: str) -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest from a (decompressed) body; 400 when it is not one."""
    if media == JSON:
        return _from_json(body)
    try:
        return ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise problem(400, "body", f"not an ExportTraceServiceRequest ({exc})") from None


def answer(rejected: int, message: str, media: str) -> bytes:
    """The ExportTraceServiceResponse: partial_success when spans were rejected."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return _encode(response, media)


def reason_of(exc: HTTPException) -> str:
    """A refusal as one line: "field: reason"."""
    detail = exc.detail
    if isinstance(detail, dict):
        field, reason = detail.get("field"), detail.get("reason")
        return f"{field}: {reason}" if field else str(reason)
    return str(detail)


def grpc_code(exc: HTTPException) -> grpc.StatusCode:
    return GRPC_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


def status_body(exc: HTTPException, media: str) -> bytes:
    """An OTLP/HTTP error body: a google.rpc.Status in the request's encoding."""
    code = grpc_code(exc).value[0]
    return _encode(Status(code=code, message=reason_of(exc)), media)


def _encode(message: Status | ExportTraceServiceResponse, media: str) -> bytes:
    if media == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()
