"""Shipping records from a service to the collector, without ever hurting it.

The caller's side is one lock and one deque append. A daemon thread sends
batches (by size and by time), retries with exponential backoff and jitter,
and keeps the buffer bounded: when it is full the oldest record is dropped and
counted. Drop totals travel with the next batch that gets through, so the
collector can tell measurement loss from message loss; so do the high-water
marks of the shim's sequences (the last seq given per stream, kind and group),
so that the collector knows of records that never come, even from a shim that
dies with them; so do the consumers' retry configurations (msgtally.ingest.shim.
announce: when new or changed, on their own if need be, and all again now and
then with records). Every request says, with its `sequences`, that its records
are numbered per sequence. Resends carry the same record ids, so the
collector stores them once.

A collector that refuses the shim's credential (401, 403) refuses the
service's configuration, not its records: they are held and sent again with
a longer backoff (up to 30 s), the refusal logged at ERROR once a minute with
the collector's reason, until a token it accepts is in place (a rotation on
the collector's side); the buffer's bound still applies.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, NamedTuple

import httpx

from msgtally.ingest.shim.announce import Announcements, RetryConfig
from msgtally.ingest.shim.wire import FIELDS, record_to_json

log = logging.getLogger(__name__)

# A record on its way: the tuple of wire.FIELDS, in that order.
Row = tuple[Any, ...]
DropKey = tuple[str, str, str]  # stream, kind, group: also a sequence of the shim's
_STREAM, _KIND, _GROUP = (FIELDS.index(name) for name in ("stream", "kind", "group"))


class _Report(NamedTuple):
    """What the collector is told beside the records: drop totals, marks."""

    drops: Counter[DropKey]
    marks: dict[DropKey, int]
    # Retry configurations sent with the request (msgtally.ingest.shim.announce).
    configs: dict[tuple[str, str], RetryConfig] = {}  # noqa: RUF012 (never mutated)

# Worth sending again: the collector is busy or restarting, or a proxy in front
# of it could not reach it. Any other answer refuses the batch for good: it is
# dropped and counted, never retried (one bad record must not stall a shim).
_RETRY_STATUS = frozenset({408, 425, 429, 502, 503, 504})
# The shim's credential refused: its records are held and sent again, more slowly.
_AUTH_STATUS = frozenset({401, 403})
AUTH_LOG_EVERY = 60.0  # seconds between two log lines about a refused credential


class Shipper:
    """A bounded buffer of records and the thread that sends them."""

    def __init__(
        self,
        collector_url: str,
        *,
        source: str,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        timeout: float = 5.0,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        auth_backoff_max: float = 30.0,
        on_drop: Callable[[DropKey, int], None] | None = None,
        on_shipped: Callable[[int], None] | None = None,
        marks: Callable[[], dict[DropKey, int]] | None = None,
        token: str | None = None,
    ) -> None:
        if batch_size < 1 or max_buffer < batch_size:
            raise ValueError(
                f"batch_size {batch_size} and max_buffer {max_buffer}: need "
                "1 <= batch_size <= max_buffer"
            )
        self.url = collector_url.rstrip("/") + "/v1/records"
        self.source = source
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.auth_backoff_max = auth_backoff_max
        self._on_drop = on_drop
        self._on_shipped = on_shipped
        # The last seq given per sequence of the producer named `source`.
        self._marks = marks
        self._headers = {"content-type": "application/json"}
        if token is not None:
            self._headers["authorization"] = f"Bearer {token}"
        # The consumers' retry configurations, kept through a fork (the child announces them).
        self.announcements = Announcements()
        self._init_state()
        _register(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._buffer: deque[Row] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._changed = threading.Condition()  # idle, or a credential refused: flush() looks
        self.auth_refusals = 0  # requests refused for the credential (401, 403)
        self._held = False  # the last answer refused the credential
        self._auth_logged = -AUTH_LOG_EVERY
        self._auth_unlogged = 0  # refusals since the last log line
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped: Counter[DropKey] = Counter()
        self._reported = _Report(Counter(), {})
        self._refused: set[str] = set()  # parts of the report the collector refuses
        self.shipped = 0

    # -- the caller's side ------------------------------------------------

    def put(self, row: Row) -> None:
        """Queue one record; never blocks on I/O, never raises."""
        with self._lock:
            if self._closed:
                self._drop_locked(row)
                return
            if len(self._buffer) >= self.max_buffer:
                self._drop_locked(self._buffer.popleft())
            self._buffer.append(row)
            if self._idle.is_set():
                self._idle.clear()
            # Wake the thread once, when a batch fills: not on every call, which
            # would cost every caller and cut the thread's backoff short.
            full = len(self._buffer) == self.batch_size
            if self._thread is None:
                self._start_locked()
        if full:
            self._wake.set()

    def count_drop(self, key: DropKey) -> None:
        """Count a record that was dropped before it was queued (a bad call):
        its total reaches the collector like the buffer's drops."""
        with self._lock:
            self._count_locked(key)
            self._idle.clear()  # flush() waits until the collector knows
            if self._thread is None and not self._closed:
                self._start_locked()
        self._wake.set()

    def announce(self, stream: str, group: str, config: RetryConfig) -> None:
        """A consumer's retry configuration: sent at once when new or changed."""
        if not self.announcements.set(stream, group, config):
            return
        with self._lock:
            self._idle.clear()  # flush() waits until the collector knows
            if self._thread is None and not self._closed:
                self._start_locked()
        self._wake.set()

    def _drop_locked(self, row: Row) -> None:
        self._count_locked((row[_STREAM], row[_KIND], row[_GROUP]))

    def _count_locked(self, key: DropKey) -> None:
        self.dropped[key] += 1
        if self._on_drop is not None:
            self._on_drop(key, 1)

    def _start_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name="msgtally-shipper", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is sent (or dropped); True if so.

        It sends at once (a backoff is cut short); False as soon as the
        collector refuses the shim's credential (the records are held)."""
        refusals = self.auth_refusals
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._changed:
            while not self._idle.is_set() and self.auth_refusals == refusals:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return self._idle.is_set()

    def _set_idle(self) -> None:
        self._idle.set()
        with self._changed:
            self._changed.notify_all()

    def close(self, timeout: float = 5.0) -> bool:
        """Flush what is queued (up to `timeout`), then stop; later puts are dropped."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
        if not flushed:
            with self._lock:
                while self._buffer:
                    self._drop_locked(self._buffer.popleft())
        return flushed

    # -- the thread -------------------------------------------------------

    def _take(self) -> list[Row]:
        with self._lock:
            n = min(self.batch_size, len(self._buffer))
            return [self._buffer.popleft() for _ in range(n)]

    def _run(self) -> None:
        """The shipping loop; it logs and survives anything but the end."""
        client = httpx.Client(timeout=self.timeout)
        try:
            while not self._ship(client):
                log.exception("msgtally shipper: unexpected error; shipping goes on")
                self._wake.wait(self.backoff_max)
                self._wake.clear()
        finally:
            client.close()
            self._set_idle()

    def _ship(self, client: httpx.Client) -> bool:
        """Ships until closed (True); False after an unexpected error."""
        pending: list[Row] = []
        failures = 0
        try:
            while True:
                if not pending:
                    pending = self._take()
                # Nothing to send but news of drops: report them on their own (held
                # like records when the credential is refused).
                if (
                    not pending
                    and self._unreported()
                    and self._send(client, []) is None
                    and self._held
                    and not self._closed
                ):
                    failures += 1
                    self._backoff(failures)
                    continue
                if not pending:
                    self._set_idle()
                    if self._closed:
                        return True
                    self._wake.wait(self.flush_interval)
                    self._wake.clear()
                    continue
                left = self._send(client, pending)
                if left is not None:
                    pending, failures = left, 0
                    continue
                if self._closed:  # shutting down and the collector is away: count, stop
                    with self._lock:
                        for row in [*pending, *self._buffer]:
                            self._drop_locked(row)
                        self._buffer.clear()
                    self._set_idle()
                    return True
                failures += 1
                self._backoff(failures)
        except Exception:
            # Whatever broke may be in the batch itself: drop it, counted (the
            # collector learns of it), rather than fail on it for ever.
            with self._lock:
                for row in pending:
                    self._drop_locked(row)
            return False

    def _backoff(self, failures: int) -> None:
        """Wait before sending again (a flush, or a batch filling, cuts it short).

        Full jitter spreads a fleet of shims after a collector outage; the cap
        (1 s) is far below the settle allowance, so a shim is back within a
        second of the collector, before any verdict is given. A refused
        credential waits longer (up to 30 s): only a change on the collector's
        side (a token file reloaded) or the service's makes the next try
        different."""
        cap = self.auth_backoff_max if self._held else self.backoff_max
        delay = random.uniform(0, min(cap, self.backoff_base * 2 ** min(failures, 32)))
        self._wake.wait(delay)
        self._wake.clear()

    def _report_locked(self) -> _Report:
        return _Report(
            Counter() if "dropped" in self._refused else Counter(self.dropped),
            {} if self._marks is None or "sequences" in self._refused else self._marks(),
        )

    def _unreported(self) -> bool:
        with self._lock:
            if self._reported != self._report_locked():
                return True
        return self._announcing() and self.announcements.changed()

    def _announcing(self) -> bool:
        # Configurations need the source that names their instance.
        return not {"retry_configs", "source"} & self._refused

    def _body(self, rows: list[Row]) -> tuple[bytes, _Report]:
        records = [record_to_json(row) for row in rows]
        configs = self.announcements.due(time.monotonic(), bool(rows)) if self._announcing() else {}
        with self._lock:
            report = self._report_locked()._replace(configs=configs)
            told = self._reported.marks
        body: dict[str, Any] = {
            "records": records,
            # Present, even empty: these records are numbered per sequence. The
            # marks the collector has not acknowledged yet.
            "sequences": [
                {"producer": self.source, "stream": s, "kind": k, "group": g, "last": n}
                for (s, k, g), n in report.marks.items()
                if told.get((s, k, g)) != n
            ],
        }
        if "source" not in self._refused:
            body["source"] = self.source
        if report.drops:
            body["dropped"] = [
                {"stream": s, "kind": k, "group": g, "total": n}
                for (s, k, g), n in report.drops.items()
            ]
        if configs:
            body["retry_configs"] = self.announcements.body(configs)
        return json.dumps(body).encode(), report

    def _send(self, client: httpx.Client, rows: list[Row]) -> list[Row] | None:
        """Send a batch: None to retry it later, else what is left to send now."""
        body, report = self._body(rows)
        try:
            resp = client.post(self.url, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            log.debug("collector unreachable: %s", exc)
            return None
        if resp.status_code in _AUTH_STATUS:
            self._refused_credential(resp, len(rows))
            return None
        if self._held and resp.status_code not in _RETRY_STATUS:  # past the collector's check
            self._held = False
            log.warning(
                "collector accepts the shim's credential again (%d requests refused); "
                "sending the records held", self.auth_refusals,
            )  # fmt: skip
        if resp.status_code == 200:
            with self._lock:
                self._reported = report._replace(configs={})
            self.announcements.told(report.configs, time.monotonic())
            self.shipped += len(rows)
            if self._on_shipped is not None:
                self._on_shipped(len(rows))
            return []
        if resp.status_code in _RETRY_STATUS:
            return None
        part = _field(resp).split("[", 1)[0]
        if part in ("dropped", "sequences", "source", "retry_configs"):
            # The report, not a record, was refused: give that part up (it would
            # be refused with every batch) and send the records again.
            log.warning("collector refused the shim's report: %s", resp.text[:500])
            with self._lock:
                # Drop totals need the source that names them.
                self._refused |= {part, "dropped"} if part == "source" else {part}
                self._reported = self._report_locked()
            return rows
        # Refused for good. When the collector names one bad record, drop only
        # that one and send the rest again; else the batch cannot be sent.
        bad = _bad_index(resp, len(rows))
        log.warning(
            "collector refused %s: %s %s",
            "a record" if bad is not None else f"{len(rows)} records",
            resp.status_code,
            resp.text[:500],
        )
        dropped = [rows[bad]] if bad is not None else rows
        with self._lock:
            for row in dropped:
                self._drop_locked(row)
        return [*rows[:bad], *rows[bad + 1 :]] if bad is not None else []

    def _refused_credential(self, resp: httpx.Response, n: int) -> None:
        """A 401 or 403: hold the records, say so at ERROR once a minute."""
        self._held = True
        self._auth_unlogged += 1
        with self._changed:
            self.auth_refusals += 1
            self._changed.notify_all()
        now = time.monotonic()
        if now - self._auth_logged < AUTH_LOG_EVERY:
            return
        with self._lock:
            held = n + len(self._buffer)
        log.error(
            "collector at %s refused the shim's credential (%d: %s), %d time(s) since the "
            "last report; holding %d records and retrying every %g s at most (check the "
            "token: Tally(token=...) and the collector's --token-file)",
            self.url, resp.status_code, _reason(resp), self._auth_unlogged, held,
            self.auth_backoff_max,
        )  # fmt: skip
        self._auth_logged, self._auth_unlogged = now, 0

    def _after_fork(self) -> None:
        # The parent's records and thread stay with the parent; the child announces anew.
        self._init_state()
        self.announcements.forget()


def _field(resp: httpx.Response) -> str:
    """The field an error answer names ("" if none)."""
    try:
        field = resp.json()["detail"]["field"]
    except (ValueError, KeyError, TypeError):
        return ""
    return field if isinstance(field, str) else ""


def _reason(resp: httpx.Response) -> str:
    """The reason an error answer gives (`detail.reason`), else the start of its body."""
    try:
        reason = resp.json()["detail"]["reason"]
    except (ValueError, KeyError, TypeError):
        reason = None
    if isinstance(reason, str):
        return reason
    return resp.text[:200] or resp.reason_phrase


def _bad_index(resp: httpx.Response, n: int) -> int | None:
    """The index of the record a 422 names (`records[i].field`), if any."""
    match = _RECORD_FIELD.match(_field(resp))
    if match is None or int(match.group(1)) >= n:
        return None
    return int(match.group(1))


_RECORD_FIELD = re.compile(r"records\[(\d+)\]")
_shippers: weakref.WeakSet[Shipper] = weakref.WeakSet()


def _register(shipper: Shipper) -> None:
    _shippers.add(shipper)


def _close_all() -> None:
    for shipper in list(_shippers):
        shipper.close(timeout=5.0)


def _after_fork_in_child() -> None:
    for shipper in list(_shippers):
        shipper._after_fork()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
