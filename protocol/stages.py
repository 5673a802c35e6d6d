"""The stage machine of a case (办件) at one handling department.

Kept free of I/O and clocks (times are arguments) so the dispatch service, the
connectors and the tests all apply exactly the same rules, and a refusal can
always name the stage the case is really at (DESIGN §5).

Transitions and who may cause them::

    SUBMITTED 收件            → ACCEPTED | NOT_ACCEPTED | SUPPLEMENT_REQUIRED   (department)
                              → WITHDRAWN                                      (platform)
    SUPPLEMENT_REQUIRED 补正  → SUBMITTED  (the platform resubmits the missing items)
                              → WITHDRAWN                                      (platform)
    ACCEPTED 受理             → UNDER_REVIEW | SUPPLEMENT_REQUIRED              (department)
                              → WITHDRAWN, within the window only               (platform)
    UNDER_REVIEW 审核         → APPROVED | REJECTED | SUPPLEMENT_REQUIRED       (department)
                              → WITHDRAWN, within the window only               (platform)
    APPROVED 审批通过         → COMPLETED                                       (department)
    COMPLETED 办结            → DELIVERED                                       (department)
    final: NOT_ACCEPTED 不予受理, REJECTED 不予许可, DELIVERED 出件, WITHDRAWN 撤回

Withdrawal (撤回) is free while the case waits for (re)acceptance — at
SUBMITTED and at SUPPLEMENT_REQUIRED, since a supplemented case goes back to
SUBMITTED and must be accepted again. Once a department holds an accepted case
(ACCEPTED, UNDER_REVIEW) it may be withdrawn only within ``withdraw_window`` of
submission, so work already started is not thrown away late.

A repeated event (same stage twice) is *not* a transition here: it is refused
as ILLEGAL_TRANSITION; duplicates are absorbed earlier by event ids.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "DEFAULT_WITHDRAW_WINDOW",
    "FINAL_STAGES",
    "TRANSITIONS",
    "WINDOWED_WITHDRAW_STAGES",
    "Actor",
    "IllegalTransition",
    "Reason",
    "Stage",
    "allowed_next",
    "is_final",
    "next_stage",
    "overall_status",
]


class Stage(enum.IntEnum):
    """Stage of a case at one department; values match the proto enum to come."""

    SUBMITTED = 1  # 收件
    ACCEPTED = 2  # 受理
    NOT_ACCEPTED = 3  # 不予受理
    UNDER_REVIEW = 4  # 审核
    SUPPLEMENT_REQUIRED = 5  # 补正
    APPROVED = 6  # 审批通过
    REJECTED = 7  # 不予许可
    COMPLETED = 8  # 办结
    DELIVERED = 9  # 出件
    WITHDRAWN = 10  # 撤回

    @property
    def zh(self) -> str:
        """The Chinese term used on the one-window forms."""
        return _ZH[self]

    @property
    def label(self) -> str:
        """``NAME 中文``, as used in error messages and logs."""
        return f"{self.name} {_ZH[self]}"


_ZH: Final[Mapping[Stage, str]] = MappingProxyType(
    {
        Stage.SUBMITTED: "收件",
        Stage.ACCEPTED: "受理",
        Stage.NOT_ACCEPTED: "不予受理",
        Stage.UNDER_REVIEW: "审核",
        Stage.SUPPLEMENT_REQUIRED: "补正",
        Stage.APPROVED: "审批通过",
        Stage.REJECTED: "不予许可",
        Stage.COMPLETED: "办结",
        Stage.DELIVERED: "出件",
        Stage.WITHDRAWN: "撤回",
    }
)


class Actor(enum.Enum):
    """Who reports a status event: the handling department or the platform (窗口平台)."""

    DEPARTMENT = "department"
    PLATFORM = "platform"


_D, _P = Actor.DEPARTMENT, Actor.PLATFORM

TRANSITIONS: Final[Mapping[Stage, Mapping[Stage, Actor]]] = MappingProxyType(
    {
        Stage.SUBMITTED: MappingProxyType(
            {
                Stage.ACCEPTED: _D,
                Stage.NOT_ACCEPTED: _D,
                Stage.SUPPLEMENT_REQUIRED: _D,
                Stage.WITHDRAWN: _P,
            }
        ),
        Stage.SUPPLEMENT_REQUIRED: MappingProxyType({Stage.SUBMITTED: _P, Stage.WITHDRAWN: _P}),
        Stage.ACCEPTED: MappingProxyType(
            {Stage.UNDER_REVIEW: _D, Stage.SUPPLEMENT_REQUIRED: _D, Stage.WITHDRAWN: _P}
        ),
        Stage.UNDER_REVIEW: MappingProxyType(
            {
                Stage.APPROVED: _D,
                Stage.REJECTED: _D,
                Stage.SUPPLEMENT_REQUIRED: _D,
                Stage.WITHDRAWN: _P,
            }
        ),
        Stage.APPROVED: MappingProxyType({Stage.COMPLETED: _D}),
        Stage.COMPLETED: MappingProxyType({Stage.DELIVERED: _D}),
    }
)
"""current stage → {next stage: the only actor who may cause it}."""

FINAL_STAGES: Final = frozenset(
    {Stage.NOT_ACCEPTED, Stage.REJECTED, Stage.DELIVERED, Stage.WITHDRAWN}
)
WINDOWED_WITHDRAW_STAGES: Final = frozenset({Stage.ACCEPTED, Stage.UNDER_REVIEW})
"""Stages after acceptance, where withdrawal is bounded by the window."""

DEFAULT_WITHDRAW_WINDOW: Final = timedelta(minutes=30)

Reason = Literal[
    "ILLEGAL_TRANSITION", "NOT_YOUR_TRANSITION", "WITHDRAW_WINDOW_CLOSED", "FINAL_STAGE"
]


class IllegalTransition(ValueError):
    """A refused status event; ``reason`` is stable for machines, the message for people."""

    def __init__(
        self, message: str, *, current: Stage, proposed: Stage, actor: Actor, reason: Reason
    ) -> None:
        super().__init__(message)
        self.current = current
        self.proposed = proposed
        self.actor = actor
        self.reason: Reason = reason


def is_final(stage: Stage) -> bool:
    """Whether no event can move the case on from ``stage``."""
    return stage in FINAL_STAGES


def allowed_next(current: Stage) -> Mapping[Stage, Actor]:
    """The stages reachable from ``current`` and who may cause each (empty when final)."""
    return TRANSITIONS.get(current, MappingProxyType({}))


def _fmt_window(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return str(window)


def next_stage(
    current: Stage,
    proposed: Stage,
    actor: Actor,
    *,
    submitted_at: datetime,
    now: datetime,
    withdraw_window: timedelta = DEFAULT_WITHDRAW_WINDOW,
) -> Stage:
    """Return ``proposed`` if ``actor`` may move the case there now, else raise.

    ``submitted_at`` is when the case was first submitted (收件) and ``now`` the
    time of the event; both aware or both naive. The window is inclusive: a
    withdrawal exactly ``withdraw_window`` after submission is still accepted.
    Checks run in a fixed order so the reason is predictable: FINAL_STAGE,
    ILLEGAL_TRANSITION, NOT_YOUR_TRANSITION, WITHDRAW_WINDOW_CLOSED.
    """
    current, proposed = Stage(current), Stage(proposed)
    if (submitted_at.tzinfo is None) != (now.tzinfo is None):
        raise ValueError("submitted_at and now must both be timezone-aware or both naive")
    if withdraw_window < timedelta(0):
        raise ValueError(f"withdraw_window must not be negative, got {withdraw_window}")

    def refuse(reason: Reason, detail: str) -> IllegalTransition:
        return IllegalTransition(
            f"case is at {current.label}; {detail}",
            current=current,
            proposed=proposed,
            actor=actor,
            reason=reason,
        )

    if is_final(current):
        raise refuse(
            "FINAL_STAGE",
            f"{current.name} is a final stage, no move to {proposed.label} is possible",
        )
    options = allowed_next(current)
    allowed_by = options.get(proposed)
    if allowed_by is None:
        listed = ", ".join(s.label for s in options)
        raise refuse(
            "ILLEGAL_TRANSITION",
            f"{current.name}→{proposed.name} is not a legal transition (from "
            f"{current.name} the case may go to: {listed})",
        )
    if actor is not allowed_by:
        raise refuse(
            "NOT_YOUR_TRANSITION",
            f"{current.name}→{proposed.name} may be reported only by the "
            f"{allowed_by.value}, not by the {actor.value}",
        )
    if (
        proposed is Stage.WITHDRAWN
        and current in WINDOWED_WITHDRAW_STAGES
        and now - submitted_at > withdraw_window
    ):
        raise refuse(
            "WITHDRAW_WINDOW_CLOSED",
            f"after acceptance a case may be withdrawn only within "
            f"{_fmt_window(withdraw_window)} of submission (submitted "
            f"{submitted_at.isoformat()}, now {now.isoformat()})",
        )
    return proposed


_PROGRESS: Final = (
    Stage.SUBMITTED,
    Stage.ACCEPTED,
    Stage.UNDER_REVIEW,
    Stage.APPROVED,
    Stage.COMPLETED,
    Stage.DELIVERED,
)


def overall_status(stages: Iterable[Stage]) -> Stage:
    """The status of a case handled by several departments in parallel (并联审批).

    The applicant sees one status, so the first rule that applies wins:

    1. WITHDRAWN 撤回 if any department's copy is withdrawn (withdrawal is case-wide);
    2. REJECTED 不予许可 if any department refused the permit, else NOT_ACCEPTED
       不予受理 if any refused to accept — one refusal sinks the joint case,
       and a refusal after examination is the more informative one;
    3. SUPPLEMENT_REQUIRED 补正 if any department asks for more material, since
       the applicant must act before the case can move on;
    4. otherwise the least advanced stage along SUBMITTED → ACCEPTED →
       UNDER_REVIEW → APPROVED → COMPLETED → DELIVERED, so the case is
       DELIVERED 出件 only when every department has delivered.
    """
    present = {Stage(s) for s in stages}
    if not present:
        raise ValueError("overall_status needs the stage of at least one department")
    for decisive in (
        Stage.WITHDRAWN,
        Stage.REJECTED,
        Stage.NOT_ACCEPTED,
        Stage.SUPPLEMENT_REQUIRED,
    ):
        if decisive in present:
            return decisive
    return min(present, key=_PROGRESS.index)
