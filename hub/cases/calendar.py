"""Working-day arithmetic for legal time limits (限时办结 / 承诺时限).

Time limits for administrative permits are counted in working days (工作日),
excluding statutory holidays (法定节假日), and the day of acceptance itself is
not counted: a limit of *n* days ends on the *n*-th working day after the day
the case was accepted. China also moves weekend days into holiday periods and
makes some Saturdays or Sundays working days instead (调休), so the calendar
is data, loaded from a reviewed file, not a rule:

* a date listed in ``holidays`` is never a working day;
* a Saturday or Sunday listed in ``makeup_workdays`` is a working day;
* otherwise Monday–Friday are working days and weekends are not.

Dates the file does not mention fall back to plain weekdays, so a deadline that
runs into a year the file does not cover will ignore that year's holidays.

File format (TOML; dates as ``"YYYY-MM-DD"`` strings or bare TOML dates)::

    [calendar]
    holidays = ["2026-01-01", "2026-01-02"]              # single non-working days
    holiday_ranges = [["2026-10-01", "2026-10-07"]]      # inclusive periods
    makeup_workdays = ["2026-09-20", "2026-10-10"]       # weekend days worked (调休)

Unknown keys are errors (a misspelt key would silently drop holidays), as are
bad dates, reversed or over-long ranges, a date that is both a holiday and a
make-up day, and a make-up day that is not a weekend. Every problem is reported
at once with its key and, where it can be found, its line.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "CALENDAR_KEYS",
    "MAX_RANGE_DAYS",
    "SAMPLE_CN_2026",
    "CalendarFileError",
    "CalendarProblem",
    "DeadlineStatus",
    "WorkCalendar",
    "deadline",
    "status_on",
    "warning_day",
]

CALENDAR_KEYS: Final = ("holidays", "holiday_ranges", "makeup_workdays")
MAX_RANGE_DAYS: Final = 31
"""Longest accepted holiday range; a longer one is almost surely a typo'd year or month."""
SAMPLE_CN_2026: Final = Path(__file__).with_name("calendar_cn_2026.toml")

DeadlineStatus = Literal["ok", "warning", "overdue"]

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ONE_DAY = timedelta(days=1)


def _weekdays_through(d: date) -> int:
    """Mondays–Fridays from 0001-01-01 (a Monday) up to and including ``d``."""
    weeks, rest = divmod(d.toordinal(), 7)
    return weeks * 5 + min(rest, 5)


