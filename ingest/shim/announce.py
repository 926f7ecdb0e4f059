"""The retry configuration a consumer runs, announced to the collector.

A consumer instance says, per stream and group, how it acks and retries:
acks mode, max attempts, backoff base and cap, jitter, dead-letter target.
The collector keeps what each instance (the shim's `source`) last said and
audits the groups (`GET /v1/retry-configs`): instances of one group that
disagree, acks before processing, no retries, retries without jitter, and
what contradicts a stream's delivery contract, before any loss shows.

The shipper sends a configuration when it is first announced or changes (on
its own if no records are waiting), and every one again with the first batch
of records RESEND_EVERY seconds after the last full announcement, so that a
collector that lost them (a new store) or ages instances out learns them
again at no extra request.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from msgtally.record import MAX_ATTEMPT, MAX_TEXT_LENGTH

__all__ = [
    "ACKS",
    "MAX_BACKOFF",
    "MAX_CONFIGS",
    "RESEND_EVERY",
    "Announcements",
    "RetryConfig",
    "RetryPolicy",
]

ACKS = ("after", "before", "manual")
MAX_BACKOFF = 86_400.0  # seconds: a backoff base or cap past a day is a mistake
MAX_CONFIGS = 1024  # configurations in one request (a shim has one per stream and group)
RESEND_EVERY = 60.0  # seconds between two full announcements, each with a batch


@dataclass(frozen=True)
class RetryPolicy:
    """What a consumer's retries look like beyond its acks mode and max attempts:
    the broker's or the service's redelivery delay (`backoff_base`, doubling up
    to `backoff_cap`, seconds; 0: at once), whether it is jittered, and where a
    message goes after its last attempt (`dead_letter`: a queue, topic or key;
    None: nowhere)."""

    backoff_base: float = 0.0
    backoff_cap: float | None = None  # None: the base (no growth)
    jitter: bool = False
    dead_letter: str | None = None


@dataclass(frozen=True)
class RetryConfig:
    """One consumer's configuration for one stream and group, as announced."""

    acks: str = "after"
    max_attempts: int | None = None  # None: no limit
    backoff_base: float = 0.0
    backoff_cap: float = 0.0
    jitter: bool = False
    dead_letter: str | None = None

    @classmethod
    def of(cls, acks: str, max_attempts: int | None, policy: RetryPolicy | None) -> RetryConfig:
        """A consumer's configuration; ValueError naming the field when it is not one."""
        p = policy or RetryPolicy()
        cap = p.backoff_base if p.backoff_cap is None else p.backoff_cap
        config = cls(acks, max_attempts, p.backoff_base, cap, p.jitter, p.dead_letter)
        why = config.problem()
        if why is not None:
            raise ValueError(why)
        return config

    def problem(self) -> str | None:
        """Why the collector would refuse this configuration, or None."""
        if self.acks not in ACKS:
            return f"acks has value {self.acks!r}. Must be 'after', 'before' or 'manual'."
        if self.max_attempts is not None and not (
            type(self.max_attempts) is int and 1 <= self.max_attempts <= MAX_ATTEMPT
        ):
            return f"max_attempts has value {self.max_attempts!r}. Must be 1 to {MAX_ATTEMPT}."
        for name in ("backoff_base", "backoff_cap"):
            value = getattr(self, name)
            if not (type(value) in (int, float) and 0 <= value <= MAX_BACKOFF):
                return f"{name} has value {value!r}. Must be 0 to {MAX_BACKOFF:g} seconds."
        if self.backoff_cap < self.backoff_base:
            return f"backoff_cap {self.backoff_cap!r} is below backoff_base {self.backoff_base!r}."
        if type(self.jitter) is not bool:
            return f"jitter has value {self.jitter!r}. Must be True or False."
        if self.dead_letter is not None and not _text_ok(self.dead_letter):
            return f"dead_letter {self.dead_letter!r} is not a non-empty name without NUL."
        return None

    def to_json(self, stream: str, group: str) -> dict[str, Any]:
        return {
            "stream": stream,
            "group": group,
            "acks": self.acks,
            "max_attempts": self.max_attempts,
            "backoff_base": float(self.backoff_base),
            "backoff_cap": float(self.backoff_cap),
            "jitter": self.jitter,
            "dead_letter": self.dead_letter,
        }


def _text_ok(value: object) -> bool:
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT_LENGTH or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


Key = tuple[str, str]  # stream, group


class Announcements:
    """The configurations of one shim instance and what the collector was told."""

    def __init__(self, resend_every: float = RESEND_EVERY) -> None:
        self.resend_every = resend_every
        self._configs: dict[Key, RetryConfig] = {}
        self.forget()

    def forget(self) -> None:
        """Nothing told yet (a new instance: a forked child, a collector refusing them)."""
        self._lock = threading.Lock()
        self._told: dict[Key, RetryConfig] = {}
        self._told_all_at = -math.inf

    def set(self, stream: str, group: str, config: RetryConfig) -> bool:
        """Announce a configuration; True when it is new or changed (to be sent)."""
        key = (stream, group)
        if self._configs.get(key) == config:  # the per-message path: one lookup
            return False
        with self._lock:
            self._configs[key] = config
            return self._told.get(key) != config

    def changed(self) -> bool:
        with self._lock:
            return self._told != self._configs

    def due(self, now: float, with_records: bool) -> dict[Key, RetryConfig]:
        """What to send now: every configuration with records once RESEND_EVERY
        has passed, else the new and changed ones."""
        with self._lock:
            if with_records and now - self._told_all_at >= self.resend_every:
                return dict(self._configs)
            return {k: c for k, c in self._configs.items() if self._told.get(k) != c}

    def told(self, sent: dict[Key, RetryConfig], now: float) -> None:
        """The collector accepted `sent` (a request answered 200)."""
        with self._lock:
            self._told.update(sent)
            if sent.keys() >= self._configs.keys():
                self._told_all_at = now

    def body(self, sent: dict[Key, RetryConfig]) -> list[dict[str, Any]]:
        return [config.to_json(s, g) for (s, g), config in sorted(sent.items())]
