"""Maintenance windows: the spec, Alertmanager's time intervals and routes, the dashboards,
and a real Alertmanager that mutes a page inside a window and sends the others.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from msgtally.alerts.alertmanager import alertmanager_config, render_alertmanager
from msgtally.alerts.maintenance import maintenance_routes, once_intervals, weekly_intervals
from msgtally.dashboards.build import generate as dashboards
from msgtally.dashboards.maintenance import cron, once_expr
from msgtally.server import free_port
from msgtally.slis.spec.load import check_spec, load_spec
from msgtally.slis.spec.model import Maintenance, Once, Weekly
from tests.conftest import service_unavailable
from tests.slo_examples import EXAMPLES
from tests.test_promtool import run, tool

BASE = """\
version: msgtally/v1
service: shipping
slos:
  - {name: d, stream: orders, sli: delivery, objective: 99}
  - {name: p, stream: payments, sli: delivery, objective: 99}
contracts:
  - {stream: orders, semantics: exactly-once}
"""


def spec_with(maintenance: str) -> Any:
    return load_spec(BASE + "maintenance:\n" + maintenance)


def test_the_example_loads() -> None:
    spec = load_spec((EXAMPLES / "shipping.yml").read_text())
    patching, reboot, migration = spec.maintenance
    assert patching == Maintenance(
        "carrier-patching", Weekly(("sunday",), "23:00", "03:00", "Europe/Berlin")
    )
    assert reboot.when == Weekly(
        ("monday", "tuesday", "wednesday", "thursday", "friday"), "12:00", "12:15",
        "America/New_York",
    )  # fmt: skip
    assert reboot.streams == ("shipping-labels",)
    assert migration.when == Once(
        datetime(2027, 3, 13, 20, tzinfo=UTC), datetime(2027, 3, 14, 2, tzinfo=UTC)
    )
    assert migration.mute_contracts and not reboot.mute_contracts


def test_times_of_day_need_no_quotes() -> None:
    """YAML 1.1 reads an unquoted 22:00 as the number 1320: the spec reads the time."""
    (w,) = spec_with("  - {name: n, days: [friday], start: 22:00, end: 23:30, "
                     "time_zone: UTC}\n").maintenance  # fmt: skip
    assert w.when == Weekly(("friday",), "22:00", "23:30", "UTC")


BAD = """\
  - name: bad
    days: [satday, "friday:monday", Sunday]
    start: 25:00
    end: "7"
    time_zone: Europe/Pariss
    streams: [ordres, orders]
  - name: backwards
    start: 2027-06-14T22:00:00+02:00
    end: 2027-06-14T21:00:00+02:00
  - name: sloppy
    start: 2027-06-14T22:00:00
    end: 2027-06-14T23:00:30Z
    time_zone: UTC
    mute_contracts: yes please
  - name: bad
    days: [monday]
    start: "10:00"
    end: "10:00"
  - name: empty
    start: 2027-06-14
    end: tomorrow
    streams: []
    colour: red
