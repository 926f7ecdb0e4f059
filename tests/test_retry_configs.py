"""Retry configurations announced: the intake's contract, the shim's announcements, the
audit through a real collector with consumers of one group on the real RabbitMQ, and
the ticket in a real Prometheus scraping a real collector."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from msgtally.alerts.render import render_rules
from msgtally.alerts.rules import generate
from msgtally.ingest.intake.schema import parse_body
from msgtally.ingest.intake.writer import write_batch
from msgtally.ingest.shim.adapters.rabbitmq import Publisher, Received, tallied
from msgtally.ingest.shim.announce import MAX_CONFIGS, Announcements, RetryConfig, RetryPolicy
from msgtally.ingest.shim.tally import Tally
from msgtally.names import RETRY_CONTRADICTION_ALERT
from msgtally.reconcile.config import ReconcileConfig
from msgtally.server import BackgroundServer
from msgtally.slis.read.report import retry_notes
from msgtally.slis.read.retry_configs import read_audit
from msgtally.slis.spec.load import load_spec
from msgtally.slis.spec.model import Contract, Spec
from msgtally.slis.spec.semantics import Semantics
from msgtally.store.db import open_store
from msgtally.store.tables import RETRY_CONFIG_TTL, log, retry_configs
from tests.conftest import LiveCollector
from tests.promserver import Prometheus
from tests.test_adapter_rabbitmq import connect, names, pump  # noqa: F401 (fixtures)

CONFIG = {"stream": "orders", "group": "billing", "acks": "after", "max_attempts": 5,
          "backoff_base": 1.0, "backoff_cap": 30.0, "jitter": True,
          "dead_letter": "orders.dlq"}  # fmt: skip
RECORD = {"stream": "orders", "kind": "produce", "message_id": "m1", "ts": 1_700_000_000.0}


def body(*configs: dict[str, Any], source: str | None = "svc/a") -> dict[str, Any]:
    out: dict[str, Any] = {"records": [RECORD], "retry_configs": list(configs)}
    if source is not None:
        out["source"] = source
    return out


def audits(url: str, **params: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/retry-configs", params=params)
    resp.raise_for_status()
    result: list[dict[str, Any]] = resp.json()
    return result


# -- the intake's contract ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"acks": "sometimes"}, "retry_configs[0].acks",
         "must be 'after', 'before', 'manual', got 'sometimes'"),
        ({"max_attempts": 0}, "retry_configs[0].max_attempts", "must be at least 1"),
        ({"max_attempts": 2**31}, "retry_configs[0].max_attempts", "must be at most"),
        ({"backoff_base": -1}, "retry_configs[0].backoff_base", "must be at least 0"),
        ({"backoff_cap": 86_401}, "retry_configs[0].backoff_cap", "must be at most 86400"),
        ({"backoff_cap": 0.5}, "retry_configs[0].backoff_cap",
         "must be at least backoff_base (1), got 0.5"),
        ({"jitter": "yes"}, "retry_configs[0].jitter", "must be a boolean, got a string"),
        ({"dead_letter": ""}, "retry_configs[0].dead_letter", "must not be empty"),
        ({"group": "x" * 257}, "retry_configs[0].group", "longer than 256 characters"),
        ({"stream": "a\x00b"}, "retry_configs[0].stream", "contains a NUL character"),
        ({"color": "red"}, "retry_configs[0].color", "unknown field"),
    ],
)  # fmt: skip
def test_a_bad_configuration_is_refused_naming_its_field_and_nothing_is_stored(
    store: Engine, collector: LiveCollector, change: dict[str, Any], field: str, reason: str
) -> None:
    resp = httpx.post(f"{collector.url}/v1/records", json=body({**CONFIG, **change}))
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]["field"] == field
    assert reason in resp.json()["detail"]["reason"]
    with store.connect() as conn:  # the records beside it are not logged either
        assert conn.execute(select(log)).all() == []
        assert conn.execute(select(retry_configs)).all() == []


def test_configurations_need_a_source_are_bounded_and_once_per_pair(
    collector: LiveCollector,
) -> None:
    def refused(payload: dict[str, Any]) -> tuple[int, str, str]:
        resp = httpx.post(f"{collector.url}/v1/records", json=payload)
        detail = resp.json()["detail"]
        return resp.status_code, detail["field"], detail["reason"]

    assert refused(body(CONFIG, source=None)) == (
        422, "source", "field required with 'retry_configs'"
    )
    assert refused(body(CONFIG, {**CONFIG, "jitter": False})) == (
        422, "retry_configs[1]", "a second configuration for 'orders' / 'billing'"
    )
    many = [{**CONFIG, "group": f"g{i}"} for i in range(MAX_CONFIGS + 1)]
    assert refused(body(*many)) == (422, "retry_configs", f"more than {MAX_CONFIGS} items")


def test_what_an_instance_announces_replaces_what_it_said_before(
    collector: LiveCollector,
) -> None:
    url = f"{collector.url}/v1/records"
    # configurations alone are a request too (a shim announcing before any record)
    alone = {"records": [], "source": "svc/a", "retry_configs": [CONFIG]}
    assert httpx.post(url, json=alone).json() == {"accepted": 0}
    httpx.post(url, json=body(CONFIG, source="svc/b")).raise_for_status()
    (first,) = audits(collector.url)
    assert first["instances"] == 2
    assert first["findings"]["drift"] == 0
    changed = {**CONFIG, "acks": "before", "max_attempts": 1, "dead_letter": None}
    httpx.post(url, json=body(changed, source="svc/b")).raise_for_status()
    (then,) = audits(collector.url)
    assert then["instances"] == 2
    assert [c["instances"] for c in then["configs"]] == [1, 1]
    del changed["stream"], changed["group"]
    assert then["configs"][1] == {**changed, "instances": 1}
    assert then["findings"] == {"drift": 2, "no_jitter": 0, "acks_before_processing": 1,
                                "no_retries": 1, "contradicts_contract": 0}  # fmt: skip


def test_instances_silent_for_the_ttl_age_out_and_are_pruned(store: Engine) -> None:
    now = time.time()
    announced = {"records": [], "source": "gone", "retry_configs": [CONFIG]}
    old = parse_body(json.dumps(announced).encode())
    write_batch(store, old, received_at=now - RETRY_CONFIG_TTL - 1)
    with store.connect() as conn:
        assert read_audit(conn, now, None) == []  # aged out on read
        assert len(conn.execute(select(retry_configs)).all()) == 1
    fresh = old._replace(source="alive")
    write_batch(store, fresh, received_at=now)
    with store.connect() as conn:
        (row,) = conn.execute(select(retry_configs.c.source)).all()  # the old one pruned
        assert row.source == "alive"
        (one,) = read_audit(conn, now, None)
        assert one.instances == 1


# -- the shim's announcements -----------------------------------------------------------


def test_announcements_send_changes_at_once_and_everything_again_with_records() -> None:
    a = Announcements(resend_every=60.0)
    one, two = RetryConfig(), RetryConfig(acks="before")
    assert a.set("orders", "billing", one)
    assert not a.set("orders", "billing", one)  # unchanged: nothing to send
    assert a.due(0.0, with_records=False) == {("orders", "billing"): one}
    a.told({("orders", "billing"): one}, 0.0)
    assert not a.changed()
    a.set("orders", "audit", two)
    assert a.due(10.0, with_records=True) == {("orders", "audit"): two}
    a.told({("orders", "audit"): two}, 10.0)
    assert a.due(59.0, with_records=True) == {}  # the full set went out at 0
    assert a.due(61.0, with_records=False) == {}  # only ever with records
    assert a.due(61.0, with_records=True) == {("orders", "billing"): one,
                                              ("orders", "audit"): two}  # fmt: skip


def test_bad_configurations_are_refused_by_the_shim_naming_the_field(
    collector: LiveCollector,
) -> None:
    tally = Tally(collector_url=collector.url, registry=CollectorRegistry(), tracing=False)
    with pytest.raises(ValueError, match="acks has value 'never'"):
        tally.announce("billing", stream="orders", acks="never")
    with pytest.raises(ValueError, match="max_attempts has value 0"):
        tally.announce("billing", stream="orders", max_attempts=0)
    with pytest.raises(ValueError, match=r"backoff_cap 1\.0 is below backoff_base 2"):
        tally.announce("billing", stream="orders", retry=RetryPolicy(2, 1.0))
    with pytest.raises(ValueError, match="group '' is not"):
        tally.announce("", stream="orders")
    tally.close()


def test_a_shim_announces_on_start_on_change_and_again_with_its_records(
    store: Engine, collector: LiveCollector
) -> None:
    tally = Tally(
        "orders", collector.url, registry=CollectorRegistry(), tracing=False, flush_interval=0.05
    )
    tally.shipper.announcements.resend_every = 0.2

    def seen() -> tuple[str, float]:
        with store.connect() as conn:
            (row,) = conn.execute(select(retry_configs.c.acks, retry_configs.c.seen_at)).all()
        return row.acks, row.seen_at

    tally.announce("billing", max_attempts=3, retry=RetryPolicy(0.5, 8.0, jitter=True))
    assert tally.flush()  # no record: the announcement goes on its own
    acks, first = seen()
    (one,) = audits(collector.url)
    assert one["configs"] == [{"acks": "after", "max_attempts": 3, "backoff_base": 0.5,
                               "backoff_cap": 8.0, "jitter": True, "dead_letter": None,
                               "instances": 1}]  # fmt: skip
    time.sleep(0.3)
    assert tally.flush()
    assert seen() == (acks, first)  # nothing changed, no records: not sent again
    tally.produced("m1")
    assert tally.flush()
    acks, again = seen()
    assert again > first  # re-sent with the batch once resend_every passed
    tally.announce("billing", acks="before")
    assert tally.flush()
    assert seen()[0] == "before"
    tally.close()


# -- the proof: one group on a real broker, through a real collector ---------------------


def test_instances_of_one_group_on_rabbitmq_are_audited_exactly(
    tmp_path: Path,
    connect: Callable[[], pika.BlockingConnection],  # noqa: F811
    names: Callable[[str], str],  # noqa: F811
) -> None:
    queue = names("")
    spec = Spec(service="shop", slos=(), contracts=(Contract(queue, Semantics.AT_LEAST_ONCE),))
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue)
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=30.0, jitter=True, dead_letter="dlx")
    with LiveCollector(store, ReconcileConfig(), spec=spec) as live:
        shims = [
            Tally(collector_url=live.url, producer=name, registry=CollectorRegistry(),
                  tracing=False, flush_interval=0.05)
            for name in ("svc-a", "svc-b", "svc-c")
        ]  # fmt: skip
        handled: list[str] = []

        def handle(msg: Received) -> None:
            handled.append(msg.message_id)

        publisher = Publisher(ch, shims[0])
        # svc-c acks before processing; its stream is the routing key, known at its first
        # delivery only: it announces then.
        c_conn = connect()
        c_ch = c_conn.channel()
        c_ch.basic_consume(
            queue, tallied(shims[2], "billing", handle, acks="before", max_attempts=5,
                           retry=policy),
        )  # fmt: skip
        assert shims[2].flush()
        assert audits(live.url) == []  # nothing announced before a delivery
        publisher.publish(queue, b"first")
        pump(c_conn, lambda: len(handled) == 1)
        # svc-a and svc-b are told their stream: they announce when made.
        for shim, jitter in ((shims[0], True), (shims[1], False)):
            other = connect().channel()
            other.basic_consume(
                queue,
                tallied(shim, "billing", handle, stream=queue, max_attempts=5,
                        retry=RetryPolicy(1.0, 30.0, jitter, "dlx")),
            )  # fmt: skip
        for shim in shims:
            assert shim.flush()

        (audit,) = audits(live.url, stream=queue)
        common = {"max_attempts": 5, "backoff_base": 1.0, "backoff_cap": 30.0,
                  "dead_letter": "dlx", "instances": 1}  # fmt: skip
        assert audit == {
            "stream": queue,
            "group": "billing",
            "contract": "at-least-once",
            "instances": 3,
            "configs": [
                {"acks": "after", "jitter": False, **common},  # svc-b
                {"acks": "after", "jitter": True, **common},  # svc-a
                {"acks": "before", "jitter": True, **common},  # svc-c
            ],
            "findings": {"drift": 3, "no_jitter": 1, "acks_before_processing": 1,
                         "no_retries": 0, "contradicts_contract": 1},
        }  # fmt: skip
        metrics = httpx.get(f"{live.url}/metrics").text
        exposed = dict(
            re.findall(
                rf'^msgtally_retry_config_findings{{finding="(\w+)",group="billing",'
                rf'stream="{queue}"}} (\S+)$', metrics, re.M,
            )
        )  # fmt: skip
        assert exposed == {"drift": "3.0", "no_jitter": "1.0", "acks_before_processing": "1.0",
                           "no_retries": "0.0", "contradicts_contract": "1.0"}  # fmt: skip
        for shim in shims:
            shim.close()
    store.dispose()


# -- the ticket in a real Prometheus ------------------------------------------------------

SPEC = """\
version: msgtally/v1
service: e2e
scrape_interval: 1s
slos:
  - {name: orders-delivery, stream: orders, sli: delivery, objective: 99}
  - {name: clicks-delivery, stream: clicks, sli: delivery, objective: 90}
