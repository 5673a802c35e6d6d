"""Tampering with the stored audit log (DESIGN.md §7), on SQLite and on a real PostgreSQL.

Every kind of tampering an operator with database access could do (raw SQL, no log key)
must make ``check_integrity`` raise ``TamperedLogError``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from audit_log_world import (
    HUB_ID,
    METHOD,
    ORIGIN,
    LogKit,
    engine_fixture,  # noqa: F401  (the engine fixture)
    kit_fixture,  # noqa: F401  (the kit fixture)
    new_log,
    parse,
    prefix_roots,
)
from sqlalchemy import Connection, text

from xhub.hub.core.audit_log import (
    ALLOWED,
    DENIED,
    TamperedLogError,
)
from xhub.protocol.log import merkle
from xhub.protocol.log.note import NoteSigner

# -- tampering --------------------------------------------------------------------------------

N = 13  # sequenced in batches of 4: checkpoints at 4, 8, 12, 13
VICTIM = 5


def _entry(c: Connection, index: int) -> tuple[bytes, bytes]:
    row = c.execute(
        text("SELECT entry, leaf_hash FROM audit_entries WHERE leaf_index = :i"), {"i": index}
    ).one()
    return bytes(row[0]), bytes(row[1])


def _set_entry(c: Connection, index: int, entry: bytes, leaf: bytes | None = None) -> None:
    if leaf is None:
        c.execute(
            text("UPDATE audit_entries SET entry = :e WHERE leaf_index = :i"),
            {"e": entry, "i": index},
        )
    else:
        c.execute(
            text("UPDATE audit_entries SET entry = :e, leaf_hash = :h WHERE leaf_index = :i"),
            {"e": entry, "h": leaf, "i": index},
        )


def _set_node(c: Connection, level: int, index: int, value: bytes) -> None:
    result = c.execute(
        text('UPDATE merkle_nodes SET hash = :h WHERE level = :l AND "index" = :i'),
        {"h": value, "l": level, "i": index},
    )
    assert result.rowcount == 1


def _flip_bit(data: bytes, at: int | None = None) -> bytes:
    at = len(data) // 2 if at is None else at
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


def _forged_entry(index: int) -> bytes:
    """What a forger would want the entry to say: the refusal turned into an allowed call."""
    entry = parse(b"")
    entry.method = METHOD
    entry.sender = "CN.440100.FORGER"
    entry.decision = ALLOWED
    entry.hub_id = HUB_ID
    entry.case_id = f"FORGED-{index}"
    return entry.SerializeToString()


def t_edit_entry_bytes(c: Connection, kit: LogKit) -> None:
    entry, _ = _entry(c, VICTIM)
    _set_entry(c, VICTIM, _flip_bit(entry))


def t_rewrite_decision(c: Connection, kit: LogKit) -> None:
    """A refused call's entry rewritten as allowed, as a parsed protobuf (still a BLOB)."""
    entry = parse(_entry(c, 3)[0])
    assert entry.decision == DENIED
    entry.decision = ALLOWED
    entry.reason = ""
    _set_entry(c, 3, entry.SerializeToString())


def t_edit_entry_and_leaf_hash(c: Connection, kit: LogKit) -> None:
    entry = _flip_bit(_entry(c, VICTIM)[0])
    _set_entry(c, VICTIM, entry, merkle.leaf_hash(entry))


def t_edit_entry_leaf_hash_and_leaf_node(c: Connection, kit: LogKit) -> None:
    entry = _flip_bit(_entry(c, VICTIM)[0])
    _set_entry(c, VICTIM, entry, merkle.leaf_hash(entry))
    _set_node(c, 0, VICTIM, merkle.leaf_hash(entry))


