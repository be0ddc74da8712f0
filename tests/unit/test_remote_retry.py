"""RetryPolicy and retrying(): backoff bounds, Retry-After, what is and is not retried."""

from __future__ import annotations

import random

import pytest
import trio

from pixxelfs.errors import ApiUnavailableError
from pixxelfs.remote.retry import RetryPolicy, TransientError, retrying


def test_full_jitter_stays_within_the_exponential_cap() -> None:
    policy = RetryPolicy(attempts=10, base=0.5, cap=3.0)
    rng = random.Random(1)
    for retry_number, ceiling in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [policy.delay(retry_number, None, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # jitter spans the whole interval


def test_retry_after_replaces_the_backoff_but_is_capped() -> None:
    policy = RetryPolicy(max_retry_after=30)
    rng = random.Random(1)
    assert policy.delay(0, 7, rng) == 7
    assert policy.delay(0, 3600, rng) == 30
    assert policy.delay(0, -5, rng) == 0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base=-1)


async def test_transient_failures_are_retried_until_success(autojump_clock) -> None:
    outcomes: list[Exception | str] = [TransientError("503"), TransientError("503"), "ok"]
    seen: list[float] = []

    async def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(attempts=3, base=1, cap=1)
    started = trio.current_time()
    result = await retrying(
        policy,
        call,
        lambda exc: isinstance(exc, TransientError),
        "GET x",
        on_retry=lambda exc, wait: seen.append(wait),
    )
    assert result == "ok" and len(seen) == 2
    assert trio.current_time() - started == pytest.approx(sum(seen))


async def test_permanent_errors_propagate_at_once() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("permanent")

    with pytest.raises(KeyError):
        await retrying(RetryPolicy(), call, lambda exc: False, "GET x")
    assert calls == 1


async def test_exhaustion_raises_api_unavailable_without_secrets(autojump_clock) -> None:
    async def call() -> None:
        raise TransientError("failed https://h/p?sig=secret")

    with pytest.raises(ApiUnavailableError, match="GET x: still failing after 2") as caught:
        await retrying(RetryPolicy(attempts=2), call, lambda exc: True, "GET x")
    assert "secret" not in str(caught.value)
    assert isinstance(caught.value.__cause__, TransientError)
