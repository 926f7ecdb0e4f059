"""The retry-configuration audit: what the consumers of each group announced, and what is wrong.

A pure function of the configurations the instances last announced
(msgtally.ingest.shim.announce) and, with an SLO spec, the streams'
delivery contracts. Each finding counts instances, per stream and group:

- `drift`: the group's instances run more than one configuration (every
  instance of the group counts: which one is odd is a matter of intent; the
  configurations in use, with their instance counts, show it);
- `no_jitter`: it retries with a backoff (base above 0) and no jitter, so
  failures after an outage come back in synchronised waves (a retry storm);
- `acks_before_processing`: it acks before processing (at most once: a crash
  or a failure while processing loses the message);
- `no_retries`: max attempts 1: a failure is final (dead-lettered or dropped);
- `contradicts_contract`: the configuration breaks the group's contract
  before any message does: acks before processing or no retries on an
  at-least-once or exactly-once stream; retries (acks after processing, more
  than one attempt) on an at-most-once stream. `manual` acks are the
  handler's to settle: they contradict nothing the audit can see.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from msgtally.names import CONTRADICTS_CONTRACT, FINDINGS
from msgtally.slis.spec.model import Spec
from msgtally.slis.spec.semantics import Semantics


@dataclass(frozen=True)
class Setting:
    """One configuration, whoever runs it."""

    acks: str
    max_attempts: int | None  # None: no limit
    backoff_base: float
    backoff_cap: float
    jitter: bool
    dead_letter: str | None

    @property
    def retries(self) -> bool:
        """A failure may be delivered again: not acked before, more than one attempt."""
        return self.acks != "before" and self.max_attempts != 1

    def sort_key(self) -> tuple[Any, ...]:
        """A total order (None is no limit, past every number; no dead-letter target first)."""
        limit = self.max_attempts
        return (self.acks, limit is None, limit or 0, self.backoff_base, self.backoff_cap,
                self.jitter, self.dead_letter or "")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "acks": self.acks,
            "max_attempts": self.max_attempts,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "jitter": self.jitter,
            "dead_letter": self.dead_letter,
        }


@dataclass(frozen=True)
class Announced:
    """What one instance last announced for one stream and group."""

    stream: str
    group: str
    instance: str
    setting: Setting


@dataclass(frozen=True)
class GroupAudit:
    """The configurations of one stream and group, their instances, the findings."""

    stream: str
    group: str
    contract: str | None  # the spec's semantics for the group; None: no spec or no contract
    settings: tuple[tuple[Setting, int], ...]  # most instances first
    instances: int
    findings: Mapping[str, int]  # every finding of names.FINDINGS, instances with it

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "group": self.group,
            "contract": self.contract,
            "instances": self.instances,
            "configs": [{**s.to_json(), "instances": n} for s, n in self.settings],
            "findings": dict(self.findings),
        }


def contradicts(setting: Setting, contract: Semantics | None) -> bool:
    """Does a configuration break the contract before any message does?"""
    if contract is None or setting.acks == "manual":
        return False
    if contract is Semantics.AT_MOST_ONCE:
        return setting.retries
    return setting.acks == "before" or setting.max_attempts == 1


def instance_findings(setting: Setting, contract: Semantics | None) -> set[str]:
    """The findings of one instance on its own (drift is the group's)."""
    found = set()
    if setting.retries and setting.backoff_base > 0 and not setting.jitter:
        found.add("no_jitter")
    if setting.acks == "before":
        found.add("acks_before_processing")
    if setting.max_attempts == 1:
        found.add("no_retries")
    if contradicts(setting, contract):
        found.add(CONTRADICTS_CONTRACT)
    return found


def audit(announced: Iterable[Announced], spec: Spec | None = None) -> list[GroupAudit]:
    """Per stream and group (in name order), the audit of what its instances announced."""
    groups: dict[tuple[str, str], list[Setting]] = {}
    for a in announced:
        groups.setdefault((a.stream, a.group), []).append(a.setting)
    out = []
    for (stream, group), settings in sorted(groups.items()):
        found = spec.contract_for(stream, group) if spec is not None else None
        contract = found.semantics if found is not None else None
        counts = Counter(settings)
        findings = dict.fromkeys(FINDINGS, 0)
        for setting, n in counts.items():
            for name in instance_findings(setting, contract):
                findings[name] += n
        if len(counts) > 1:
            findings["drift"] = len(settings)
        out.append(
            GroupAudit(
                stream=stream,
                group=group,
                contract=contract.value if contract is not None else None,
                settings=tuple(sorted(counts.items(), key=lambda sn: (-sn[1], sn[0].sort_key()))),
                instances=len(settings),
                findings=findings,
            )
        )
    return out
