"""Fault injection: what can go wrong, for which routes, decided deterministically.

A :class:`FaultPlan` is a list of :class:`FaultRule` plus plan-wide overrides (signed-URL lifetime,
download readiness). Each rule targets ``all``, a group (``api``, ``storage``) or a route name or
name prefix (``catalogs.search``, ``downloads``). :class:`FaultState` applies a plan: it counts
calls per rule (for "fail the n-th call") and draws error rates from an RNG seeded by the plan,
so a test that sets a plan always sees the same sequence of failures.

Route names: ``ping``, ``projects.list``, ``projects.get``, ``order_items.list``,
``order_items.get``, ``catalogs.search``, ``catalogs.get``, ``downloads.create``,
``downloads.get``, ``deliveries.list``, ``bandsets.list`` (group ``api``) and ``storage.get``,
``storage.head`` (group ``storage``). Control routes (``/_emulator/...``) are never faulted.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ROUTE_GROUPS = ("api", "storage")
_PLAN_KEYS = ("url_lifetime", "download_mode", "download_polls", "download_delay", "seed")


@dataclass(frozen=True)
class FaultRule:
    """One kind of misbehaviour for the routes ``target`` selects.

    ``bandwidth`` caps body bytes/s per response (HTTP/1.1 serves one response at a time per
    connection, so this is a per-connection cap). ``reset_after_bytes`` sends that many body bytes
    then aborts the TCP connection (RST); ``truncate_after_bytes`` sends that many then closes
    cleanly although Content-Length promised more. ``fail_calls`` lists 1-based call numbers
    (counted per rule since the plan was set) answered with ``fail_status``.
    """

    target: str = "all"
    latency_ms: float = 0.0
    bandwidth: int | None = None
    error_rate: float = 0.0
    error_status: int = 503
    retry_after: int = 1
    fail_calls: tuple[int, ...] = ()
    fail_status: int = 500
    reset_after_bytes: int | None = None
    truncate_after_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if self.latency_ms < 0 or (self.bandwidth is not None and self.bandwidth <= 0):
            raise ValueError("latency must be >= 0 and bandwidth > 0")
        for status in (self.error_status, self.fail_status):
            if not 400 <= status <= 599:
                raise ValueError("fault statuses must be 4xx or 5xx")
        object.__setattr__(self, "fail_calls", tuple(int(n) for n in self.fail_calls))

    def matches(self, route: str) -> bool:
        if route.startswith("control"):
            return False
        if self.target == "all":
            return True
        group = "storage" if route.startswith("storage") else "api"
        return self.target in (group, route) or route.startswith(self.target + ".")


@dataclass(frozen=True)
class FaultPlan:
    """Rules plus overrides of the configured URL lifetime and download readiness."""

    rules: tuple[FaultRule, ...] = ()
    url_lifetime: float | None = None
    download_mode: str | None = None
    download_polls: int | None = None
    download_delay: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.url_lifetime is not None and self.url_lifetime < 1:
            raise ValueError("url_lifetime must be at least 1 second")
        if self.download_mode not in (None, "success", "failed", "never"):
            raise ValueError("download_mode must be success, failed or never")

    @classmethod
    def from_json(cls, obj: Any) -> FaultPlan:
        """Parse the control endpoint's body: ``{"rules": [...], ...}`` or one flat rule."""
        if not isinstance(obj, dict):
            raise ValueError("a fault plan must be a JSON object")
        rule_keys = {f.name for f in fields(FaultRule)}
        unknown = set(obj) - rule_keys - set(_PLAN_KEYS) - {"rules"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        raw_rules = obj.get("rules", [])
        flat = {k: v for k, v in obj.items() if k in rule_keys}
        if flat:
            raw_rules = [*raw_rules, flat]
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise ValueError("rules must be a list of objects")
        try:
            rules = tuple(FaultRule(**r) for r in raw_rules)
            return cls(rules=rules, **{k: obj[k] for k in _PLAN_KEYS if k in obj})
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """What the middleware must do to one request."""

    latency: float = 0.0
    error_status: int | None = None
    retry_after: int = 1
    bandwidth: int | None = None
    reset_after: int | None = None
    truncate_after: int | None = None


@dataclass
class FaultState:
    """A plan being applied: per-rule call counters and the seeded RNG for error rates."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    calls: list[int] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.set(self.plan)

    def set(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.calls = [0] * len(plan.rules)
        self.rng = random.Random(plan.seed)

    def decide(self, route: str) -> Decision:
        latency = 0.0
        error: tuple[int, int] | None = None
        bandwidth: int | None = None
        reset: int | None = None
        truncate: int | None = None
        for index, rule in enumerate(self.plan.rules):
            if not rule.matches(route):
                continue
            self.calls[index] += 1
            latency += rule.latency_ms / 1000.0
            bandwidth = _min_or(bandwidth, rule.bandwidth)
            reset = _min_or(reset, rule.reset_after_bytes)
            truncate = _min_or(truncate, rule.truncate_after_bytes)
            if error is None and self.calls[index] in rule.fail_calls:
                error = (rule.fail_status, rule.retry_after)
            elif error is None and rule.error_rate and self.rng.random() < rule.error_rate:
                error = (rule.error_status, rule.retry_after)
        status, retry_after = error if error else (None, 1)
        return Decision(latency, status, retry_after, bandwidth, reset, truncate)


def _min_or(current: int | None, new: int | None) -> int | None:
    if new is None:
        return current
    return new if current is None else min(current, new)
