"""Dashboard generation: queries, structure of every dashboard, golden files under examples/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from msgtally.alerts.rules import generate as generate_rules
from msgtally.alerts.windows import spec_windows
from msgtally.cli import main
from msgtally.dashboards import queries as q
from msgtally.dashboards import sdk
from msgtally.dashboards.build import BOARDS, generate, regex_escape, uid
from msgtally.dashboards.panels import GRID_WIDTH, Kind, Panel, Target, check_rows
from msgtally.dashboards.render import render_dashboard
from msgtally.names import SLIKind
from msgtally.reconcile.config import ReconcileConfig
from msgtally.reconcile.engine import reconcile
from msgtally.slis.spec.load import load_spec, read_spec_file
from tests.conftest import LiveCollector
from tests.slo_examples import EXAMPLES, spec_files, stem

NAMES = ("executive", "oncall", "debug")
SLO_SELECTOR = 'service="checkout",stream=~"$stream",group=~"$group|\\\\*"'
# Every unit a panel may use: Grafana's unit ids, or a custom suffix.
UNITS = {"percentunit", "short", "none", "s", "cps", "reqps", "suffix:x"}


def checkout() -> dict[str, dict[str, Any]]:
    return generate(read_spec_file(EXAMPLES / "checkout.yml"))


def all_boards() -> list[tuple[str, str, dict[str, Any]]]:
    """(spec, dashboard name, JSON) for every example spec."""
    return [
        (stem(path), name, board)
        for path in spec_files()
        for name, board in generate(read_spec_file(path)).items()
    ]


BOARD_IDS = [f"{s}/{n}" for s, n, _ in all_boards()]

# --- queries ---------------------------------------------------------------------


def test_ratio_by_stream_counts_each_pair_once() -> None:
    assert q.sli_ratio(SLIKind.DELIVERY, "5m", q.STREAM) == (
        'sum by (stream) (max by (stream, group) (increase(msgtally_messages_lost_total{stream=~"$stream",group=~"$group"}[5m])))\n'  # noqa: E501
        "/\n"
        '(sum by (stream) (max by (stream, group) (increase(msgtally_messages_produced_total{stream=~"$stream",group=~"$group"}[5m]))) > 0)'  # noqa: E501
    )


def test_ratio_by_pair_has_no_extra_sum() -> None:
    expr = q.sli_ratio(SLIKind.RETRIES, "$__rate_interval")
    assert expr.startswith("max by (stream, group) (increase(msgtally_messages_retried_total{")
    assert "sum by" not in expr


def test_duplicate_ratio_uses_the_rules_denominator() -> None:
    expr = q.sli_ratio(SLIKind.DUPLICATES, "1h", q.STREAM)
    num, den = expr.split("\n/\n")
    assert "msgtally_messages_duplicated_total" in num
    for name in ("delivered", "late", "recovered", "duplicated"):
        assert f"msgtally_messages_{name}_total" in den
    assert den.endswith(" > 0)")


def test_slo_panels_read_the_recording_rules_and_match_every_group() -> None:
    spec = read_spec_file(EXAMPLES / "checkout.yml")
    assert q.budget_remaining(spec) == (
        f"max by (slo, stream, group) (msgtally:slo_error_budget_remaining:ratio{{{SLO_SELECTOR}}})"
    )
    assert q.burn_rate(spec, "1h") == (
        f"max by (slo, stream, group) (msgtally:sli_error:ratio_rate1h{{{SLO_SELECTOR}}})\n"
        "/ on (slo, stream, group)\n"
        f"max by (slo, stream, group) (msgtally:slo_error_budget:ratio{{{SLO_SELECTOR}}})"
    )
    assert q.firing_alerts(spec) == (
        'ALERTS{alertstate="firing",alertname=~"MsgtallyErrorBudgetBurn|MsgtallySLIAbsent",'
        f"{SLO_SELECTOR}}}"
    )


def test_latency_and_collector_queries() -> None:
    assert q.latency_quantile(0.99) == (
        "histogram_quantile(0.99, max by (stream, group, le) (rate("
        'msgtally_delivery_latency_seconds_bucket{stream=~"$stream",group=~"$group"}'
        "[$__rate_interval])))"
    )
    assert q.top_lost() == (
        "topk(10, max by (stream, group) (increase("
        'msgtally_messages_lost_total{stream=~"$stream",group=~"$group"}[$__range])))'
    )
    # Produce drops and missing records carry no group: they show whatever groups are selected.
    assert 'group=~"$group|"' in q.dropped()
    assert q.missing() == (
        "max by (stream, group, kind) (rate("
        'msgtally_records_missing_total{stream=~"$stream",group=~"$group|"}[$__rate_interval]))'
    )
    assert q.reconcile_lag() == "time() - max(msgtally_reconcile_last_pass_timestamp_seconds)"


def test_error_class_queries() -> None:
    """Produces carry no group (group=""): they show whatever groups are selected;
    each series counted once over collectors (max by every label of the counter)."""
    assert q.errors_by_class() == (
        "sum by (error) (max by (stream, group, kind, error) (rate("
        'msgtally_delivery_errors_total{stream=~"$stream",group=~"$group|"}[$__rate_interval])))'
    )
    assert q.act_now_errors() == (
        "max by (stream, group, kind, error) (rate(msgtally_delivery_errors_total{"
        'error=~"auth|serialization",stream=~"$stream",group=~"$group|"}[$__rate_interval]))'
        " > 0"
    )


@pytest.mark.parametrize(
    ("text", "escaped"),
    [("orders", "orders"), ("index-updates", "index-updates"), ("a.b", "a\\.b"),
     ("x(y)|z*", "x\\(y\\)\\|z\\*")],
)  # fmt: skip
def test_regex_escape(text: str, escaped: str) -> None:
    assert regex_escape(text) == escaped
    assert re.fullmatch(escaped, text)


def test_uid_fits_grafana() -> None:
    spec = load_spec(
        "version: msgtally/v1\nservice: a.very-long_service.name-for-payments-and-more\n"
        "slos: [{name: o, stream: s, sli: delivery, objective: 99}]\n"
    )
    uids = [uid(spec, name) for name in NAMES]
    assert all(len(u) <= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", u) for u in uids)
    assert len(set(uids)) == 3
    assert uid(read_spec_file(EXAMPLES / "checkout.yml"), "oncall") == "msgtally-checkout-oncall"


def test_rows_must_fill_the_grid() -> None:
    narrow = Panel(Kind.STAT, "t", "d", "short", (Target("up"),), width=10)
    with pytest.raises(ValueError, match="20 columns wide"):
        check_rows([(narrow, narrow)])


# --- every dashboard ---------------------------------------------------------------


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


@pytest.mark.parametrize(("spec", "name", "board"), all_boards(), ids=BOARD_IDS)
def test_structure(spec: str, name: str, board: dict[str, Any]) -> None:
    """Every panel: a title, the Prometheus data source, a unit, a place of its own."""
    panels = board["panels"]
    assert panels
    for p in panels:
        where = f"{name}: {p.get('title')!r}"
        assert p.get("title"), where
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert p["fieldConfig"]["defaults"].get("unit") in UNITS, where
        assert p.get("description"), where
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0, where
        assert pos["x"] + pos["w"] <= GRID_WIDTH, where
        assert p["targets"], where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], where
    for a, b in combinations(panels, 2):
        assert not _overlap(a["gridPos"], b["gridPos"]), f"{a['title']} / {b['title']}"
    assert len({p["id"] for p in panels}) == len(panels)


@pytest.mark.parametrize(("spec", "name", "board"), all_boards(), ids=BOARD_IDS)
def test_frame(spec: str, name: str, board: dict[str, Any]) -> None:
    """Variables, links, the Code generated marker, Grafana's current schema."""
    service = board["uid"].split("-")[1]
    assert board["schemaVersion"] == 42
    assert board["description"].startswith(
        f"Code generated by msgtally dashboards from the SLO spec of service '{service}'. "
        "DO NOT EDIT."
    )
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "stream", "group"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("stream", "group"):
        v = variables[var]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], var
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["current"]["value"] == ["$__all"]
    assert "$stream" in variables["group"]["query"]
    (link,) = board["links"]
    assert link["type"] == "dashboards" and link["tags"] == [f"msgtally:{service}"]
    assert link["includeVars"] and link["keepTime"]
    assert f"msgtally:{service}" in board["tags"]
    # Grafana's own model (the SDK's, schemaVersion 42) reads it back unchanged.
    again = json.loads(json.dumps(sdk.model.Dashboard.from_json(board), cls=sdk.JSONEncoder))
    assert again == board


