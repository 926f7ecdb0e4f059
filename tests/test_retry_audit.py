"""The retry-configuration audit as a pure function: every finding, exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from msgtally.names import FINDINGS
from msgtally.slis.read.retry_audit import Announced, Setting, audit
from msgtally.slis.spec.model import Contract, Spec
from msgtally.slis.spec.semantics import Semantics

# Acks after processing, five attempts, 1 s doubling to 30 s, jittered, a dead-letter queue.
GOOD = Setting("after", 5, 1.0, 30.0, True, "orders.dlq")


def announced(
    *settings: Setting, stream: str = "orders", group: str = "billing"
) -> list[Announced]:
    return [Announced(stream, group, f"{group}-{i}", s) for i, s in enumerate(settings)]


def spec(*contracts: Contract) -> Spec:
    return Spec(service="shop", slos=(), contracts=contracts)


def findings(settings: list[Announced], with_spec: Spec | None = None) -> dict[str, int]:
    (one,) = audit(settings, with_spec)
    return {k: v for k, v in one.findings.items() if v}


def test_a_group_that_agrees_on_a_sound_configuration_has_no_finding() -> None:
    (one,) = audit(announced(GOOD, GOOD, GOOD), spec(Contract("orders", Semantics.AT_LEAST_ONCE)))
    assert one.instances == 3
    assert one.settings == ((GOOD, 3),)
    assert one.findings == dict.fromkeys(FINDINGS, 0)
    assert one.contract == "at-least-once"


def test_drift_counts_every_instance_of_a_group_that_disagrees() -> None:
    other = replace(GOOD, max_attempts=3)
    (one,) = audit(announced(GOOD, GOOD, other))
    assert findings(announced(GOOD, GOOD, other)) == {"drift": 3}
    assert one.settings == ((GOOD, 2), (other, 1))  # most instances first


def test_no_jitter_needs_retries_with_a_backoff() -> None:
    bare = replace(GOOD, jitter=False)
    assert findings(announced(bare, bare)) == {"no_jitter": 2}
    # no backoff (immediate redelivery), no retries, or acks before: nothing to jitter
    assert findings(announced(replace(bare, backoff_base=0.0, backoff_cap=0.0))) == {}
    assert findings(announced(replace(bare, max_attempts=1))) == {"no_retries": 1}
    assert findings(announced(replace(bare, acks="before"))) == {"acks_before_processing": 1}


def test_acks_before_processing_and_no_retries() -> None:
    before = replace(GOOD, acks="before")
    once = replace(GOOD, max_attempts=1)
    assert findings(announced(GOOD, before, once, once)) == {
        "drift": 4,
        "acks_before_processing": 1,
        "no_retries": 2,
    }


@pytest.mark.parametrize("semantics", [Semantics.AT_LEAST_ONCE, Semantics.EXACTLY_ONCE])
def test_acks_before_or_one_attempt_contradicts_a_stream_that_may_not_lose(
    semantics: Semantics,
) -> None:
    before = replace(GOOD, acks="before")
    once = replace(GOOD, max_attempts=1)
    s = spec(Contract("orders", semantics))
    assert findings(announced(GOOD, before, once), s) == {
        "drift": 3,
        "acks_before_processing": 1,
        "no_retries": 1,
        "contradicts_contract": 2,
    }
    # without a spec, no contract to contradict
    assert "contradicts_contract" not in findings(announced(GOOD, before, once))


def test_retries_contradict_an_at_most_once_stream() -> None:
    s = spec(Contract("orders", Semantics.AT_MOST_ONCE))
    before = replace(GOOD, acks="before")
    once = replace(GOOD, max_attempts=1)
    unlimited = replace(GOOD, max_attempts=None)
    assert findings(announced(before, before), s) == {"acks_before_processing": 2}
    assert findings(announced(once), s) == {"no_retries": 1}
    assert findings(announced(GOOD, unlimited), s) == {"drift": 2, "contradicts_contract": 2}


def test_manual_acks_contradict_nothing_the_audit_can_see() -> None:
    manual = replace(GOOD, acks="manual", max_attempts=1)
    for semantics in Semantics:
        s = spec(Contract("orders", semantics))
        assert findings(announced(manual), s) == {"no_retries": 1}


def test_a_group_contract_overrides_its_streams() -> None:
    s = spec(
        Contract("orders", Semantics.AT_LEAST_ONCE),
        Contract("orders", Semantics.AT_MOST_ONCE, group="audit"),
    )
    before = replace(GOOD, acks="before")
    rows = [*announced(before, group="billing"), *announced(before, group="audit"),
            *announced(before, stream="other")]  # fmt: skip
    by_pair = {(a.stream, a.group): a for a in audit(rows, s)}
    assert list(by_pair) == [("orders", "audit"), ("orders", "billing"), ("other", "billing")]
    assert by_pair["orders", "billing"].findings["contradicts_contract"] == 1
    assert by_pair["orders", "audit"].findings["contradicts_contract"] == 0
    assert by_pair["orders", "audit"].contract == "at-most-once"
    assert by_pair["other", "billing"].contract is None


def test_the_json_lists_every_configuration_and_finding() -> None:
    (one,) = audit(announced(GOOD, replace(GOOD, max_attempts=None, dead_letter=None)))
    assert one.to_json() == {
        "stream": "orders",
        "group": "billing",
        "contract": None,
        "instances": 2,
        "configs": [
            {"acks": "after", "max_attempts": 5, "backoff_base": 1.0, "backoff_cap": 30.0,
             "jitter": True, "dead_letter": "orders.dlq", "instances": 1},
            {"acks": "after", "max_attempts": None, "backoff_base": 1.0, "backoff_cap": 30.0,
             "jitter": True, "dead_letter": None, "instances": 1},
        ],
        "findings": {"drift": 2, "no_jitter": 0, "acks_before_processing": 0, "no_retries": 0,
                     "contradicts_contract": 0},
    }  # fmt: skip
