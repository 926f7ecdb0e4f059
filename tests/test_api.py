"""The collector's HTTP API on real sockets: ingest, bad input, read endpoints."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.store.db import open_store
from msgtally.store.tables import log, log_pending
from tests.conftest import LiveCollector
from tests.harness import repeats

T0 = 1_700_000_000.0


def rec(mid: str, kind: str = "produce", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"stream": "orders", "kind": kind, "message_id": mid, "ts": T0}
    if kind == "consume":
        base.update(group="billing", ts=T0 + 1)
    base.update(extra)
    return base


def stored(store: Engine) -> int:
    """Records in the log (a resend is logged again)."""
    with store.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(log.c.n), 0))).scalar_one())


def test_accepts_a_batch_and_counts_repeats_once(store: Engine, collector: LiveCollector) -> None:
    batch = [rec("m1"), rec("m1", "consume"), rec("m2", record_id="r-2")]
    first = httpx.post(f"{collector.url}/v1/records", json=batch)
    assert first.status_code == 200
    assert first.json() == {"accepted": 3}
    # A shim resending after a timeout; r-2 resent with another ts is still r-2.
    again = [*batch[:2], rec("m2", record_id="r-2", ts=T0 + 5), rec("m3")]
    second = httpx.post(f"{collector.url}/v1/records", json={"records": again})
    assert second.json() == {"accepted": 4}
    assert stored(store) == 7
    reconcile(store, ReconcileConfig(), now=T0 + 1000)
    assert repeats(store) == 3
    (sli,) = httpx.get(f"{collector.url}/v1/slis").json()
    assert (sli["produced"], sli["delivered"], sli["lost"], sli["attempts"]) == (3, 1, 2, 1)


def test_consumes_differing_only_in_ts_are_two_deliveries(
    store: Engine, collector: LiveCollector
) -> None:
    body = [rec("m1"), rec("m1", "consume", ts=T0 + 1), rec("m1", "consume", ts=T0 + 2)]
    assert httpx.post(f"{collector.url}/v1/records", json=body).json() == {"accepted": 3}
    reconcile(store, ReconcileConfig(), now=T0 + 1000)
    (sli,) = httpx.get(f"{collector.url}/v1/slis").json()
    assert (sli["delivered"], sli["duplicated"], sli["attempts"]) == (1, 1, 2)


def test_a_200_means_committed(store: Engine, collector: LiveCollector) -> None:
    httpx.post(f"{collector.url}/v1/records", json=[rec("m1"), rec("m2")]).raise_for_status()
    other = open_store(str(store.url.render_as_string(hide_password=False)), create=False)
    try:
        assert stored(other) == 2
    finally:
        other.dispose()


BAD_RECORDS = [
    ({"kind": "produce", "message_id": "m", "ts": T0}, "records[1].stream", "field required"),
    (rec("m", kind="send"), "records[1].kind", "must be 'produce' or 'consume'"),
    (rec("m", ts="yesterday"), "records[1].ts", "must be a number, got a string"),
    (rec("m", ts=-1), "records[1].ts", "must be at least 0"),
    (rec("m", ts=1.7e12), "records[1].ts", "must be at most"),  # milliseconds, not seconds
    (rec("x" * 257), "records[1].message_id", "longer than 256 characters"),
    (rec(""), "records[1].message_id", "must not be empty"),
    ({**rec("m", "consume"), "group": None}, "records[1].group", "must be a string, got null"),
    ({k: v for k, v in rec("m", "consume").items() if k != "group"}, "records[1].group",
     "field required"),
    (rec("m", group="billing"), "records[1].group", "only consume records"),
    (rec("m", attempt=0), "records[1].attempt", "must be at least 1"),
    (rec("m", attempt=2**31), "records[1].attempt", "must be at most 2147483647"),
    (rec("m", attempt=1.5), "records[1].attempt", "must be an integer"),
    (rec("m", attempt=True), "records[1].attempt", "must be an integer"),
    (rec("m", outcome="maybe"), "records[1].outcome", "must be one of"),
    (rec("m", outcome="dead_letter"), "records[1].outcome", "must be one of"),
    (rec("m", "consume", outcome="dead_letter", group=7), "records[1].group", "string"),
    (rec("m", trace_id="xyz"), "records[1].trace_id", "32 hexadecimal"),
    (rec("m", outcome="error", error="network"), "records[1].error",
     "must be one of auth, serialization, timeout, throttled, unavailable, poison, other, "
     "got 'network'"),
    (rec("m", "consume", error="auth"), "records[1].error", "on an ok record"),
    (rec("m", outcome="ok", error="timeout"), "records[1].error", "on an ok record"),
    (rec("m", colour="red"), "records[1].colour", "unknown field"),
    ("not an object", "records[1]", "must be an object"),
    (rec("m\x00"), "records[1].message_id", "NUL"),
]


@pytest.mark.parametrize(("bad", "field", "reason"), BAD_RECORDS)
def test_a_bad_record_rejects_the_whole_batch(
    store: Engine, collector: LiveCollector, bad: Any, field: str, reason: str
) -> None:
    # json.dumps escapes a lone surrogate as \ud800, as any JSON encoder may.
    body = json.dumps([rec("ok-1"), bad, rec("ok-2")]).encode()
    resp = httpx.post(
        f"{collector.url}/v1/records", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert detail["field"] == field
    assert reason in detail["reason"]
    assert stored(store) == 0
    # Still serving.
    assert httpx.post(f"{collector.url}/v1/records", json=[rec("m9")]).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"", 400, "empty"),
        (b"   ", 400, "empty"),
        (b"[{", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[]", 422, "no records"),
        (b"{}", 422, '"field": "records"'),
        (b'{"records": 5}', 422, "must be an array"),
        (b"42", 422, "object | array"),
        (b'[{"stream":"s","kind":"produce","message_id":"m","ts":NaN}]', 400, "not valid JSON"),
        (b'[{"stream":"s","kind":"produce","message_id":"m","ts":Infinity}]', 400, "not valid"),
        (b'[{"stream":"s","kind":"produce","message_id":"m","ts":1e400}]', 422, "out of range"),
        # a lone surrogate
        (b'[{"stream":"\\ud800","kind":"produce","message_id":"m","ts":1}]', 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 422, "must be an object"),
        (b'[{"stream":"s","kind":"produce","message_id":"m","ts":1,"seq":' + b"9" * 5000 + b"}]",
         422, "out of range"),
    ],
)
def test_malformed_bodies(
    store: Engine, collector: LiveCollector, body: bytes, status: int, text: str
) -> None:
    resp = httpx.post(
        f"{collector.url}/v1/records", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == status
    assert text in json.dumps(resp.json()["detail"])
    assert stored(store) == 0


def test_body_over_the_limit_is_413(store: Engine) -> None:
    with LiveCollector(store, ReconcileConfig(), max_body=4096) as live:
        big = [rec(f"m{i}") for i in range(200)]
        resp = httpx.post(f"{live.url}/v1/records", json=big)
        assert resp.status_code == 413
        assert "4096" in resp.json()["detail"]["reason"]

        # Chunked upload, no content-length: refused while streaming.
        def chunks() -> Any:
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]

        resp = httpx.post(f"{live.url}/v1/records", content=chunks())
        assert resp.status_code == 413
        assert stored(store) == 0
        assert httpx.post(f"{live.url}/v1/records", json=big[:3]).status_code == 200


def test_health_and_readiness(collector: LiveCollector) -> None:
    assert httpx.get(f"{collector.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{collector.url}/readyz").json() == {"status": "ready", "engine": "off"}


def test_readyz_is_503_when_the_store_is_gone(tmp_path: Any) -> None:
    db = tmp_path / "gone.db"
    store = open_store(str(db))
    with LiveCollector(store, ReconcileConfig()) as live:
        db.unlink()
        (tmp_path / "gone.db").mkdir()  # the path now cannot be opened as a database
        store.dispose()  # and the open connections are gone with it
        assert httpx.get(f"{live.url}/readyz").status_code == 503
        resp = httpx.post(f"{live.url}/v1/records", json=[rec("m1")])
        assert resp.status_code == 503
    store.dispose()


def test_slis_and_discrepancies_endpoints(store: Engine, collector: LiveCollector) -> None:
    batch = [rec(f"m{i}") for i in range(5)]
    batch += [rec(f"m{i}", "consume") for i in range(3)]  # m3, m4 lost
    batch += [rec("m0", "consume", ts=T0 + 9)]  # a duplicate
    batch += [rec("ghost", "consume")]  # unexpected
    httpx.post(f"{collector.url}/v1/records", json=batch).raise_for_status()
    reconcile(store, ReconcileConfig(), now=T0 + 1000)

    (sli,) = httpx.get(f"{collector.url}/v1/slis").json()
    assert (sli["stream"], sli["group"]) == ("orders", "billing")
    assert (sli["produced"], sli["delivered"], sli["lost"]) == (5, 3, 2)
    assert (sli["duplicated"], sli["unexpected"], sli["attempts"]) == (1, 1, 4)
    assert sli["delivery_success_ratio"] == pytest.approx(0.6)
    assert sli["loss_ratio"] == pytest.approx(0.4)
    assert sli["duplicate_ratio"] == pytest.approx(1 / 4)
    assert sli["latency_p50"] == pytest.approx(1.0, rel=0.01)  # the sketch: 1 % relative
    assert httpx.get(f"{collector.url}/v1/slis", params={"group": "nobody"}).json() == []

    def ids(kind: str, **params: Any) -> list[str]:
        resp = httpx.get(f"{collector.url}/v1/discrepancies", params={"kind": kind, **params})
        assert resp.status_code == 200
        return [d["message_id"] for d in resp.json()["ids"]]

    assert ids("lost") == ["m3", "m4"]
    assert ids("duplicated") == ["m0"]
    assert ids("unexpected") == ["ghost"]
    assert ids("lost", stream="payments") == []
    # Paging with the cursor returns each id once.
    page = httpx.get(f"{collector.url}/v1/discrepancies", params={"kind": "lost", "limit": 1})
    assert [d["message_id"] for d in page.json()["ids"]] == ["m3"]
    rest = httpx.get(
        f"{collector.url}/v1/discrepancies",
        params={"kind": "lost", "limit": 1, "after": page.json()["next"]},
    )
    assert [d["message_id"] for d in rest.json()["ids"]] == ["m4"]

    assert httpx.get(f"{collector.url}/v1/discrepancies", params={"kind": "x"}).status_code == 422
    bad_cursor = {"kind": "lost", "after": "nope"}
    assert httpx.get(f"{collector.url}/v1/discrepancies", params=bad_cursor).status_code == 422
    assert httpx.get(f"{collector.url}/v1/discrepancies").status_code == 422


def test_error_classes_are_counted_once_per_record_and_served(
    store: Engine, collector: LiveCollector
) -> None:
    """Failed records by class, per stream, kind and group: on /v1/slis and /metrics,
    a resent request counted once, records without a class in no class."""
    batch = [
        rec("m1", outcome="error", error="timeout", record_id="p1"),
        rec("m1", attempt=2),  # the retry went through
        rec("m2", outcome="error"),  # not classified
        rec("m3"),
        rec("m1", "consume", outcome="error", error="serialization", record_id="c1"),
        rec("m1", "consume", attempt=2, ts=T0 + 2, outcome="error", error="serialization",
            record_id="c2"),
        rec("m1", "consume", attempt=3, ts=T0 + 3, outcome="dead_letter", error="poison"),
        rec("m3", "consume", outcome="error", error="auth", record_id="c3"),
        rec("m3", "consume", attempt=2, ts=T0 + 4),
        rec("m3", "consume", group="audit", outcome="error", error="auth", record_id="c4"),
        rec("m3", "consume", group="audit", attempt=2, ts=T0 + 4),
    ]  # fmt: skip
    for _ in range(2):  # the second request is a resend of the first: nothing counts twice
        httpx.post(f"{collector.url}/v1/records", json=batch).raise_for_status()
    reconcile(store, ReconcileConfig(), now=T0 + 1000)

    slis = {s["group"]: s for s in httpx.get(f"{collector.url}/v1/slis").json()}
    zero = dict.fromkeys(
        ("auth", "serialization", "timeout", "throttled", "unavailable", "poison", "other"), 0
    )
    produce = {**zero, "timeout": 1}
    assert slis["billing"]["errors"] == {
        "produce": produce, "consume": {**zero, "serialization": 2, "poison": 1, "auth": 1},
    }  # fmt: skip
    assert slis["audit"]["errors"] == {"produce": produce, "consume": {**zero, "auth": 1}}
    assert slis["billing"]["consume_errors"] == 3  # outcome error, classified or not

    text = httpx.get(f"{collector.url}/metrics").text
    series = {
        (x.labels["stream"], x.labels["kind"], x.labels["group"], x.labels["error"]): x.value
        for family in text_string_to_metric_families(text)
        for x in family.samples
        if x.name == "msgtally_delivery_errors_total"
    }
    assert series == {
        ("orders", "produce", "", "timeout"): 1,
        ("orders", "consume", "billing", "serialization"): 2,
        ("orders", "consume", "billing", "poison"): 1,
        ("orders", "consume", "billing", "auth"): 1,
        ("orders", "consume", "audit", "auth"): 1,
    }


def test_the_engine_applies_what_is_pending_and_keeps_the_log(
    store: Engine, collector: LiveCollector
) -> None:
    httpx.post(f"{collector.url}/v1/records", json=[rec("m1"), rec("m1", "consume")])
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(log_pending)).scalar_one() == 1
    reconcile(store, ReconcileConfig(), now=T0 + 1000)
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(log_pending)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(log)).scalar_one() == 1


def test_every_error_answer_has_one_shape(collector: LiveCollector) -> None:
    url = collector.url
    small = {"content-type": "application/json"}
    answers = {
        "empty body": httpx.post(f"{url}/v1/records", content=b"", headers=small),
        "bad JSON": httpx.post(f"{url}/v1/records", content=b"[{", headers=small),
        "bad record": httpx.post(f"{url}/v1/records", json=[rec("m", ts=-1)]),
        "unknown route": httpx.get(f"{url}/v1/nothing"),
        "wrong method": httpx.delete(f"{url}/v1/records"),
        "bad query type": httpx.get(f"{url}/v1/discrepancies?kind=lost&limit=many"),
        "missing query": httpx.get(f"{url}/v1/discrepancies"),
        "unknown kind": httpx.get(f"{url}/v1/discrepancies?kind=x"),
        "bad cursor": httpx.get(f"{url}/v1/discrepancies?kind=lost&after=%1F"),
    }
    fields = {}
    for name, resp in answers.items():
        assert 400 <= resp.status_code < 500, name
        assert set(resp.json()) == {"detail"}, name
        detail = resp.json()["detail"]
        assert set(detail) == {"field", "reason"}, name
        assert isinstance(detail["reason"], str) and detail["reason"], name
        fields[name] = detail["field"]
    assert fields == {
        "empty body": "body",
        "bad JSON": "body",
        "bad record": "records[0].ts",
        "unknown route": None,
        "wrong method": None,
        "bad query type": "limit",
        "missing query": "kind",
        "unknown kind": "kind",
        "bad cursor": "after",
    }


def test_the_page_cursor_is_opaque_and_url_safe(store: Engine, collector: LiveCollector) -> None:
    # Ids with characters that break naive cursors: separators, slashes, unicode.
    odd = ["a\x1fb", "c/d?e=f&g", "h i+j", "ünï"]
    batch = [rec(m) for m in odd] + [rec("seen", "consume")]  # the group is expected
    httpx.post(f"{collector.url}/v1/records", json=batch).raise_for_status()
    reconcile(store, ReconcileConfig(), now=T0 + 1000)
    seen, after = [], None
    while True:
        params: dict[str, Any] = {"kind": "lost", "limit": 1}
        if after is not None:
            params["after"] = after
        page = httpx.get(f"{collector.url}/v1/discrepancies", params=params).json()
        seen += [d["message_id"] for d in page["ids"]]
        after = page["next"]
        if after is None:
            break
        assert set(after) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        # Pasted into a URL by hand (no encoding), it still works.
        raw = httpx.get(f"{collector.url}/v1/discrepancies?kind=lost&limit=1&after={after}")
        assert raw.status_code == 200
    assert sorted(seen) == sorted(odd)