def test_stream_variable_lists_the_spec_streams() -> None:
    board = checkout()["oncall"]
    (stream,) = [v for v in board["templating"]["list"] if v["name"] == "stream"]
    assert stream["query"] == (
        'label_values(msgtally_messages_produced_total{stream=~"orders|payments"}, stream)'
    )


def test_three_dashboards_linked_by_one_tag() -> None:
    boards = checkout()
    assert list(boards) == list(NAMES) == [b.name for b in BOARDS]
    assert [b["title"] for b in boards.values()] == [
        "msgtally checkout: Executive",
        "msgtally checkout: On-call",
        "msgtally checkout: Debug",
    ]
    assert len({b["uid"] for b in boards.values()}) == 3
    assert {tuple(b["links"][0]["tags"]) for b in boards.values()} == {("msgtally:checkout",)}


def _exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


@pytest.mark.parametrize("spec_path", spec_files(), ids=stem)
def test_every_recording_rule_a_panel_reads_is_generated(spec_path: Path) -> None:
    """Dashboards and alerts agree: the panels read what `msgtally alerts` records."""
    spec = read_spec_file(spec_path)
    recorded = {
        r["record"] for g in generate_rules(spec)["groups"] for r in g["rules"] if "record" in r
    }
    used = {
        name
        for board in generate(spec).values()
        for expr in _exprs(board)
        for name in re.findall(r"msgtally:[a-z_:]+[0-9a-z]*", expr)
    }
    assert used and used <= recorded, used - recorded
    windows = {w.long_text for w in spec_windows(spec)}
    assert {f"msgtally:sli_error:ratio_rate{w}" for w in windows} <= used


