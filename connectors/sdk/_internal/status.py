"""Offline checks of status events (状态事件) against their originators' signed messages.

A platform's status stream is the hub's report; each event carries the originator's own
signed message (``StatusEvent.origin``): the department's ``StatusPush``, or this
platform's own ``CaseWithdrawal`` / ``CaseResubmission``. ``verify_status_event`` checks
every reported field against it; ``PushSequences`` checks that no department push between
two delivered ones went missing (the numbers are inside the department's signed bytes).
Pure: the client fetches the signers' member records first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from xhub.connectors.sdk._internal.verify import TrustedMembers, open_member_message
from xhub.protocol.envelope import payload_type_of
from xhub.protocol.errors import BadResponseError
from xhub.v1 import case_pb2

_PUSH = payload_type_of(case_pb2.StatusPush)
_WITHDRAWAL = payload_type_of(case_pb2.CaseWithdrawal)
_RESUBMISSION = payload_type_of(case_pb2.CaseResubmission)


@dataclass(frozen=True)
class CheckedEvent:
    """A status event whose fields are its originator's; ``push`` is the department's
    signed push (None for this platform's own withdrawal or resubmission)."""

    event: case_pb2.StatusEvent
    push: case_pb2.StatusPush | None


def signers_to_fetch(event: case_pb2.StatusEvent, platform: str) -> set[str]:
    """Whose keys checking ``event`` needs: the department for its push, else ourselves."""
    return {event.department if event.origin.payload_type == _PUSH else platform}


def _compare(what: str, fields: Mapping[str, tuple[object, object]]) -> None:
    for name, (hub, signed) in fields.items():
        if hub != signed:
            raise BadResponseError(
                f"{what}: {name} differs from the signed message inside it: "
                f"hub {hub!r}, signed {signed!r}"
            )


def verify_status_event(
    event: case_pb2.StatusEvent, members: TrustedMembers, *, platform: str, hub_id: str
) -> CheckedEvent:
    """A status event of ``platform``'s case, checked against the signed message inside it.

    1. A department's push: signed by the department the event names (a registered key
       of that member), sent to this hub; case number, stage, event id, note, missing
       items and certificate identifier are the push's.
    2. A withdrawal (撤回) or resubmission (补正): signed by this platform; case number,
       event id, note (the reason) and stage (WITHDRAWN / SUBMITTED) are its.
    Anything else is refused.
    """
    what = f"status event {event.event_id[:64]!r} of case {event.case_number[:40]}"
    kind = event.origin.payload_type
    if kind == _PUSH:
        push = open_member_message(
            event.origin,
            case_pb2.StatusPush,
            members,
            signer=event.department,
            hub_id=hub_id,
            what=f"{what}: the department's push",
        )
        _compare(
            what,
            {
                "case_number": (event.case_number, push.case_number),
                "stage": (
                    case_pb2.CaseStage.Name(event.stage),
                    case_pb2.CaseStage.Name(push.stage),
                ),
                "event_id": (event.event_id, push.event_id),
                "note": (event.note, push.note),
                "missing_items": (list(event.missing_items), list(push.missing_items)),
                "certificate_identifier": (
                    event.certificate_identifier,
                    push.certificate_identifier,
                ),
            },
        )
        return CheckedEvent(event, push)
    if kind == _WITHDRAWAL:
        withdrawal = open_member_message(
            event.origin,
            case_pb2.CaseWithdrawal,
            members,
            signer=platform,
            hub_id=hub_id,
            what=f"{what}: our withdrawal",
        )
        signed = (withdrawal.case_number, withdrawal.event_id, withdrawal.reason)
        stage = case_pb2.CASE_STAGE_WITHDRAWN
    elif kind == _RESUBMISSION:
        resubmission = open_member_message(
            event.origin,
            case_pb2.CaseResubmission,
            members,
            signer=platform,
            hub_id=hub_id,
            what=f"{what}: our resubmission",
        )
        signed = (resubmission.case_number, resubmission.event_id, resubmission.note)
        stage = case_pb2.CASE_STAGE_SUBMITTED
    else:
        raise BadResponseError(f"{what}: its origin is a {kind[:64]!r}, not a signed push")
    _compare(
        what,
        {
            "case_number": (event.case_number, signed[0]),
            "event_id": (event.event_id, signed[1]),
            "note": (event.note, signed[2]),
            "stage": (case_pb2.CaseStage.Name(event.stage), case_pb2.CaseStage.Name(stage)),
            "missing_items": (list(event.missing_items), []),
            "certificate_identifier": (event.certificate_identifier, ""),
        },
    )
    return CheckedEvent(event, None)


class PushSequences:
    """The last push number seen per (case, department), to notice a push the hub dropped.

    Departments number their pushes of a case 1, 2, 3, … inside the signed bytes. An event
    whose number is more than one past the last seen raises ("event 2 of CASE at DEPT
    missing"); one at or below it is a redelivery (streams are at-least-once) and passes.

    Across reconnects: ``HubClient.follow`` keeps one tracker for every window. A subscriber
    that resumes from a saved cursor passes its saved tracker (``from_dict`` of what
    ``to_dict`` gave, next to the cursor). Resuming after a cursor with a fresh tracker
    (``anchored=False``) takes the first number seen for each (case, department) as the
    starting point: it cannot tell whether pushes before it went missing. A tracker for a
    stream from the beginning (cursor 0) is anchored: every case starts at 1.
    """

    def __init__(
        self, known: Mapping[tuple[str, str], int] | None = None, *, anchored: bool = True
    ) -> None:
        self._last: dict[tuple[str, str], int] = dict(known or {})
        self.anchored = anchored

    def last(self, case_number: str, department: str) -> int:
        return self._last.get((case_number, department), 0)

    def check(self, event: case_pb2.StatusEvent, push: case_pb2.StatusPush) -> None:
        """Record ``push``'s number, or raise BadResponseError when pushes before it are
        missing (or it carries no number)."""
        key = (event.case_number, event.department)
        number = push.sequence
        if number == 0:
            raise BadResponseError(
                f"status event {event.event_id[:64]!r} of {event.case_number[:40]} at "
                f"{event.department[:64]}: the department's push carries no sequence"
            )
        known = self._last.get(key)
        if known is None and not self.anchored:
            known = number - 1
        last = known or 0
        if number > last + 1:
            gap = f"{last + 1}" if number == last + 2 else f"{last + 1}–{number - 1}"
            raise BadResponseError(
                f"event {gap} of {event.case_number[:40]} at {event.department[:64]} missing: "
                f"the hub delivered push {number} after push {last}"
            )
        self._last[key] = max(last, number)

    def to_dict(self) -> dict[str, int]:
        """A JSON-able copy ("case|department" → last number), to save with the cursor."""
        return {f"{case}|{department}": n for (case, department), n in self._last.items()}

    @classmethod
    def from_dict(cls, saved: Mapping[str, int]) -> PushSequences:
        """A tracker from ``to_dict``'s output (anchored: it knows where each case was)."""
        known = {}
        for key, number in saved.items():
            case, _, department = key.partition("|")
            known[(case, department)] = int(number)
        return cls(known)
