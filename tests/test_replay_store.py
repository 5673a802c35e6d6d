"""The seen-messages replay store used by the admission gate, on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from registry_world import (
    HUB_ID,
    NOW,
    bare_engine_fixture,  # noqa: F401  (the bare_engine fixture, under engine)
    engine_fixture,  # noqa: F401  (the engine fixture)
    sessions_fixture,  # noqa: F401  (the sessions fixture)
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.db import (
    SeenMessageRow,
    session_factory,
)
from xhub.hub.core.gate import Gate
from xhub.protocol.errors import MalformedError, ReplayError

# --------------------------------------------------------------------------- replay store


def gate_at(sessions: sessionmaker[Session], now: datetime = NOW) -> Gate:
    return Gate(sessions, HUB_ID, clock_skew=timedelta(minutes=5), clock=lambda: now)


def seen_ids(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        rows = session.scalars(
            select(SeenMessageRow).order_by(SeenMessageRow.sender, SeenMessageRow.message_id)
        )
        return [(r.sender, r.message_id) for r in rows]


@pytest.mark.parametrize(
    ("first", "second", "replayed"),
    [
        (("CN.A", "m-1"), ("CN.A", "m-1"), True),
        (("CN.A", "m-1"), ("CN.B", "m-1"), False),
        (("CN.A", "m-1"), ("CN.A", "m-2"), False),
        (("CN.A", "x" * 64), ("CN.A", "x" * 64), True),
    ],
    ids=["same-sender-same-id", "other-sender", "other-id", "max-length-id"],
)
def test_remember_refuses_a_replay(
    sessions: sessionmaker[Session],
    first: tuple[str, str],
    second: tuple[str, str],
    replayed: bool,
):
    gate = gate_at(sessions)
    gate._remember(first[0], first[1], NOW, NOW)
    if replayed:
        with pytest.raises(ReplayError) as info:
            gate._remember(second[0], second[1], NOW, NOW + timedelta(seconds=1))
        assert info.value.metadata["message_id"] == second[1]
        assert seen_ids(sessions) == [first]
    else:
        gate._remember(second[0], second[1], NOW, NOW)
        assert seen_ids(sessions) == sorted([first, second])


def test_replay_is_refused_across_gates_sharing_the_database(
    sessions: sessionmaker[Session], engine: Engine
):
    """Two hub processes (two gates, two session factories) share one replay store."""
    gate_at(sessions)._remember("CN.A", "m-1", NOW, NOW)
    other = gate_at(session_factory(engine))
    with pytest.raises(ReplayError):
        other._remember("CN.A", "m-1", NOW, NOW)


def test_remember_refuses_an_overlong_message_id(sessions: sessionmaker[Session]):
    with pytest.raises(MalformedError):
        gate_at(sessions)._remember("CN.A", "x" * 65, NOW, NOW)
    assert seen_ids(sessions) == []


def test_prune_seen_deletes_only_old_messages(sessions: sessionmaker[Session]):
    gate = gate_at(sessions)
    ages = {
        "ancient": timedelta(days=2),
        "old": timedelta(minutes=10, seconds=1),
        "edge": timedelta(minutes=9, seconds=59),
        "recent": timedelta(minutes=1),
        "future": -timedelta(minutes=1),
    }
    for message_id, age in ages.items():
        gate._remember("CN.A", message_id, NOW - age, NOW)
    assert gate.prune_seen() == 2
    assert [m for _s, m in seen_ids(sessions)] == ["edge", "future", "recent"]
    assert gate.prune_seen() == 0
    # a pruned id can be stored again (its replay would now fail the clock-skew check)
    gate._remember("CN.A", "old", NOW, NOW)
    with pytest.raises(ReplayError):
        gate._remember("CN.A", "recent", NOW, NOW)
