"""The log never signs over what it cannot vouch for, and the integrity check covers the whole
checkpoint history (SQLite and PostgreSQL).

* The sequencer checks the stored tree it extends against the last signed checkpoint: an
  entry edited together with its recomputed Merkle path is never covered by a new checkpoint.
* ``check_integrity`` verifies every stored checkpoint (signature, row, link to the one
  before) and each one's consistency with the next from the stored nodes, and names the
  checkpoint that breaks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_log_world import (
    ORIGIN,
    LogKit,
    engine_fixture,  # noqa: F401  (the engine fixture)
    kit_fixture,  # noqa: F401  (the kit fixture)
    prefix_roots,
)
from audit_world import wait_all_sequenced
from hubkit import HubKit
from sqlalchemy import Connection, event, text

from xhub.hub.core.audit_log import TamperedLogError
from xhub.protocol.log import merkle
from xhub.protocol.log.note import Checkpoint, NoteSigner, sign_checkpoint

N = 13  # sequenced in batches of 4: checkpoints at 4, 8, 12, 13
VICTIM = 5


def _logged(kit: LogKit, count: int = N, batch: int = 4) -> None:
    kit.append(count)
    kit.sequence_all(batch)


def _forge_entry_and_path(c: Connection, kit: LogKit) -> None:
    """Entry #VICTIM rewritten with its leaf hash, every node over it and the tree state
    recomputed: everything an operator without the log key can make consistent."""
    entries = kit.sequenced_entries()
    forged = bytearray(entries[VICTIM])
    forged[len(forged) // 2] ^= 0x10
    entries[VICTIM] = bytes(forged)
    leaf = merkle.leaf_hash(entries[VICTIM])
    c.execute(
        text("UPDATE audit_entries SET entry = :e, leaf_hash = :h WHERE leaf_index = :i"),
        {"e": entries[VICTIM], "h": leaf, "i": VICTIM},
    )
    memory = merkle.MemoryNodeStore()
    memory.append([merkle.leaf_hash(e) for e in entries])
    for (level, index), value in memory.nodes().items():
        c.execute(
            text('UPDATE merkle_nodes SET hash = :h WHERE level = :l AND "index" = :i'),
            {"h": value, "l": level, "i": index},
        )
    c.execute(text("UPDATE audit_tree SET root_hash = :r"), {"r": prefix_roots(entries)[N]})


def test_sequencer_refuses_to_extend_an_entry_edited_with_its_merkle_path(kit: LogKit) -> None:
    _logged(kit)
    before = kit.checkpoints()
    with kit.engine.begin() as c:
        _forge_entry_and_path(c, kit)
    kit.append(3)
    with pytest.raises(TamperedLogError) as caught:
        kit.log.sequence()
    message = str(caught.value)
    assert "last signed checkpoint (size 13)" in message
    assert "the sequencer will not sign" in message
    assert kit.checkpoints() == before  # nothing new was signed over the forged nodes
    assert [leaf_index for _, leaf_index, _, _ in kit.rows()][-3:] == [None, None, None]
    with pytest.raises(TamperedLogError):  # and every later round refuses again
        kit.log.sequence()


def test_sequencer_refuses_when_the_last_checkpoint_is_not_signed_by_the_log_key(
    kit: LogKit,
) -> None:
    _logged(kit)
    other = NoteSigner.generate(ORIGIN)
    with kit.engine.begin() as c:
        root = bytes(
            c.execute(text("SELECT root_hash FROM audit_checkpoints WHERE tree_size = 13")).one()[0]
        )
        c.execute(
            text("UPDATE audit_checkpoints SET note = :n WHERE tree_size = 13"),
            {"n": sign_checkpoint(Checkpoint(ORIGIN, 13, root), other)},
        )
    kit.append(1)
    with pytest.raises(TamperedLogError, match="last stored checkpoint does not verify"):
        kit.log.sequence()


def test_a_clean_log_with_many_checkpoints_passes(kit: LogKit) -> None:
    kit.append(90)
    batches = kit.sequence_all(1)
    kit.append(40)
    batches += kit.sequence_all(3)
    assert len(kit.checkpoints()) == len(batches) == 90 + 14
    assert kit.log.check_integrity()[0] == 130


def _checkpoint_8(c: Connection) -> tuple[bytes, bytes]:
    row = c.execute(text("SELECT root_hash, note FROM audit_checkpoints WHERE tree_size = 8")).one()
    return bytes(row[0]), bytes(row[1])


def t_delete_a_middle_checkpoint(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_checkpoints WHERE tree_size = 8"))


def t_edit_a_middle_checkpoint_root(c: Connection, kit: LogKit) -> None:
    c.execute(
        text("UPDATE audit_checkpoints SET root_hash = :r WHERE tree_size = 8"),
        {"r": b"\x01" * 32},
    )


def t_resign_a_middle_checkpoint_with_another_key(c: Connection, kit: LogKit) -> None:
    root, _ = _checkpoint_8(c)
    note = sign_checkpoint(Checkpoint(ORIGIN, 8, root), NoteSigner.generate(ORIGIN))
    c.execute(text("UPDATE audit_checkpoints SET note = :n WHERE tree_size = 8"), {"n": note})


def t_swap_in_a_forked_checkpoint(c: Connection, kit: LogKit) -> None:
    """A checkpoint of size 8 validly signed by the log key over another tree (a split view
    the key was used for): signature and row agree, consistency does not."""
    forked = b"\x02" * 32
    note = sign_checkpoint(Checkpoint(ORIGIN, 8, forked), kit.log.signer)
    c.execute(
        text("UPDATE audit_checkpoints SET note = :n, root_hash = :r WHERE tree_size = 8"),
        {"n": note, "r": forked},
    )


def t_relink_a_checkpoint(c: Connection, kit: LogKit) -> None:
    c.execute(text("UPDATE audit_checkpoints SET previous_size = 5 WHERE tree_size = 12"))


HISTORY_TAMPERING: dict[str, tuple[Callable[[Connection, LogKit], None], str]] = {
    "delete-middle": (t_delete_a_middle_checkpoint, "checkpoint size 8 is missing"),
    "edit-row": (t_edit_a_middle_checkpoint_root, "checkpoint size 8: its row disagrees"),
    "other-key": (
        t_resign_a_middle_checkpoint_with_another_key,
        "checkpoint size 8 does not verify",
    ),
    "forked": (
        t_swap_in_a_forked_checkpoint,
        "checkpoint size 8 is not consistent with checkpoint size 4",
    ),
    "relinked": (t_relink_a_checkpoint, "checkpoint size 12 names size 5"),
}


@pytest.mark.parametrize("case", list(HISTORY_TAMPERING))
def test_integrity_check_names_the_checkpoint_that_breaks(kit: LogKit, case: str) -> None:
    tamper, expected = HISTORY_TAMPERING[case]
    _logged(kit)
    assert kit.log.check_integrity()[0] == N
    with kit.engine.begin() as c:
        tamper(c, kit)
    with pytest.raises(TamperedLogError) as caught:
        kit.log.check_integrity()
    assert expected in str(caught.value)


def test_integrity_check_reads_nodes_in_batches_not_per_checkpoint(kit: LogKit) -> None:
    """Bounded: 300 checkpoints' consistency proofs cost a couple of node queries."""
    kit.append(300)
    kit.sequence_all(1)
    queries: list[str] = []

    def count(*args: object) -> None:
        statement = str(args[2])
        if "merkle_nodes" in statement and "audit_entries" not in statement:
            queries.append(statement)

    event.listen(kit.engine, "before_cursor_execute", count)
    try:
        kit.log.check_integrity()
    finally:
        event.remove(kit.engine, "before_cursor_execute", count)
    assert len(queries) < 20, len(queries)