"""


def test_every_problem_with_line_and_field() -> None:
    got = {(p.line, p.field): p.message for p in check_spec(BASE + "maintenance:\n" + BAD)}
    week = "monday, tuesday, wednesday, thursday, friday, saturday, sunday"
    rfc = "Must be an RFC 3339 timestamp with its UTC offset, e.g. 2025-06-14T22:00:00+02:00"
    assert got == {
        (10, "maintenance[0].days[0]"): f"'satday' is not a day of the week ({week}; or a "
        "range, e.g. monday:friday)",
        (10, "maintenance[0].days[1]"): "'friday:monday': a range of days goes forward in "
        "the week (monday to sunday)",
        (11, "maintenance[0].start"): "has value '25:00'. Must be a time of day, HH:MM from "
        "00:00 to 23:59",
        (12, "maintenance[0].end"): "has value '7'. Must be a time of day, HH:MM from 00:00 "
        "to 23:59 (or 24:00, the end of the day)",
        (13, "maintenance[0].time_zone"): "unknown time zone 'Europe/Pariss' (an IANA name, "
        "e.g. Europe/Paris, America/New_York, UTC)",
        (14, "maintenance[0].streams[0]"): "stream 'ordres' is not measured by this spec "
        "(streams: orders, payments)",
        (17, "maintenance[1].end"): "2027-06-14T21:00:00+02:00 is before the start "
        "(2027-06-14T22:00:00+02:00): the window would be empty",
        (19, "maintenance[2].start"): "'2027-06-14T22:00:00' has no UTC offset: add Z or one "
        "like +02:00",
        (20, "maintenance[2].end"): "'2027-06-14T23:00:30Z' must fall on a whole minute "
        "(Alertmanager's time intervals count minutes)",
        (21, "maintenance[2].time_zone"): "only for a recurring window (days): a one-off "
        "window's start and end carry their UTC offset",
        (22, "maintenance[2].mute_contracts"): "must be true or false, not the text 'yes please'",
        (23, "maintenance[3].name"): "'bad' names a second window (the first is at line 9); "
        "names must be unique",
        (26, "maintenance[3].end"): "is the start (10:00): the window would be empty",
        (23, "maintenance[3]"): "missing required field 'time_zone' for a recurring window "
        "(days), e.g. Europe/Paris or UTC",
        (28, "maintenance[4].start"): f"has value '2027-06-14'. {rfc} (or days, start and end "
        "times for a recurring window)",
        (29, "maintenance[4].end"): f"has value 'tomorrow'. {rfc} (or days, start and end "
        "times for a recurring window)",
        (30, "maintenance[4].streams"): "must be a non-empty list of streams (omit it for the "
        "whole service)",
        (31, "maintenance[4].colour"): "unknown field (known: days, end, mute_contracts, name, "
        "start, streams, time_zone)",
    }
    assert check_spec(BASE + "maintenance: []\n")[0].field == "maintenance"


def test_weekly_time_intervals_cross_midnight_into_the_next_days() -> None:
    assert weekly_intervals(Weekly(("monday", "friday"), "09:00", "24:00", "UTC")) == [
        {"weekdays": ["monday", "friday"], "times": [{"start_time": "09:00",
         "end_time": "24:00"}], "location": "UTC"},
    ]  # fmt: skip
    assert weekly_intervals(Weekly(("saturday", "sunday"), "22:00", "02:30", "Europe/Paris")) == [
        {"weekdays": ["saturday", "sunday"],
         "times": [{"start_time": "22:00", "end_time": "24:00"}], "location": "Europe/Paris"},
        {"weekdays": ["monday", "sunday"],
         "times": [{"start_time": "00:00", "end_time": "02:30"}], "location": "Europe/Paris"},
    ]  # fmt: skip


def test_one_off_time_intervals_are_utc_days() -> None:
    paris = datetime(2027, 1, 30, 22, 15, tzinfo=UTC) + timedelta(hours=1)  # 23:15 UTC
    window = Once(paris, datetime(2027, 2, 3, 1, 0, tzinfo=UTC))
    assert once_intervals(window) == [
        {"years": ["2027"], "months": ["1"], "days_of_month": ["30"],
         "times": [{"start_time": "23:15", "end_time": "24:00"}]},
        {"years": ["2027"], "months": ["1"], "days_of_month": ["31"]},
        {"years": ["2027"], "months": ["2"], "days_of_month": ["1:2"]},
        {"years": ["2027"], "months": ["2"], "days_of_month": ["3"],
         "times": [{"start_time": "00:00", "end_time": "01:00"}]},
    ]  # fmt: skip
    within = Once(datetime(2027, 5, 1, 10, tzinfo=UTC), datetime(2027, 5, 1, 11, tzinfo=UTC))
    assert once_intervals(within) == [
        {"years": ["2027"], "months": ["5"], "days_of_month": ["1"],
         "times": [{"start_time": "10:00", "end_time": "11:00"}]},
    ]  # fmt: skip


def _routes(maintenance: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    return [
        (tuple(r["matchers"]), tuple(m.removeprefix("msgtally-shipping-")
                                     for m in r.get("mute_time_intervals", ())))
        for r in maintenance_routes(spec_with(maintenance))
    ]  # fmt: skip


S, C = 'service="shipping"', 'alertname="MsgtallyDeliveryContractBreach"'
WEEKLY = "days: [sunday], start: '01:00', end: '02:00', time_zone: UTC"


@pytest.mark.parametrize(
    ("maintenance", "routes"),
    [
        # The whole service: every alert but the contract breaches.
        (f"  - {{name: all, {WEEKLY}}}\n",
         [((S, C), ()), ((S,), ("all",))]),
        # ... and the contract breaches too.
        (f"  - {{name: all, {WEEKLY}, mute_contracts: true}}\n",
         [((S,), ("all",))]),
        # A stream (with a contract), and the service.
        (f"  - {{name: all, {WEEKLY}}}\n  - {{name: o, {WEEKLY}, streams: [orders]}}\n",
         [((S, 'stream="orders"', C), ()), ((S, 'stream="orders"'), ("all", "o")),
          ((S,), ("all",))]),
        # A stream without a contract: its one route.
        (f"  - {{name: p, {WEEKLY}, streams: [payments], mute_contracts: true}}\n",
         [((S, 'stream="payments"'), ("p",))]),
    ],
)  # fmt: skip
def test_routes_mute_the_alerts_a_window_covers(
    maintenance: str, routes: list[tuple[tuple[str, ...], tuple[str, ...]]]
) -> None:
    assert _routes(maintenance) == routes


def test_no_maintenance_no_routes_nor_intervals() -> None:
    config = alertmanager_config(load_spec(BASE))
    assert "routes" not in config["route"] and "time_intervals" not in config


def test_dashboards_shade_the_windows() -> None:
    spec = load_spec((EXAMPLES / "shipping.yml").read_text())
    for board in dashboards(spec).values():
        patching, reboot, migration = board["annotations"]["list"]
        assert patching["datasource"] == {"type": "datasource", "uid": "grafana"}
        assert patching["target"]["timeRegion"] == {
            "mode": "cron", "cronExpr": "0 23 * * 0", "duration": "4h",
            "timezone": "Europe/Berlin",
        }  # fmt: skip
        assert reboot["target"]["timeRegion"]["cronExpr"] == "0 12 * * 1,2,3,4,5"
        assert reboot["target"]["timeRegion"]["duration"] == "15m"
        assert migration["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # 2027-03-13T20:00Z to 2027-03-14T02:00Z
        assert migration["expr"] == "vector(time()) >= 1804968000 < 1804989600"
    assert cron(Weekly(("friday",), "22:15", "01:45", "UTC"))["duration"] == "3h 30m"
    assert once_expr(Once(datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC))) \
        == "vector(time()) >= 1798761600 < 1798848000"  # fmt: skip


def test_amtool_checks_the_example(tmp_path: Path) -> None:
    config = EXAMPLES / "shipping.alertmanager.yml"
    out = run(tool("amtool"), "check-config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert config.read_text() == render_alertmanager(load_spec((EXAMPLES / "shipping.yml")
                                                               .read_text()))  # fmt: skip


# --- a real Alertmanager -------------------------------------------------------------


def alertmanager_binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        path = shutil.which(name)
        if path:
            return path
    service_unavailable("alertmanager not installed (Debian package prometheus-alertmanager)")
    raise AssertionError  # unreachable


class Webhook:
    """A webhook receiver on a free loopback port: the alerts Alertmanager sends it."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, str]] = []
        received = self.alerts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.extend(a["labels"] for a in body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


def _minute(t: datetime) -> str:
    return t.replace(second=0, microsecond=0).isoformat()


@pytest.mark.slow  # a real Prometheus (or Alertmanager) end to end: with the slow tests
def test_a_real_alertmanager_mutes_a_page_inside_a_window_only(
    tmp_path: Path, webhook: Webhook
) -> None:
    """A window now on orders, one tomorrow on payments: a page of orders is muted; a
    page of payments, a contract breach of orders and a page of another service are sent."""
    binary = alertmanager_binary()
    now = datetime.now(UTC)
    spec = spec_with(
        f"  - {{name: now, start: '{_minute(now - timedelta(hours=1))}', "
        f"end: '{_minute(now + timedelta(hours=1))}', streams: [orders]}}\n"
        f"  - {{name: tomorrow, start: '{_minute(now + timedelta(days=1))}', "
        f"end: '{_minute(now + timedelta(days=1, hours=1))}', streams: [payments]}}\n"
    )
    config = yaml.safe_load(render_alertmanager(spec))
    # What a user merges it into: a real receiver, and no waiting in a test.
    config["receivers"][0]["webhook_configs"] = [{"url": webhook.url}]
    config["route"] |= {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
    (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
    assert run(tool("amtool"), "check-config", str(tmp_path / "am.yml")).returncode == 0

    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{api}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()

        def page(service: str, stream: str, alertname: str = "MsgtallyErrorBudgetBurn",
                 **labels: str) -> dict[str, Any]:
            return {"labels": {"alertname": alertname, "severity": "page", "service": service,
                               "stream": stream, **labels},
                    "startsAt": now.isoformat(),
                    "endsAt": (now + timedelta(minutes=10)).isoformat()}  # fmt: skip

        alerts = [
            page("shipping", "orders", slo="d", burn_window="1h"),  # inside: muted
            page("shipping", "payments", slo="p", burn_window="1h"),  # its window is tomorrow
            page("shipping", "orders", "MsgtallyDeliveryContractBreach", breach="duplicate"),
            page("billing", "orders", slo="d", burn_window="1h"),  # another service
        ]
        httpx.post(f"{api}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()
        expected = [a["labels"] for a in alerts[1:]]

        def key(labels: dict[str, str]) -> str:
            return json.dumps(labels, sort_keys=True)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(webhook.alerts) < len(expected):
            time.sleep(0.2)
        # Several more group intervals: the muted page would have come by now.
        time.sleep(4)
        assert sorted(map(key, webhook.alerts)) == sorted(map(key, expected))
        # Muted, not dropped: Alertmanager still has the page (the figures go on too).
        held = httpx.get(f"{api}/api/v2/alerts", timeout=5).json()
        assert key(alerts[0]["labels"]) in {key(a["labels"]) for a in held}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