@dataclass(frozen=True)
class WorkCalendar:
    """Which days count as working days; see the module docstring for the rule."""

    holidays: AbstractSet[date] = field(default_factory=frozenset)
    makeup_workdays: AbstractSet[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        holidays = frozenset(self.holidays)
        makeup = frozenset(self.makeup_workdays)
        for d in holidays | makeup:
            # datetime is a date subclass but never equal to one: it would be ignored.
            if isinstance(d, datetime) or not isinstance(d, date):
                raise TypeError(f"calendar days must be datetime.date, got {d!r}")
        if both := holidays & makeup:
            raise ValueError(
                "dates both holiday and make-up workday: "
                + ", ".join(d.isoformat() for d in sorted(both))
            )
        if weekdays := sorted(d for d in makeup if d.weekday() < 5):
            raise ValueError(
                "make-up workdays must be a Saturday or Sunday: "
                + ", ".join(f"{d.isoformat()} ({d:%A})" for d in weekdays)
            )
        object.__setattr__(self, "holidays", holidays)
        object.__setattr__(self, "makeup_workdays", makeup)

    def is_workday(self, d: date) -> bool:
        if d in self.holidays:
            return False
        if d in self.makeup_workdays:
            return True
        return d.weekday() < 5

    def add_workdays(self, start: date, n: int) -> date:
        """The ``n``-th working day after ``start`` (``start`` itself never counts).

        ``n == 0`` returns ``start`` unchanged, so that
        ``workdays_between(start, add_workdays(start, n)) == n`` for all n >= 0.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        d = start
        while n:
            d += _ONE_DAY
            if self.is_workday(d):
                n -= 1
        return d

    def workdays_between(self, start: date, end: date) -> int:
        """Working days in ``(start, end]``; negated when ``end`` is before ``start``."""
        if end < start:
            return -self.workdays_between(end, start)
        count = _weekdays_through(end) - _weekdays_through(start)
        for d in self.holidays | self.makeup_workdays:
            if start < d <= end:
                count += int(self.is_workday(d)) - int(d.weekday() < 5)
        return count

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<calendar>") -> WorkCalendar:
        """Parse a calendar file's text; raises :class:`CalendarFileError` listing every problem."""
        return _Loader(text, source).load()

    @classmethod
    def from_file(cls, path: str | Path) -> WorkCalendar:
        p = Path(path)
        return cls.from_toml(p.read_text(encoding="utf-8"), source=str(p))


# --- deadlines ---------------------------------------------------------------------------------


def _check_limit(limit_days: int) -> None:
    if isinstance(limit_days, bool) or not isinstance(limit_days, int) or limit_days < 1:
        raise ValueError(
            f"a time limit must be a whole number of working days >= 1, got {limit_days!r}"
        )


def deadline(accepted_on: date, limit_days: int, calendar: WorkCalendar) -> date:
    """The last day to finish: the ``limit_days``-th working day after acceptance."""
    _check_limit(limit_days)
    return calendar.add_workdays(accepted_on, limit_days)


def warning_day(
    accepted_on: date, limit_days: int, calendar: WorkCalendar, share: float = 0.8
) -> date:
    """The first day on which ``share`` of the limit has been used up (yellow warning 黄牌预警).

    That is the ``k``-th working day after acceptance with
    ``k = ceil(share × limit_days)`` (at least 1): by the end of day ``k`` at
    least ``share`` of the working days are gone. For 10 days at 0.8 it is the
    8th working day; for short limits it may coincide with the deadline.
    ``share`` is taken as written in decimal (0.7 × 10 is 7, not 7.000…1).
    """
    _check_limit(limit_days)
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    k = max(1, math.ceil(Fraction(str(share)) * limit_days))
    return calendar.add_workdays(accepted_on, k)


def status_on(
    today: date,
    accepted_on: date,
    limit_days: int,
    calendar: WorkCalendar,
    share: float = 0.8,
) -> DeadlineStatus:
    """``overdue`` after the deadline day, ``warning`` from the warning day on, else ``ok``."""
    if today > deadline(accepted_on, limit_days, calendar):
        return "overdue"
    if today >= warning_day(accepted_on, limit_days, calendar, share):
        return "warning"
    return "ok"


# --- file loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarProblem:
    """One thing wrong in a calendar file."""

    key: str  # e.g. "calendar.holidays[2]"; "" for the file as a whole
    message: str
    line: int = 0  # 1-based; 0 when unknown

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.key or '(file)'}: {self.message}"


