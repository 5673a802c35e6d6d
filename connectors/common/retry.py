"""Calls to the hub, retried while the hub is unreachable: the one retry loop of the connectors.

A connector's whole point is to ride out hub outages, so it retries every transport failure
(a deadline or a reset connection included), and every refusal the hub marks as worth
sending again (UNAVAILABLE while it starts or stops); anything else is raised at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from xhub.connectors.common.config import Backoff
from xhub.protocol.errors import TransportError, XhubError

T = TypeVar("T")


def retryable(exc: BaseException) -> bool:
    """True when the hub was not reached or asks to be asked again: wait and retry."""
    return isinstance(exc, TransportError) or (isinstance(exc, XhubError) and exc.retryable)


def call_hub(
    fn: Callable[[], T],
    *,
    backoff: Backoff,
    bounded: bool,
    stop: threading.Event,
    log: logging.Logger,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """``fn()``, retried with backoff while ``retryable`` says so.

    Unbounded calls retry until ``stop`` is set; setting it also ends a pause at once.
    ``on_retry`` sees each failure that is retried. Raises the last failure when it gives up,
    and any other failure at once.
    """

    def give_up(state: RetryCallState) -> bool:
        if stop.is_set():
            return True
        limit = stop_after_attempt(backoff.once_attempts) if bounded else stop_never
        return bool(limit(state))

    def warn(state: RetryCallState) -> None:
        outcome = state.outcome.exception() if state.outcome else None
        if outcome is not None and on_retry is not None:
            on_retry(outcome)
        log.warning("hub unreachable (attempt %d): %s; retrying", state.attempt_number, outcome)

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # wakes at once when asked to stop

    retrying = Retrying(
        retry=retry_if_exception(retryable),
        stop=give_up,
        # Exponential with jitter: waits always grow, so a bounded pass spans real time.
        wait=wait_exponential_jitter(
            multiplier=backoff.initial_seconds,
            max=backoff.max_seconds,
            jitter=backoff.initial_seconds,
        ),
        sleep=pause,
        before_sleep=warn,
        reraise=True,
    )
    return retrying(fn)