def test_oncall_has_one_burn_panel_per_tier_with_its_threshold() -> None:
    board = checkout()["oncall"]
    burns = [p for p in board["panels"] if p["title"].startswith("Burn rate")]
    assert [p["title"] for p in burns] == [
        "Burn rate, page over 1h and 5m (fires above 14.4x)",
        "Burn rate, page over 6h and 30m (fires above 6x)",
        "Burn rate, ticket over 1d and 2h (fires above 3x)",
        "Burn rate, ticket over 3d and 6h (fires above 1x)",
    ]
    for p, factor in zip(burns, (14.4, 6, 3, 1), strict=True):
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"color": "red", "value": factor}
        assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_every_metric_a_panel_reads_is_exposed_by_the_collector(
    store: Engine, collector: LiveCollector
) -> None:
    t0 = 1_700_000_000.0
    produce = {"stream": "orders", "kind": "produce", "ts": t0}
    body = {
        "records": [
            {**produce, "message_id": "m1"},
            {**produce, "message_id": "m1", "kind": "consume", "group": "billing", "ts": t0 + 1},
            {**produce, "message_id": "m2", "ts": t0 + 990},  # in flight at t0 + 1000
            {**produce, "message_id": "m3", "outcome": "error", "error": "auth"},
        ],
        "source": "shim",
        "dropped": [{"stream": "orders", "kind": "produce", "total": 1}],
        "sequences": [{"producer": "shim", "stream": "orders", "kind": "produce", "last": 1}],
        "retry_configs": [{"stream": "orders", "group": "billing", "acks": "before"}],
    }
    httpx.post(f"{collector.url}/v1/records", json=body).raise_for_status()
    reconcile(store, ReconcileConfig(), now=t0 + 1000)
    text = httpx.get(f"{collector.url}/metrics").text
    exposed = set(re.findall(r"^(msgtally_\w+)", text, re.M))
    used = {
        name
        for _, _, board in all_boards()
        for expr in _exprs(board)
        for name in re.findall(r"\b(msgtally_\w+)", expr)
    }
    assert used <= exposed, used - exposed
    assert {"msgtally_ingest_records_total", "msgtally_ingest_rejected_total"} <= used