class CalendarFileError(ValueError):
    """The calendar file is invalid; ``problems`` lists every error found."""

    def __init__(self, source: str, problems: Sequence[CalendarProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(
            f"invalid calendar file {source}:\n"
            + "\n".join("  " + p.render(source) for p in self.problems)
        )

    @property
    def key(self) -> str:
        """The key of the first problem."""
        return self.problems[0].key if self.problems else ""

    @property
    def line(self) -> int:
        """The line of the first problem (0 when unknown)."""
        return self.problems[0].line if self.problems else 0


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.lines = text.splitlines()
        self.source = source
        self.problems: list[CalendarProblem] = []

    def fail(self, key: str, message: str, needle: str | None = None) -> None:
        self.problems.append(CalendarProblem(key, message, self._line_of(key, needle)))

    def _line_of(self, key: str, needle: str | None) -> int:
        """Best-effort line of ``key`` (its last dotted name), or of ``needle`` after it."""
        name = re.sub(r"\[\d+\]", "", key).rsplit(".", 1)[-1]
        if not name:
            return 0
        key_re = re.compile(rf"^\s*(?:calendar\.)?{re.escape(name)}\s*=")
        start = next((i for i, line in enumerate(self.lines) if key_re.match(line)), None)
        if start is None:
            return 0
        if needle:
            for i in range(start, len(self.lines)):
                if needle in self.lines[i].split("#", 1)[0]:
                    return i + 1
        return start + 1

    def date_of(self, key: str, value: Any) -> date | None:
        if isinstance(value, datetime):
            self.fail(key, f"expected a date, got a date-time {value.isoformat()}", str(value)[:10])
            return None
        if isinstance(value, date):
            return value
        if not isinstance(value, str):
            self.fail(key, f'expected a date "YYYY-MM-DD", got {value!r}', str(value))
            return None
        if not _DATE_RE.match(value):
            self.fail(key, f'expected a date "YYYY-MM-DD", got {value!r}', value)
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.fail(key, f"no such date {value!r}", value)
            return None

    def date_list(self, table: dict[str, Any], name: str) -> list[tuple[str, date]]:
        key = f"calendar.{name}"
        raw = table.get(name, [])
        if not isinstance(raw, list):
            self.fail(key, f"expected a list of dates, got {type(raw).__name__}")
            return []
        out = []
        for i, value in enumerate(raw):
            d = self.date_of(f"{key}[{i}]", value)
            if d is not None:
                out.append((f"{key}[{i}]", d))
        return out

    def ranges(self, table: dict[str, Any]) -> list[tuple[str, date]]:
        key = "calendar.holiday_ranges"
        raw = table.get("holiday_ranges", [])
        if not isinstance(raw, list):
            self.fail(key, f"expected a list of [first, last] pairs, got {type(raw).__name__}")
            return []
        out = []
        for i, pair in enumerate(raw):
            k = f"{key}[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                self.fail(k, f"expected a pair [first, last], got {pair!r}")
                continue
            first = self.date_of(f"{k}[0]", pair[0])
            last = self.date_of(f"{k}[1]", pair[1])
            if first is None or last is None:
                continue
            needle = pair[0] if isinstance(pair[0], str) else None
            if last < first:
                self.fail(k, f"range ends ({last}) before it starts ({first})", needle)
                continue
            if (last - first).days + 1 > MAX_RANGE_DAYS:
                self.fail(
                    k,
                    f"range {first}..{last} is {(last - first).days + 1} days long; "
                    f"at most {MAX_RANGE_DAYS} allowed",
                    needle,
                )
                continue
            d = first
            while d <= last:
                out.append((k, d))
                d += _ONE_DAY
        return out

    def load(self) -> WorkCalendar:
        try:
            doc = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+)", str(exc))
            problem = CalendarProblem("", f"not valid TOML: {exc}", int(m.group(1)) if m else 0)
            raise CalendarFileError(self.source, [problem]) from exc
        for top in doc:
            if top != "calendar":
                self.fail(top, "unknown key; the file holds a single [calendar] table")
        table = doc.get("calendar")
        if not isinstance(table, dict):
            self.fail("calendar", "missing [calendar] table")
            raise CalendarFileError(self.source, self.problems)
        for name in table:
            if name not in CALENDAR_KEYS:
                self.fail(
                    f"calendar.{name}", f"unknown key; expected one of {', '.join(CALENDAR_KEYS)}"
                )
        holidays = self.date_list(table, "holidays") + self.ranges(table)
        makeup = self.date_list(table, "makeup_workdays")
        holiday_keys: dict[date, str] = {}
        for k, d in holidays:
            holiday_keys.setdefault(d, k)
        for k, d in makeup:
            needle = d.isoformat()
            if d in holiday_keys:
                self.fail(k, f"{d} is also a holiday ({holiday_keys[d]})", needle)
            elif d.weekday() < 5:
                self.fail(k, f"{d} is a {d:%A}; a make-up workday must be a weekend day", needle)
        if self.problems:
            raise CalendarFileError(self.source, self.problems)
        return WorkCalendar(frozenset(holiday_keys), frozenset(d for _, d in makeup))
