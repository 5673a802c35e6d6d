"""The per-department case stage machine (收件 → 受理 → 审核 → 审批 → 办结 → 出件)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from xhub.protocol.stages import (
    FINAL_STAGES,
    TRANSITIONS,
    Actor,
    IllegalTransition,
    Stage,
    allowed_next,
    is_final,
    next_stage,
    overall_status,
)

S = Stage
D, P = Actor.DEPARTMENT, Actor.PLATFORM
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SOON = T0 + timedelta(minutes=5)
LATE = T0 + timedelta(hours=2)

# The specification, written out independently of the module's own table.
LEGAL: dict[tuple[Stage, Stage], Actor] = {
    (S.SUBMITTED, S.ACCEPTED): D,
    (S.SUBMITTED, S.NOT_ACCEPTED): D,
    (S.SUBMITTED, S.SUPPLEMENT_REQUIRED): D,
    (S.SUBMITTED, S.WITHDRAWN): P,
    (S.SUPPLEMENT_REQUIRED, S.SUBMITTED): P,
    (S.SUPPLEMENT_REQUIRED, S.WITHDRAWN): P,
    (S.ACCEPTED, S.UNDER_REVIEW): D,
    (S.ACCEPTED, S.SUPPLEMENT_REQUIRED): D,
    (S.ACCEPTED, S.WITHDRAWN): P,
    (S.UNDER_REVIEW, S.APPROVED): D,
    (S.UNDER_REVIEW, S.REJECTED): D,
    (S.UNDER_REVIEW, S.SUPPLEMENT_REQUIRED): D,
    (S.UNDER_REVIEW, S.WITHDRAWN): P,
    (S.APPROVED, S.COMPLETED): D,
    (S.COMPLETED, S.DELIVERED): D,
}
FINAL = {S.NOT_ACCEPTED, S.REJECTED, S.DELIVERED, S.WITHDRAWN}
OTHER = {D: P, P: D}


def step(current: Stage, proposed: Stage, actor: Actor, now: datetime = SOON) -> Stage:
    return next_stage(current, proposed, actor, submitted_at=T0, now=now)


def test_stage_values_match_the_proto_order() -> None:
    assert [(s.name, int(s), s.zh) for s in Stage] == [
        ("SUBMITTED", 1, "收件"),
        ("ACCEPTED", 2, "受理"),
        ("NOT_ACCEPTED", 3, "不予受理"),
        ("UNDER_REVIEW", 4, "审核"),
        ("SUPPLEMENT_REQUIRED", 5, "补正"),
        ("APPROVED", 6, "审批通过"),
        ("REJECTED", 7, "不予许可"),
        ("COMPLETED", 8, "办结"),
        ("DELIVERED", 9, "出件"),
        ("WITHDRAWN", 10, "撤回"),
    ]
    assert S.ACCEPTED.label == "ACCEPTED 受理"


def test_module_table_matches_the_specification() -> None:
    flat = {(c, n): a for c, nexts in TRANSITIONS.items() for n, a in nexts.items()}
    assert flat == LEGAL
    assert set(FINAL_STAGES) == FINAL
    assert {s for s in Stage if is_final(s)} == FINAL
    assert all(allowed_next(s) == {} for s in FINAL)


@pytest.mark.parametrize(("current", "proposed"), sorted(LEGAL), ids=lambda s: s.name)
def test_legal_transition_by_the_right_actor(current: Stage, proposed: Stage) -> None:
    assert step(current, proposed, LEGAL[current, proposed]) is proposed


@pytest.mark.parametrize(("current", "proposed"), sorted(LEGAL), ids=lambda s: s.name)
def test_legal_transition_by_the_wrong_actor(current: Stage, proposed: Stage) -> None:
    wrong = OTHER[LEGAL[current, proposed]]
    with pytest.raises(IllegalTransition) as info:
        step(current, proposed, wrong)
    err = info.value
    assert err.reason == "NOT_YOUR_TRANSITION"
    assert err.current is current and err.proposed is proposed and err.actor is wrong
    assert str(err).startswith(f"case is at {current.label};")
    assert LEGAL[current, proposed].value in str(err)


ILLEGAL = [
    (c, n, a)
    for c, n, a in itertools.product(Stage, Stage, Actor)
    if c not in FINAL and (c, n) not in LEGAL
]


@pytest.mark.parametrize(("current", "proposed", "actor"), ILLEGAL, ids=lambda s: s.name)
def test_illegal_transition_names_the_current_stage(
    current: Stage, proposed: Stage, actor: Actor
) -> None:
    with pytest.raises(IllegalTransition) as info:
        step(current, proposed, actor)
    err = info.value
    assert err.reason == "ILLEGAL_TRANSITION"
    assert err.current is current
    assert isinstance(err, ValueError)
    message = str(err)
    assert message.startswith(f"case is at {current.label};")
    assert f"{current.name}→{proposed.name}" in message
    for allowed in allowed_next(current):
        assert allowed.label in message


@pytest.mark.parametrize(
    ("current", "proposed", "actor"),
    list(itertools.product(sorted(FINAL), Stage, Actor)),
    ids=lambda s: s.name,
)
def test_final_stages_refuse_everything(current: Stage, proposed: Stage, actor: Actor) -> None:
    with pytest.raises(IllegalTransition) as info:
        step(current, proposed, actor)
    assert info.value.reason == "FINAL_STAGE"
    assert info.value.current is current
    assert str(info.value).startswith(f"case is at {current.label};")


WINDOW = timedelta(minutes=30)


@pytest.mark.parametrize(
    ("current", "elapsed", "window", "allowed"),
    [
        # before acceptance: any time
        (S.SUBMITTED, timedelta(0), WINDOW, True),
        (S.SUBMITTED, timedelta(days=40), WINDOW, True),
        (S.SUPPLEMENT_REQUIRED, timedelta(days=40), WINDOW, True),
        # after acceptance: only within the window, inclusive
        (S.ACCEPTED, timedelta(minutes=29), WINDOW, True),
        (S.ACCEPTED, WINDOW, WINDOW, True),
        (S.ACCEPTED, WINDOW + timedelta(seconds=1), WINDOW, False),
        (S.UNDER_REVIEW, timedelta(minutes=10), WINDOW, True),
        (S.UNDER_REVIEW, timedelta(hours=3), WINDOW, False),
        # the window is configurable
        (S.ACCEPTED, timedelta(hours=3), timedelta(hours=4), True),
        (S.UNDER_REVIEW, timedelta(minutes=10), timedelta(minutes=5), False),
        (S.ACCEPTED, timedelta(seconds=1), timedelta(0), False),
    ],
)
def test_withdraw_window(
    current: Stage, elapsed: timedelta, window: timedelta, allowed: bool
) -> None:
    def withdraw() -> Stage:
        return next_stage(
            current, S.WITHDRAWN, P, submitted_at=T0, now=T0 + elapsed, withdraw_window=window
        )

    if allowed:
        assert withdraw() is S.WITHDRAWN
    else:
        with pytest.raises(IllegalTransition) as info:
            withdraw()
        assert info.value.reason == "WITHDRAW_WINDOW_CLOSED"
        assert info.value.current is current
        assert str(info.value).startswith(f"case is at {current.label};")


def test_default_window_is_30_minutes() -> None:
    assert step(S.ACCEPTED, S.WITHDRAWN, P, now=T0 + timedelta(minutes=30)) is S.WITHDRAWN
    with pytest.raises(IllegalTransition, match="within 30 min of submission"):
        step(S.ACCEPTED, S.WITHDRAWN, P, now=T0 + timedelta(minutes=31))


def test_platform_cannot_approve() -> None:
    with pytest.raises(IllegalTransition) as info:
        step(S.UNDER_REVIEW, S.APPROVED, P)
    assert info.value.reason == "NOT_YOUR_TRANSITION"
    assert str(info.value) == (
        "case is at UNDER_REVIEW 审核; UNDER_REVIEW→APPROVED may be reported only by the "
        "department, not by the platform"
    )


@pytest.mark.parametrize("current", [S.SUBMITTED, S.SUPPLEMENT_REQUIRED, S.ACCEPTED])
def test_department_cannot_withdraw(current: Stage) -> None:
    with pytest.raises(IllegalTransition) as info:
        step(current, S.WITHDRAWN, D)
    assert info.value.reason == "NOT_YOUR_TRANSITION"


def test_department_cannot_resubmit_for_the_applicant() -> None:
    with pytest.raises(IllegalTransition) as info:
        step(S.SUPPLEMENT_REQUIRED, S.SUBMITTED, D)
    assert info.value.reason == "NOT_YOUR_TRANSITION"


def test_wrong_actor_on_late_withdrawal_is_reported_as_wrong_actor() -> None:
    with pytest.raises(IllegalTransition) as info:
        step(S.ACCEPTED, S.WITHDRAWN, D, now=LATE)
    assert info.value.reason == "NOT_YOUR_TRANSITION"


def test_illegal_message_example() -> None:
    with pytest.raises(IllegalTransition) as info:
        step(S.ACCEPTED, S.APPROVED, D)
    assert str(info.value) == (
        "case is at ACCEPTED 受理; ACCEPTED→APPROVED is not a legal transition (from ACCEPTED "
        "the case may go to: UNDER_REVIEW 审核, SUPPLEMENT_REQUIRED 补正, WITHDRAWN 撤回)"
    )


def test_full_happy_path_with_a_supplement_round() -> None:
    path = [
        (S.SUPPLEMENT_REQUIRED, D),
        (S.SUBMITTED, P),
        (S.ACCEPTED, D),
        (S.UNDER_REVIEW, D),
        (S.APPROVED, D),
        (S.COMPLETED, D),
        (S.DELIVERED, D),
    ]
    stage = S.SUBMITTED
    for proposed, actor in path:
        stage = step(stage, proposed, actor, now=LATE)
    assert stage is S.DELIVERED and is_final(stage)


def test_plain_ints_are_accepted_as_stages() -> None:
    assert step(1, 2, D) is S.ACCEPTED  # type: ignore[arg-type]


def test_mixed_naive_and_aware_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_stage(S.ACCEPTED, S.WITHDRAWN, P, submitted_at=T0, now=datetime(2026, 3, 2, 9, 5))


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        next_stage(
            S.ACCEPTED,
            S.WITHDRAWN,
            P,
            submitted_at=T0,
            now=SOON,
            withdraw_window=timedelta(minutes=-1),
        )


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        # one department: its own stage
        *[((s,), s) for s in Stage],
        # two departments
        ((S.SUBMITTED, S.ACCEPTED), S.SUBMITTED),
        ((S.ACCEPTED, S.UNDER_REVIEW), S.ACCEPTED),
        ((S.APPROVED, S.UNDER_REVIEW), S.UNDER_REVIEW),
        ((S.COMPLETED, S.DELIVERED), S.COMPLETED),
        ((S.DELIVERED, S.DELIVERED), S.DELIVERED),
        ((S.DELIVERED, S.WITHDRAWN), S.WITHDRAWN),
        ((S.DELIVERED, S.REJECTED), S.REJECTED),
        ((S.APPROVED, S.NOT_ACCEPTED), S.NOT_ACCEPTED),
        ((S.SUPPLEMENT_REQUIRED, S.APPROVED), S.SUPPLEMENT_REQUIRED),
        ((S.SUPPLEMENT_REQUIRED, S.REJECTED), S.REJECTED),
        # three departments
        ((S.DELIVERED, S.DELIVERED, S.DELIVERED), S.DELIVERED),
        ((S.DELIVERED, S.COMPLETED, S.APPROVED), S.APPROVED),
        ((S.UNDER_REVIEW, S.SUBMITTED, S.DELIVERED), S.SUBMITTED),
        ((S.SUPPLEMENT_REQUIRED, S.UNDER_REVIEW, S.DELIVERED), S.SUPPLEMENT_REQUIRED),
        ((S.NOT_ACCEPTED, S.REJECTED, S.APPROVED), S.REJECTED),
        ((S.NOT_ACCEPTED, S.SUPPLEMENT_REQUIRED, S.ACCEPTED), S.NOT_ACCEPTED),
        ((S.REJECTED, S.WITHDRAWN, S.NOT_ACCEPTED), S.WITHDRAWN),
        ((S.SUBMITTED, S.SUBMITTED, S.SUBMITTED), S.SUBMITTED),
    ],
    ids=lambda v: "+".join(s.name for s in v) if isinstance(v, tuple) else v.name,
)
def test_overall_status(stages: tuple[Stage, ...], expected: Stage) -> None:
    assert overall_status(stages) is expected
    assert overall_status(reversed(stages)) is expected  # order of departments is irrelevant
    assert overall_status(iter(stages)) is expected  # any iterable


def test_overall_status_needs_a_department() -> None:
    with pytest.raises(ValueError, match="at least one"):
        overall_status([])
