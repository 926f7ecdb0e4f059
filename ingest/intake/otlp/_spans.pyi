# Types of the C extension ingest/intake/otlp/_spans.c.
from collections.abc import Sequence

Attrs = dict[str, object]
SpanView = tuple[bytes, bytes, str, int, int, int, Attrs, bool, Sequence[Attrs]]

def views(
    body: bytes | bytearray | memoryview, wanted: tuple[str, ...], /
) -> list[list[list[SpanView | None]]] | None: ...
