"""OpenTelemetry traces in, delivery records out (README, "OTLP traces in").

`mapping` turns messaging spans into records (pure; `errortype` reads
`error.type` as an error class), `decode` reads OTLP
request bodies, `export` validates and stores what one request maps to, and
`http` and `grpc_server` are the two ways in: POST /v1/traces and
TraceService/Export.
"""

__all__ = ["decode", "errortype", "export", "grpc_server", "http", "mapping", "metrics"]