contracts:
  - {stream: orders, semantics: at-least-once}
  - {stream: clicks, semantics: at-most-once}
"""
WAIT = 60.0  # seconds, at most, for the ticket to fire


@pytest.fixture
def shims() -> Iterator[list[Tally]]:
    made: list[Tally] = []
    yield made
    for tally in made:
        tally.close(timeout=1)


@pytest.mark.slow  # a real Prometheus end to end: with the slow tests
def test_the_ticket_fires_in_prometheus_before_any_loss(
    tmp_path: Path, shims: list[Tally]
) -> None:
    spec = load_spec(SPEC)
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(generate(spec), spec.service))
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    with LiveCollector(store, ReconcileConfig(), spec=spec) as live:
        for name, stream, acks in (("a", "orders", "after"), ("b", "orders", "before"),
                                   ("c", "clicks", "before")):  # fmt: skip
            tally = Tally(collector_url=live.url, producer=name, registry=CollectorRegistry(),
                          tracing=False)  # fmt: skip
            shims.append(tally)
            tally.announce("billing", stream=stream, acks=acks, max_attempts=5)
            assert tally.flush()
        target = live.url.removeprefix("http://")
        with Prometheus(tmp_path, target, rules) as prom:
            deadline = time.monotonic() + WAIT
            firing: list[dict[str, Any]] = []
            while not firing:
                prom.check_running()
                assert time.monotonic() < deadline, prom.log()
                firing = [
                    a for a in prom.get("alerts")["data"]["alerts"]
                    if a["labels"]["alertname"] == RETRY_CONTRADICTION_ALERT
                    and a["state"] == "firing"
                ]  # fmt: skip
                time.sleep(0.5)
            # svc b acks before processing on an at-least-once stream; c acks before
            # processing on an at-most-once one, which is what that contract asks.
            (alert,) = firing
            assert {k: alert["labels"][k] for k in ("stream", "group", "severity",
                                                    "semantics")} == {
                "stream": "orders", "group": "billing", "severity": "ticket",
                "semantics": "at-least-once",
            }  # fmt: skip
            assert float(alert["value"]) == 1
            assert "1 consumer instances" in alert["annotations"]["summary"]
    store.dispose()


# -- the report -------------------------------------------------------------------------


def test_the_report_lists_the_findings_within_100_columns(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = open_store(f"sqlite:///{db}")
    now = time.time()
    long_group = "a-consumer-group-with-a-rather-long-name-for-its-team"
    announced = [
        ("svc/a", {**CONFIG}),
        ("svc/b", {**CONFIG, "acks": "before"}),
        ("svc/c", {**CONFIG, "group": long_group}),
    ]
    for source, config in announced:
        batch = {"records": [], "source": source, "retry_configs": [config]}
        write_batch(store, parse_body(json.dumps(batch).encode()), received_at=now)
    store.dispose()
    (tmp_path / "spec.yml").write_text(
        "version: msgtally/v1\nservice: shop\nslos:\n"
        "  - {name: orders, stream: orders, sli: delivery, objective: 99}\n"
        "contracts:\n  - {stream: orders, semantics: at-least-once}\n"
    )
    run = [sys.executable, "-m", "msgtally.cli", "report", "--db", str(db)]
    out = subprocess.run(
        [*run, "--spec", str(tmp_path / "spec.yml")], capture_output=True, text=True,
        check=True, timeout=60,
    ).stdout  # fmt: skip
    notes = out[out.index("retry configurations") :].splitlines()
    assert notes == [
        "retry configurations (instances with each finding; GET /v1/retry-configs):",
        "  orders / billing (2 instances, 2 configurations, contract at-least-once): drift 2,",
        "    acks_before_processing 1, contradicts_contract 1",
    ]
    assert max(len(line) for line in out.splitlines()) <= 100
    # The long group's one instance has no finding: no line. Without the spec, no
    # contract to contradict.
    assert long_group not in out
    reread = open_store(f"sqlite:///{db}")
    with reread.connect() as conn:
        sound = [a for a in read_audit(conn, time.time(), None) if a.group == long_group]
    reread.dispose()
    assert retry_notes(sound) == ["retry configurations: 1 group audited, no finding"]
    plain = subprocess.run(run, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "drift 2, acks_before_processing 1\n" in plain
    assert "contradicts_contract" not in plain


def test_configurations_past_the_series_bound_are_left_out(store: Engine) -> None:
    # One name fits: the record's. The configuration's own pair does not: it is left
    # out, like a sequence mark, and the records are stored.
    with LiveCollector(store, ReconcileConfig(), max_series=1) as live:
        resp = httpx.post(f"{live.url}/v1/records", json=body(CONFIG))
        assert resp.json() == {"accepted": 1}
        assert audits(live.url) == []
    with store.connect() as conn:
        assert len(conn.execute(select(log)).all()) == 1
        assert conn.execute(select(retry_configs)).all() == []


# -- every adapter announces what it knows ---------------------------------------------


def test_every_adapter_announces_its_consumers_configuration(store: Engine) -> None:
    import redis
    from fastapi import Depends, FastAPI

    from msgtally.ingest.shim.adapters import kafka, mqtt, nats, redis_streams
    from msgtally.ingest.shim.adapters.webhooks.receiver import TallyDependency, TallyMiddleware

    with LiveCollector(store, ReconcileConfig()) as live:
        tally = Tally("orders", live.url, registry=CollectorRegistry(), tracing=False)
        jittered = RetryPolicy(backoff_base=0.5, backoff_cap=10.0, jitter=True)
        nats.tallied(tally, "nats", _noop, nak_delay=2.0)
        nats.tallied(tally, "nats-policy", _noop, nak_delay=2.0, retry=jittered)
        mqtt.tallied(tally, "mqtt", _noop, acks="before", dead_letter_topic="orders/dead")
        client = redis.Redis(port=6379)
        redis_streams.Consumer(client, tally, "orders-key", "redis", "c1", _noop, max_attempts=0)
        client.close()
        raw = kafka.Consumer(
            {"bootstrap.servers": "127.0.0.1:1"}, tally, "kafka", ["orders"], _noop,
            acks="before", retry=jittered,
        )  # fmt: skip
        raw.consumer.close()  # never joined: nothing to commit
        app = FastAPI()
        app.add_middleware(TallyMiddleware, tally=tally, group="hooks", max_attempts=8,
                           retry=RetryPolicy(1.0, 60.0, jitter=True))  # fmt: skip
        delivery = TallyDependency(tally, group="hooks-dep", stream="orders")

        @app.post("/hooks/orders")
        async def hook(d: Any = Depends(delivery)) -> None:  # noqa: B008
            return None

        assert tally.flush()
        assert {a["group"] for a in audits(live.url)} == {
            "nats", "nats-policy", "mqtt", "redis", "kafka"
        }  # the webhook receivers announce at their first request
        with BackgroundServer(app) as receiver:  # a real server, real sockets
            httpx.post(f"{receiver.url}/hooks/orders", headers={"idempotency-key": "k1"},
                       timeout=10).raise_for_status()  # fmt: skip
        assert tally.flush()
        got = {a["group"]: a["configs"] for a in audits(live.url, stream="orders")}
        tally.close()

    def config(**given: Any) -> list[dict[str, Any]]:
        base = {"acks": "after", "max_attempts": None, "backoff_base": 0.0, "backoff_cap": 0.0,
                "jitter": False, "dead_letter": None, "instances": 1}  # fmt: skip
        return [{**base, **given}]

    assert got == {
        "nats": config(backoff_base=2.0, backoff_cap=2.0),
        "nats-policy": config(backoff_base=0.5, backoff_cap=10.0, jitter=True),
        "mqtt": config(acks="before", dead_letter="orders/dead"),
        "redis": config(dead_letter="orders-key:dead-letter"),  # max_attempts 0: no limit
        "kafka": config(acks="before", max_attempts=5, backoff_base=0.5, backoff_cap=10.0,
                        jitter=True, dead_letter="orders.dlq"),
        "hooks": config(max_attempts=8, backoff_base=1.0, backoff_cap=60.0, jitter=True),
        "hooks-dep": config(),
    }  # fmt: skip


def _noop(received: Any) -> None:
    return None