# -- a running hub: the sequencer halts, the audit service goes NOT_SERVING ---------------------


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_running_hub_stops_signing_and_audit_goes_not_serving(
    request: pytest.FixtureRequest, tmp_path: Path, db: str
) -> None:
    url = request.getfixturevalue("pg_url") if db == "postgres" else ""
    kit = HubKit(tmp_path, database_url=url)
    kit.config = dataclasses.replace(
        kit.config, sequencer_interval_seconds=0.05, health_probe_interval_seconds=0.1
    )
    with kit.start():
        client = kit.client("platform")
        for _ in range(3):
            client.get_member(kit.member_id("auditor"))
        size = wait_all_sequenced(kit)
        with kit.engine.begin() as c:
            (entry,) = c.execute(text("SELECT entry FROM audit_entries WHERE leaf_index = 0")).one()
            forged = bytes(entry)[:-1] + bytes([bytes(entry)[-1] ^ 1])
            leaf = merkle.leaf_hash(forged)
            c.execute(
                text("UPDATE audit_entries SET entry = :e, leaf_hash = :h WHERE leaf_index = 0"),
                {"e": forged, "h": leaf},
            )
            leaves = [
                bytes(r[0])
                for r in c.execute(
                    text('SELECT hash FROM merkle_nodes WHERE level = 0 ORDER BY "index"')
                )
            ]
            leaves[0] = leaf
            memory = merkle.MemoryNodeStore()
            memory.append(leaves)
            for (level, index), value in memory.nodes().items():
                c.execute(
                    text('UPDATE merkle_nodes SET hash = :h WHERE level = :l AND "index" = :i'),
                    {"h": value, "l": level, "i": index},
                )
        checkpoints_before = _count_checkpoints(kit)
        client.get_member(kit.member_id("issuer"))  # a new entry for the sequencer
        deadline = time.monotonic() + 10
        while client.health("xhub.v1.AuditService") != "NOT_SERVING":
            assert time.monotonic() < deadline, "the audit service stayed SERVING"
            time.sleep(0.05)
        time.sleep(0.3)  # several more sequencer and health rounds
        assert client.health("xhub.v1.AuditService") == "NOT_SERVING"
        assert client.health() == "SERVING"  # the rest of the hub still serves
        assert _count_checkpoints(kit) == checkpoints_before
        assert size > 0
        assert kit.running is not None and kit.running.log_halted


def _count_checkpoints(kit: HubKit) -> int:
    with kit.engine.connect() as c:
        return int(c.execute(text("SELECT COUNT(*) FROM audit_checkpoints")).scalar_one())
