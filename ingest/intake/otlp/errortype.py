"""OpenTelemetry's `error.type` as msgtally's error class (msgtally.record.ERROR_CLASSES).

The conventions let `error.type` be a short identifier (`timeout`, a gRPC
status name, an HTTP status code) or the type of the exception (`java.net.
SocketTimeoutException`, `builtins.TimeoutError`, `KafkaException`), set
only when the operation failed. A value is read, in order: as one of the
known identifiers below; as a Python exception the shim's tables know
(msgtally.ingest.shim.classify); by the words in its type's name, whatever
the language; else `other`. docs/adapters.md has these tables, generated
from here (tests/test_adapters_doc.py holds them together).
"""

from __future__ import annotations

from msgtally.ingest.shim.classify import LIBRARIES, http_status_class
from msgtally.record import ERROR_CLASSES

ERROR_TYPE = "error.type"

# Identifiers, compared without case: the vocabulary itself, gRPC status names,
# socket errors (HTTP status codes are read as the webhooks' are: http_status_class).
IDENTIFIERS: dict[str, str] = {
    **{c: c for c in ERROR_CLASSES},
    "deadline_exceeded": "timeout",
    "unauthenticated": "auth",
    "permission_denied": "auth",
    "resource_exhausted": "throttled",
    "data_loss": "serialization",
    # Node's and libc's names of a connection that failed
    "econnrefused": "unavailable", "econnreset": "unavailable", "ehostunreach": "unavailable",
    "enetunreach": "unavailable", "enotfound": "unavailable", "epipe": "unavailable",
}

# Words in an exception type's name (lower case, without `_` and `-`): the first
# found, in this order, gives the class ("ConnectTimeout" is a timeout).
WORDS: tuple[tuple[str, str], ...] = (
    ("timeout", "timeout"), ("timedout", "timeout"), ("deadline", "timeout"),
    ("poison", "poison"),
    ("unauthori", "auth"), ("authenticat", "auth"), ("authoriz", "auth"),
    ("accessdenied", "auth"), ("forbidden", "auth"), ("credential", "auth"), ("sasl", "auth"),
    ("serializ", "serialization"), ("decod", "serialization"), ("encod", "serialization"),
    ("parse", "serialization"), ("json", "serialization"), ("schema", "serialization"),
    ("throttl", "throttled"), ("quota", "throttled"), ("ratelimit", "throttled"),
    ("toomany", "throttled"), ("queuefull", "throttled"),
    ("unavailable", "unavailable"), ("notleader", "unavailable"),
    ("nobroker", "unavailable"), ("noserver", "unavailable"), ("unreachable", "unavailable"),
    ("connect", "unavailable"),
)  # fmt: skip


def error_class_of(value: str | int) -> str:
    """The error class of an `error.type` value."""
    text = str(value).strip()
    known = IDENTIFIERS.get(text.lower())
    if known is not None:
        return known
    if text.isdigit() and len(text) == 3:  # an HTTP status code
        return http_status_class(int(text))
    package, _, rest = text.partition(".")
    name = text.rpartition(".")[2]
    if rest:  # a Python type named with its module
        found = LIBRARIES.get(package, {}).get(name)
        if found is not None and found != "other":
            return found
    compact = name.lower().replace("_", "").replace("-", "")
    for word, error_class in WORDS:
        if word in compact:
            return error_class
    return "other"


def table() -> str:
    """The identifiers and words as the Markdown of docs/adapters.md."""
    rows = ["| `error.type` | error class |", "|---|---|"]
    for error_class in ERROR_CLASSES:
        ids = [f"`{k}`" for k, v in IDENTIFIERS.items() if v == error_class]
        words = [f"*{w}*" for w, v in WORDS if v == error_class]
        rows.append(f"| {', '.join(ids + words)} | `{error_class}` |")
    return "\n".join(rows) + "\n"