def test_heatmap_reads_buckets_as_a_heatmap() -> None:
    (heat,) = [p for p in checkout()["debug"]["panels"] if p["type"] == "heatmap"]
    (target,) = heat["targets"]
    assert target["format"] == "heatmap" and target["legendFormat"] == "{{le}}"
    assert heat["options"]["calculate"] is False
    assert heat["options"]["yAxis"]["unit"] == "s"


def test_openslo_gives_the_same_dashboards_as_the_native_spec() -> None:
    native = generate(read_spec_file(EXAMPLES / "inventory-28d.yml"))
    assert generate(read_spec_file(EXAMPLES / "inventory-28d.openslo.yml")) == native


# --- render, golden files, CLI -------------------------------------------------------


def test_render_is_stable_json() -> None:
    board = checkout()["debug"]
    text = render_dashboard(board)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert json.loads(text) == board
    assert text == json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    with pytest.raises(ValueError, match="no panels"):
        render_dashboard({"panels": []})


def outputs(spec_path: Path) -> dict[Path, str]:
    """examples/<spec>.dashboards/<name>.json -> text, for one example spec."""
    directory = EXAMPLES / (stem(spec_path) + ".dashboards")
    boards = generate(read_spec_file(spec_path))
    return {directory / f"{name}.json": render_dashboard(data) for name, data in boards.items()}


@pytest.mark.parametrize("spec_path", spec_files(), ids=stem)
def test_golden_files(spec_path: Path, update_golden: bool) -> None:
    """examples/<spec>.yml -> examples/<spec>.dashboards/; regenerate: --update-golden."""
    expected = outputs(spec_path)
    directory = next(iter(expected)).parent
    if update_golden:
        directory.mkdir(exist_ok=True)
        for old in directory.glob("*.json"):
            old.unlink()
        for path, text in expected.items():
            path.write_text(text, encoding="utf-8")
    for path, text in expected.items():
        assert path.exists(), f"{path} missing: run pytest --update-golden"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} drifted from the generator: run pytest --update-golden and review"
        )
    extra = set(directory.glob("*")) - set(expected)
    assert not extra, f"stale generated files: {sorted(extra)}"


def test_cli_writes_the_three_dashboards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = EXAMPLES / "checkout.yml"
    assert main(["dashboards", str(spec), "-o", str(tmp_path / "out")]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert written == {p.name: text for p, text in outputs(spec).items()}
    assert "executive.json" in capsys.readouterr().err


def test_cli_reports_a_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("version: msgtally/v1\nservice: s\nslos: []\n")
    assert main(["dashboards", str(bad), "-o", str(tmp_path / "out")]) == 1
    assert "slos" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_needs_an_output_directory() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["dashboards", str(EXAMPLES / "checkout.yml")])
    assert exc.value.code == 2


# --- the SDK's deprecation warning, and nothing else, is silenced --------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True, text=True, cwd=EXAMPLES.parent, check=False,
    )  # fmt: skip


def test_the_sdk_warns_at_import_and_dashboards_silences_exactly_that() -> None:
    bare = _python("import grafana_foundation_sdk.builders.dashboard")
    assert bare.returncode != 0
    assert "DeprecationWarning: Prefer using dashboardv2.Dashboard instead." in bare.stderr
    assert _python("import msgtally.dashboards.build").returncode == 0
    # The filter does not outlive the import: other deprecations still raise.
    other = _python(
        "import warnings, msgtally.dashboards.build\n"
        "warnings.warn('Prefer using dashboardv2.Dashboard instead.', DeprecationWarning)"
    )
    assert other.returncode != 0

