"""Working-day deadlines (限时办结) with holidays and make-up workdays (调休)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xhub.hub.cases.calendar import (
    SAMPLE_CN_2026,
    CalendarFileError,
    WorkCalendar,
    deadline,
    status_on,
    warning_day,
)

PLAIN = WorkCalendar()
CN = WorkCalendar.from_file(SAMPLE_CN_2026)
d = date.fromisoformat


def naive_between(cal: WorkCalendar, start: date, end: date) -> int:
    return sum(cal.is_workday(start + timedelta(days=i)) for i in range(1, (end - start).days + 1))


# --- the calendar itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "workday"),
    [
        ("2026-03-06", True),  # Friday
        ("2026-03-07", False),  # Saturday
        ("2026-03-08", False),  # Sunday
        ("2026-10-01", False),  # 国庆节, Thursday
        ("2026-10-07", False),  # 国庆节, Wednesday
        ("2026-10-08", True),  # back to work
        ("2026-10-10", True),  # make-up Saturday
        ("2026-09-20", True),  # make-up Sunday
        ("2026-02-14", True),  # 春节 make-up Saturday
        ("2026-02-16", False),  # 春节, Monday
        ("2026-01-04", True),  # 元旦 make-up Sunday
        ("2026-06-19", False),  # 端午节, Friday
    ],
)
def test_is_workday_in_the_2026_sample(day: str, workday: bool) -> None:
    assert CN.is_workday(d(day)) is workday


def test_sample_file_contents() -> None:
    assert len(CN.holidays) == 33
    assert sorted(CN.makeup_workdays) == [
        d(x)
        for x in (
            "2026-01-04",
            "2026-02-14",
            "2026-02-28",
            "2026-05-09",
            "2026-09-20",
            "2026-10-10",
        )
    ]
    assert CN.workdays_between(d("2025-12-31"), d("2026-12-31")) == 248


def test_constructor_takes_plain_sets_and_freezes_them() -> None:
    holidays = {d("2026-10-01")}
    cal = WorkCalendar(holidays, set())
    holidays.add(d("2026-10-02"))
    assert cal.holidays == frozenset({d("2026-10-01")})
    assert cal == WorkCalendar(frozenset({d("2026-10-01")}))


@pytest.mark.parametrize(
    ("holidays", "makeup", "error", "match"),
    [
        ({d("2026-10-10")}, {d("2026-10-10")}, ValueError, "both holiday and make-up"),
        (set(), {d("2026-10-09")}, ValueError, "2026-10-09 \\(Friday\\)"),
        ({d("2026-04-04")}, {d("2026-09-20")}, None, None),  # a holiday may fall on a weekend
    ],
)
def test_constructor_checks(
    holidays: set[date], makeup: set[date], error: type[Exception] | None, match: str | None
) -> None:
    if error is None:
        WorkCalendar(holidays, makeup)
    else:
        with pytest.raises(error, match=match):
            WorkCalendar(holidays, makeup)


def test_datetimes_are_refused() -> None:
    with pytest.raises(TypeError, match=r"datetime\.date"):
        WorkCalendar({datetime(2026, 10, 1)})


def test_add_workdays_basics() -> None:
    fri = d("2026-03-06")
    assert PLAIN.add_workdays(fri, 0) == fri
    assert PLAIN.add_workdays(fri, 1) == d("2026-03-09")  # Monday
    assert PLAIN.add_workdays(d("2026-03-07"), 1) == d("2026-03-09")  # from a Saturday
    assert PLAIN.add_workdays(fri, 5) == d("2026-03-13")
    with pytest.raises(ValueError, match=">= 0"):
        PLAIN.add_workdays(fri, -1)


def test_workdays_between_is_antisymmetric() -> None:
    a, b = d("2026-09-18"), d("2026-10-12")
    # 9-20 Sun (make-up), 9-21..24, 9-28..30, 10-08, 10-09, 10-10 Sat (make-up), 10-12
    assert CN.workdays_between(a, b) == 12
    assert CN.workdays_between(b, a) == -12
    assert CN.workdays_between(a, a) == 0


# --- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calendar", "accepted", "limit", "expected"),
    [
        # across a weekend: Friday + 1 → Monday; + 3 → Wednesday
        (PLAIN, "2026-03-06", 1, "2026-03-09"),
        (PLAIN, "2026-03-06", 3, "2026-03-11"),
        (PLAIN, "2026-03-04", 5, "2026-03-11"),
        # accepted on a Saturday: counting starts on Monday
        (PLAIN, "2026-03-07", 1, "2026-03-09"),
        # across National Day with its make-up Saturday 10-10:
        # 9-30 (1), 10-01..07 off, 10-08 (2), 10-09 (3), 10-10 Sat (4), 10-12 Mon (5)
        (CN, "2026-09-29", 5, "2026-10-12"),
        (PLAIN, "2026-09-29", 5, "2026-10-06"),
        # Mid-Autumn Fri 9-25 off, make-up Sunday 9-20 counts
        (CN, "2026-09-18", 3, "2026-09-22"),
        (CN, "2026-09-18", 10, "2026-10-09"),
        # across the Spring Festival: 2-14 Sat worked, 2-15..23 off
        (CN, "2026-02-13", 1, "2026-02-14"),
        (CN, "2026-02-13", 2, "2026-02-24"),
        (CN, "2026-02-12", 20, "2026-03-18"),
    ],
)
def test_deadline(calendar: WorkCalendar, accepted: str, limit: int, expected: str) -> None:
    assert deadline(d(accepted), limit, calendar) == d(expected)
    assert calendar.is_workday(d(expected))
    assert calendar.workdays_between(d(accepted), d(expected)) == limit


@pytest.mark.parametrize("limit", [0, -1, -20, True, 2.5])
def test_zero_and_negative_limits_are_rejected(limit: int) -> None:
    with pytest.raises(ValueError, match="time limit"):
        deadline(d("2026-03-06"), limit, PLAIN)
    with pytest.raises(ValueError, match="time limit"):
        warning_day(d("2026-03-06"), limit, PLAIN)
    with pytest.raises(ValueError, match="time limit"):
        status_on(d("2026-03-06"), d("2026-03-06"), limit, PLAIN)


@pytest.mark.parametrize(
    ("accepted", "limit", "share", "expected_k"),
    [
        ("2026-03-02", 10, 0.8, 8),
        ("2026-03-02", 20, 0.8, 16),
        ("2026-03-02", 5, 0.8, 4),
        ("2026-03-02", 3, 0.8, 3),  # ceil(2.4) = 3 = the deadline
        ("2026-03-02", 1, 0.8, 1),
        ("2026-03-02", 10, 0.7, 7),  # decimal share: not ceil(7.000000000000001)
        ("2026-03-02", 30, 0.1, 3),
        ("2026-03-02", 10, 1.0, 10),
        ("2026-03-02", 10, 0.01, 1),  # at least one working day
    ],
)
def test_warning_day(accepted: str, limit: int, share: float, expected_k: int) -> None:
    start = d(accepted)
    assert warning_day(start, limit, CN, share) == CN.add_workdays(start, expected_k)


def test_warning_day_at_80_percent_across_national_day() -> None:
    # accepted 9-29, limit 10: 9-30(1) 10-08(2) 10-09(3) 10-10(4) 10-12(5) ... 10-15(8) 10-16(9)
    # 10-19(10)
    assert warning_day(d("2026-09-29"), 10, CN) == d("2026-10-15")
    assert deadline(d("2026-09-29"), 10, CN) == d("2026-10-19")


@pytest.mark.parametrize("share", [0, -0.5, 1.01, 2])
def test_bad_share_is_rejected(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        warning_day(d("2026-03-02"), 10, PLAIN, share)


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        # accepted 2026-09-29, 10 working days: warning from 10-15, deadline 10-19
        ("2026-09-20", "ok"),  # before acceptance (bad data) is not late
        ("2026-09-29", "ok"),
        ("2026-10-07", "ok"),
        ("2026-10-14", "ok"),
        ("2026-10-15", "warning"),
        ("2026-10-17", "warning"),  # a Saturday between warning day and deadline
        ("2026-10-19", "warning"),  # the deadline day itself is still in time
        ("2026-10-20", "overdue"),
        ("2027-01-01", "overdue"),
    ],
)
def test_status_on(today: str, expected: str) -> None:
    assert status_on(d(today), d("2026-09-29"), 10, CN) == expected


def test_status_on_with_another_share() -> None:
    accepted = d("2026-03-02")  # Monday; 10 days → 03-16, half → 03-09
    assert status_on(d("2026-03-06"), accepted, 10, PLAIN, share=0.5) == "ok"
    assert status_on(d("2026-03-09"), accepted, 10, PLAIN, share=0.5) == "warning"
    assert status_on(d("2026-03-16"), accepted, 10, PLAIN, share=0.5) == "warning"
    assert status_on(d("2026-03-17"), accepted, 10, PLAIN, share=0.5) == "overdue"


# --- loading ------------------------------------------------------------------------------------


def test_from_toml_all_three_forms_and_bare_dates() -> None:
    cal = WorkCalendar.from_toml(
        """
        [calendar]
        holidays = ["2026-01-01", 2026-01-02]
        holiday_ranges = [["2026-10-01", "2026-10-03"], [2026-10-05, 2026-10-05]]
        makeup_workdays = ["2026-10-10"]
        """
    )
    assert cal.holidays == {
        d("2026-01-01"),
        d("2026-01-02"),
        d("2026-10-01"),
        d("2026-10-02"),
        d("2026-10-03"),
        d("2026-10-05"),
    }
    assert cal.makeup_workdays == {d("2026-10-10")}


def test_from_toml_empty_calendar_is_plain_weekdays() -> None:
    assert WorkCalendar.from_toml("[calendar]\n") == PLAIN


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "cal.toml"
    path.write_text('[calendar]\nholidays = ["2026-13-01"]\n', encoding="utf-8")
    with pytest.raises(CalendarFileError) as info:
        WorkCalendar.from_file(path)
    assert str(path) in str(info.value)
    assert f"{path}:2: calendar.holidays[0]: no such date '2026-13-01'" in str(info.value)


BAD_FILES = [
    # (text, key of the first problem, its line, fragment of its message)
    (
        '[calendar]\nholidays = [\n  "2026-10-01",\n  "2026-02-30",\n]\n',
        "calendar.holidays[1]",
        4,
        "no such date '2026-02-30'",
    ),
    (
        '[calendar]\nholidays = ["2026/10/01"]\n',
        "calendar.holidays[0]",
        2,
        "expected a date \"YYYY-MM-DD\", got '2026/10/01'",
    ),
    (
        '[calendar]\nholidays = ["20261001"]\n',
        "calendar.holidays[0]",
        2,
        "expected a date",
    ),
    ("[calendar]\nholidays = [20261001]\n", "calendar.holidays[0]", 2, "got 20261001"),
    ("[calendar]\nholidays = [2026-10-01T08:00:00]\n", "calendar.holidays[0]", 2, "date-time"),
    ('[calendar]\nholidays = "2026-10-01"\n', "calendar.holidays", 2, "expected a list"),
    (
        '[calendar]\nmakeup_workdays = ["2026-10-10"]\n\nholiday_ranges = [\n'
        '  ["2026-10-01", "2026-10-0x"],\n]\n',
        "calendar.holiday_ranges[0][1]",
        5,
        "'2026-10-0x'",
    ),
    (
        '[calendar]\nholiday_ranges = [["2026-10-07", "2026-10-01"]]\n',
        "calendar.holiday_ranges[0]",
        2,
        "ends (2026-10-01) before it starts (2026-10-07)",
    ),
    (
        '[calendar]\nholiday_ranges = [["2026-10-01", "2027-10-07"]]\n',
        "calendar.holiday_ranges[0]",
        2,
        "at most 31 allowed",
    ),
    (
        '[calendar]\nholiday_ranges = [["2026-10-01"]]\n',
        "calendar.holiday_ranges[0]",
        2,
        "expected a pair",
    ),
    (
        '[calendar]\nholiday_ranges = [["2026-10-01", "2026-10-07"]]\n'
        'makeup_workdays = ["2026-09-20", "2026-10-03"]\n',
        "calendar.makeup_workdays[1]",
        3,
        "2026-10-03 is also a holiday (calendar.holiday_ranges[0])",
    ),
    (
        '[calendar]\nmakeup_workdays = ["2026-10-09"]\n',
        "calendar.makeup_workdays[0]",
        2,
        "2026-10-09 is a Friday",
    ),
    ('[calendar]\nholiday = ["2026-10-01"]\n', "calendar.holiday", 2, "unknown key"),
    ('holidays = ["2026-10-01"]\n', "holidays", 1, "unknown key"),
    ("[holidays]\n", "holidays", 0, "unknown key"),
    ("", "calendar", 0, "missing [calendar] table"),
    ('[calendar]\nholidays = [\n  "2026-10-01" "2026-10-02"]\n', "", 3, "not valid TOML"),
    ("[calendar]\nholidays = [\n", "", 0, "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key", "line", "message"), BAD_FILES)
def test_bad_files_name_the_key_and_line(text: str, key: str, line: int, message: str) -> None:
    with pytest.raises(CalendarFileError) as info:
        WorkCalendar.from_toml(text, source="cal.toml")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.key, err.line) == (key, line), str(err)
    assert message in err.problems[0].message
    assert str(err).startswith("invalid calendar file cal.toml:")


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "[calendar]\n"
        'holidays = ["2026-10-01", "bad", "2026-02-30"]\n'
        'makeup_workdays = ["2026-10-01", "2026-10-09"]\n'
        "extra = 1\n"
    )
    with pytest.raises(CalendarFileError) as info:
        WorkCalendar.from_toml(text, source="cal.toml")
    rendered = str(info.value).splitlines()[1:]
    assert [line.strip() for line in rendered] == [
        "cal.toml:4: calendar.extra: unknown key; expected one of holidays, holiday_ranges, "
        "makeup_workdays",
        "cal.toml:2: calendar.holidays[1]: expected a date \"YYYY-MM-DD\", got 'bad'",
        "cal.toml:2: calendar.holidays[2]: no such date '2026-02-30'",
        "cal.toml:3: calendar.makeup_workdays[0]: 2026-10-01 is also a holiday "
        "(calendar.holidays[0])",
        "cal.toml:3: calendar.makeup_workdays[1]: 2026-10-09 is a Friday; a make-up workday "
        "must be a weekend day",
    ]


# --- properties ---------------------------------------------------------------------------------

DAYS = st.dates(min_value=date(2025, 6, 1), max_value=date(2027, 6, 30))


@st.composite
def calendars(draw: st.DrawFn) -> WorkCalendar:
    holidays = draw(st.sets(DAYS, max_size=60))
    weekends = DAYS.filter(lambda x: x.weekday() >= 5 and x not in holidays)
    makeup = draw(st.sets(weekends, max_size=10))
    return WorkCalendar(holidays, makeup)


@given(cal=st.one_of(st.just(CN), st.just(PLAIN), calendars()), start=DAYS, n=st.integers(1, 400))
def test_add_workdays_lands_on_a_workday_n_workdays_on(
    cal: WorkCalendar, start: date, n: int
) -> None:
    end = cal.add_workdays(start, n)
    assert cal.is_workday(end)
    assert end > start
    assert cal.workdays_between(start, end) == n
    assert cal.workdays_between(start, end - timedelta(days=1)) == n - 1


@given(cal=st.one_of(st.just(CN), calendars()), a=DAYS, b=DAYS)
def test_workdays_between_matches_counting_day_by_day(cal: WorkCalendar, a: date, b: date) -> None:
    start, end = min(a, b), max(a, b)
    assert cal.workdays_between(start, end) == naive_between(cal, start, end)
    assert cal.workdays_between(end, start) == -naive_between(cal, start, end)


@given(start=DAYS, limit=st.integers(1, 200), share=st.sampled_from([0.5, 0.6, 0.75, 0.8, 0.9]))
def test_warning_day_is_never_after_the_deadline(start: date, limit: int, share: float) -> None:
    warn = warning_day(start, limit, CN, share)
    due = deadline(start, limit, CN)
    assert start < warn <= due
    assert CN.workdays_between(start, warn) >= share * limit - 1e-9
    assert status_on(warn, start, limit, CN, share) == "warning"
    assert status_on(due + timedelta(days=1), start, limit, CN, share) == "overdue"