def t_rewrite_everything_but_the_signature(c: Connection, kit: LogKit) -> None:
    """Entry, leaf hash, every stored node, tree state and checkpoint columns all rewritten
    consistently: only the signed note (which needs the log key) still tells."""
    entries = kit.sequenced_entries()
    entries[VICTIM] = _forged_entry(VICTIM)
    _set_entry(c, VICTIM, entries[VICTIM], merkle.leaf_hash(entries[VICTIM]))
    memory = merkle.MemoryNodeStore()
    memory.append([merkle.leaf_hash(e) for e in entries])
    for (level, index), value in memory.nodes().items():
        _set_node(c, level, index, value)
    roots = prefix_roots(entries)
    c.execute(text("UPDATE audit_tree SET root_hash = :r"), {"r": roots[N]})
    for size in (4, 8, 12, 13):
        c.execute(
            text("UPDATE audit_checkpoints SET root_hash = :r WHERE tree_size = :s"),
            {"r": roots[size], "s": size},
        )


def t_delete_row(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = :i"), {"i": VICTIM})


def t_delete_last_row(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = :i"), {"i": N - 1})


def t_unsequence_row(c: Connection, kit: LogKit) -> None:
    c.execute(text("UPDATE audit_entries SET leaf_index = NULL WHERE leaf_index = :i"), {"i": 7})


def t_swap_rows(c: Connection, kit: LogKit) -> None:
    """Reorder: two rows exchange their entry bytes and leaf hashes."""
    a, b = _entry(c, 3), _entry(c, 4)
    _set_entry(c, 3, *b)
    _set_entry(c, 4, *a)


def t_swap_leaf_indexes(c: Connection, kit: LogKit) -> None:
    """Reorder the other way: two rows exchange their leaf indexes."""
    c.execute(text("UPDATE audit_entries SET leaf_index = -1 WHERE leaf_index = 3"))
    c.execute(text("UPDATE audit_entries SET leaf_index = 3 WHERE leaf_index = 4"))
    c.execute(text("UPDATE audit_entries SET leaf_index = 4 WHERE leaf_index = -1"))


def _insert_row(c: Connection, index: int | None) -> None:
    entry = _forged_entry(N)
    c.execute(
        text(
            "INSERT INTO audit_entries (leaf_index, entry, leaf_hash, logged_at, sender, "
            "recipient, method, case_id, decision) VALUES (:i, :e, :h, :t, :s, :r, :m, :c, :d)"
        ),
        {
            "i": index,
            "e": entry,
            "h": merkle.leaf_hash(entry),
            "t": datetime(2025, 1, 2),
            "s": "CN.440100.FORGER",
            "r": HUB_ID,
            "m": METHOD,
            "c": f"FORGED-{N}",
            "d": int(ALLOWED),
        },
    )


def t_insert_sequenced_row(c: Connection, kit: LogKit) -> None:
    _insert_row(c, N)


def t_insert_row_in_a_gap(c: Connection, kit: LogKit) -> None:
    """Delete one row, and insert a forged one at its index."""
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = :i"), {"i": VICTIM})
    _insert_row(c, VICTIM)


def _node(level: int, index: int) -> Callable[[Connection, LogKit], None]:
    def tamper(c: Connection, kit: LogKit) -> None:
        value = c.execute(
            text('SELECT hash FROM merkle_nodes WHERE level = :l AND "index" = :i'),
            {"l": level, "i": index},
        ).scalar_one()
        _set_node(c, level, index, _flip_bit(bytes(value), 0))

    return tamper


def t_delete_latest_checkpoint(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_checkpoints WHERE tree_size = :s"), {"s": N})


def t_delete_all_checkpoints(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_checkpoints"))


def t_edit_latest_checkpoint_note(c: Connection, kit: LogKit) -> None:
    note = c.execute(
        text("SELECT note FROM audit_checkpoints WHERE tree_size = :s"), {"s": N}
    ).scalar_one()
    tampered = bytes(note).replace(f"\n{N}\n".encode(), f"\n{N + 1}\n".encode(), 1)
    assert tampered != bytes(note)
    c.execute(
        text("UPDATE audit_checkpoints SET note = :n WHERE tree_size = :s"), {"n": tampered, "s": N}
    )


def t_roll_back_to_older_checkpoint(c: Connection, kit: LogKit) -> None:
    """Truncate the log to its checkpoint at 12 (entry, nodes, tree state and checkpoint)."""
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = 12"))
    c.execute(text('DELETE FROM merkle_nodes WHERE level = 0 AND "index" = 12'))
    c.execute(text("DELETE FROM audit_checkpoints WHERE tree_size = 13"))
    # ...but keeps the tree state row the sequencer wrote: it still says 13.


# case → (tamper, text the error must contain, or "" when any message will do)
TAMPERING: dict[str, tuple[Callable[[Connection, LogKit], None], str]] = {
    "edit-entry-bytes": (t_edit_entry_bytes, f"entry #{VICTIM}"),
    "rewrite-denied-as-allowed": (t_rewrite_decision, "entry #3"),
    "edit-entry-and-leaf-hash": (t_edit_entry_and_leaf_hash, f"entry #{VICTIM}"),
    "edit-entry-leaf-hash-and-leaf-node": (t_edit_entry_leaf_hash_and_leaf_node, ""),
    "rewrite-everything-but-the-signature": (t_rewrite_everything_but_the_signature, ""),
    "delete-row": (t_delete_row, ""),
    "delete-last-row": (t_delete_last_row, ""),
    "unsequence-row": (t_unsequence_row, ""),
    "swap-two-rows": (t_swap_rows, "entry #3"),
    "swap-two-leaf-indexes": (t_swap_leaf_indexes, "entry #3"),
    "insert-sequenced-row": (t_insert_sequenced_row, ""),
    "insert-row-in-a-gap": (t_insert_row_in_a_gap, ""),
    "change-leaf-node": (_node(0, VICTIM), f"entry #{VICTIM}"),
    "change-root-path-node": (_node(3, 0), ""),  # MTH(0..8): part of every root from 8 on
    "change-last-leaf-node": (_node(0, 12), ""),
    # (1, 0) = MTH(0..2) is in no root from size 4 on, but it serves inclusion proofs.
    "change-interior-node-off-the-root-path": (_node(1, 0), ""),
    "change-level-2-node": (_node(2, 1), ""),
    "delete-latest-checkpoint": (t_delete_latest_checkpoint, ""),
    "delete-all-checkpoints": (t_delete_all_checkpoints, ""),
    "edit-latest-checkpoint-note": (t_edit_latest_checkpoint_note, ""),
    "roll-back-to-older-checkpoint": (t_roll_back_to_older_checkpoint, ""),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_detected(kit: LogKit, case: str) -> None:
    tamper, says = TAMPERING[case]
    kit.log.publish_initial_checkpoint()
    kit.append(N, per_session=4)
    assert kit.sequence_all(max_batch=4) == [4, 4, 4, 1]
    assert kit.log.check_integrity()[0] == N

    with kit.engine.begin() as connection:
        tamper(connection, kit)

    with pytest.raises(TamperedLogError) as caught:
        kit.log.check_integrity()
    assert says in str(caught.value)


def test_checkpoints_signed_by_another_key_are_refused(kit: LogKit) -> None:
    kit.append(5)
    kit.sequence_all(max_batch=2)
    impostor = new_log(kit.engine, signer=NoteSigner.generate(ORIGIN), key=kit.subject_key)
    with pytest.raises(TamperedLogError, match="does not verify"):
        impostor.log.check_integrity()


def test_pending_entries_are_not_tampering(kit: LogKit) -> None:
    """Entries appended but not yet sequenced are outside the checkpoint: no alarm."""
    kit.append(6)
    kit.sequence_all(max_batch=4)
    kit.append(3)
    assert kit.log.check_integrity()[0] == 6
    assert kit.log.sequence(10) == 3
    assert kit.log.check_integrity()[0] == 9
