"""Failures logged so that a log stays readable: one traceback per distinct failure.

A background job that fails every 0.2 s, or a call path that keeps hitting the same bug,
must not bury the log in identical tracebacks. ``FailureLog`` serves a loop (one traceback
per kind of failure, then a line a minute, then a line on recovery); ``log_internal_error``
serves call paths (one traceback per place and exception type, then one line each time).
"""

from __future__ import annotations

import logging
import re
import time

# Citizen ID numbers (GB 11643: six digits of division, a birth date, three digits and a check
# character; the older 15-digit form with a two-digit year) in any text a log line carries —
# a database driver's error detail names the values of a violated key, for instance. Member
# ids and USCCs (organisations, not persons) are left as they are.
_DATE = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
_CITIZEN_ID = re.compile(
    rf"(?<![0-9A-Za-z])(?:[0-9]{{6}}(?:18|19|20)[0-9]{{2}}{_DATE}[0-9]{{3}}[0-9Xx]"
    rf"|[0-9]{{8}}{_DATE}[0-9]{{3}})(?![0-9A-Za-z])"
)
REDACTED = "<redacted>"


def redact(text: str) -> str:
    """``text`` with every citizen ID number replaced."""
    return _CITIZEN_ID.sub(REDACTED, text)


class RedactingFormatter(logging.Formatter):
    """Keeps ID numbers out of the hub's log: every formatted line, traceback included,
    passes through ``redact`` (the record itself is left alone for other handlers)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_SEEN_INTERNAL: set[tuple[str, str]] = set()
_SEEN_LIMIT = 1_000


def log_internal_error(log: logging.Logger, where: str, exc: BaseException) -> None:
    """An unexpected failure in ``where``: a traceback the first time, a line afterwards."""
    key = (where, type(exc).__name__)
    if key in _SEEN_INTERNAL:
        log.error("internal error in %s (%s; traceback logged before)", where, key[1])
        return
    if len(_SEEN_INTERNAL) < _SEEN_LIMIT:
        _SEEN_INTERNAL.add(key)
    log.error("internal error in %s (%s)", where, key[1], exc_info=exc)


class FailureLog:
    """A background job's failures: one traceback per distinct failure, then one line a
    minute while it goes on, and one line when it recovers."""

    REPEAT_EVERY_SECONDS = 60.0

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.current: str | None = None
        self.failures = 0
        self.last_line = 0.0

    def failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.failures += 1
        now = time.monotonic()
        if kind != self.current:
            self.current = kind
            self.last_line = now
            self.log.error("%s failed (%s)", self.what, kind, exc_info=exc)
        elif now - self.last_line >= self.REPEAT_EVERY_SECONDS:
            self.last_line = now
            self.log.warning("%s still failing (%s, %d times)", self.what, kind, self.failures)

    def succeeded(self) -> bool:
        """Record a success; True when it ends a run of failures."""
        if self.current is None:
            return False
        self.log.info("%s recovered after %d failure(s)", self.what, self.failures)
        self.current, self.failures = None, 0
        return True
