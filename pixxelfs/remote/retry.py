"""Retrying transient failures with exponential backoff and full jitter.

This module owns the retry *policy* only: how many attempts, how long to wait between them,
and how a server's ``Retry-After`` hint bounds the wait. It knows nothing about HTTP; callers
decide what is transient through a predicate, so the storage client and the API client share
one implementation. When the attempts run out it raises :class:`ApiUnavailableError` chained
to the last failure.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from pixxelfs.errors import ApiUnavailableError
from pixxelfs.logs import redact_text

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransientError(Exception):
    """A failure worth retrying, optionally with the server's ``Retry-After`` hint (seconds)."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in total, waits of ``uniform(0, min(cap, base * 2**n))``.

    Full jitter (rather than equal or no jitter) spreads the retries of many concurrent
    readers so they do not hit a recovering server in lock step. A ``Retry-After`` hint
    replaces the computed wait, but never beyond ``max_retry_after``, so a hostile or buggy
    header cannot hang a read for hours.
    """

    attempts: int = 5
    base: float = 0.2
    cap: float = 10.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base < 0 or self.cap < 0 or self.max_retry_after < 0:
            raise ValueError("RetryPolicy delays must be non-negative")

    def delay(self, retry_number: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return rng.uniform(0.0, min(self.cap, self.base * (2**retry_number)))


def cause_of(exc: BaseException) -> str:
    """What went wrong, for log lines and error messages (a timeout's text is often empty)."""
    return redact_text(str(exc)) or type(exc).__name__


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` hint an exception carries, if any."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


async def retrying(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    is_transient: Callable[[Exception], bool],
    describe: str,
    *,
    on_retry: Callable[[Exception, float], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Await ``fn()`` until it succeeds, retrying failures for which ``is_transient`` is true.

    Non-transient exceptions propagate untouched. ``describe`` names the operation in log
    lines and in the final error; it must already be free of secrets.
    """
    rng = rng or random.Random()
    retry_number = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if retry_number + 1 >= policy.attempts:
                raise ApiUnavailableError(
                    f"{describe}: still failing after {policy.attempts} attempts: {cause_of(exc)}"
                ) from exc
            wait = policy.delay(retry_number, retry_after_of(exc), rng)
            log.warning(
                "%s failed (%s); retry %d/%d in %.2fs",
                describe,
                cause_of(exc),
                retry_number + 1,
                policy.attempts - 1,
                wait,
            )
            if on_retry is not None:
                on_retry(exc, wait)
        await trio.sleep(wait)
        retry_number += 1
